"""What the two writers of a body for an upstream that speaks the caller's own API share
(``anthropic.native_body``, ``responses.native_body``): the body and what of the caller's request it
could not carry (``Outbound``), which of the caller's tools the input guard left offered and whether it
rewrote one of them (the guard replaces what it changes, so an unchanged field is the very object the
decode made), and the text of a chat message's content when the guarded request is written back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from msgspec import UNSET

from sluice.core.wire import ChatCompletionRequest


class Outbound(NamedTuple):
    """A body for an upstream of the caller's own API, and what of the request it could not carry (rule names)."""

    body: bytes
    dropped: list[str]
    rewritten: bool  # written from the guarded chat request (the input guard changed the conversation)


def granted(translated: ChatCompletionRequest, guarded: ChatCompletionRequest) -> set[str] | None:
    """The names of the tools the input guard left offered; None when it left the tools as decoded."""
    return None if guarded.tools is translated.tools else {
        t["function"]["name"] for t in guarded.tools or () if isinstance(t.get("function"), dict)}


def tool_rewritten(translated: ChatCompletionRequest, guarded: ChatCompletionRequest) -> bool:
    """Whether the input guard offers a tool the decode did not make (it masked a description)."""
    tools = guarded.tools
    return tools is not translated.tools and tools is not UNSET and any(t not in translated.tools for t in tools)


def content_text(content: Any) -> str:
    """A chat message's content as text: a string, or the text parts of a list joined by blank lines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
