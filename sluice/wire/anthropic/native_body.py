"""The body a Messages request is sent with to an upstream that speaks Anthropic's API (``api: anthropic``).

``messages_body``: the caller's own request, relayed. The model is the target's ``upstream_model``,
``max_tokens`` what the limits stage left (maybe clamped), ``stream`` as asked; every other field goes as
the caller sent it (``thinking``, ``cache_control``, ``metadata``, ``top_k``, thinking blocks of earlier
turns, citations...). Two things never go, and nothing the input guard took out comes back:

- Anthropic's server tools and ``mcp_servers`` (dropped by the named rules the translated path uses):
  calls Anthropic would make on its own are never judged against the tool registry.
- Tools the input guard removed (not granted) stay removed, and a ``tool_choice`` it unset stays unset.
  When the guard rewrote anything else (a secret masked in the conversation, a tool's description, a
  stop sequence, the user id), the guarded chat request is what goes: ``from_chat`` writes it in
  Anthropic's wire by the reverse of ``decode``'s table, so the features the chat form could not
  carry stay dropped for that request, as they would be on the translated path.

``count_body`` is the same for ``/v1/messages/count_tokens``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from sluice.core.wire import ChatCompletionRequest

from ..native_body import Outbound, content_text, granted, tool_rewritten
from .schema import CountTokensRequest, MessagesRequest, Tool

_encode = msgspec.json.encode
_args = msgspec.json.Decoder(dict[str, Any])
DEFAULT_VERSION = "2023-06-01"  # the ``anthropic-version`` sent for a caller that gave none


def messages_body(source: MessagesRequest, translated: ChatCompletionRequest, guarded: ChatCompletionRequest,
                  *, model: str, stream: bool) -> Outbound:
    """The body of a Messages request for its ``api: anthropic`` target (see the module's docstring)."""
    max_tokens = guarded.max_tokens if type(guarded.max_tokens) is int else source.max_tokens
    if _rewritten(translated, guarded):
        return Outbound(_encode(from_chat(guarded, model=model, stream=stream)), [], True)
    dropped: list[str] = []
    changes: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True if stream else UNSET}
    if source.mcp_servers is not UNSET:
        changes["mcp_servers"] = UNSET
        dropped.append("mcp_servers")
    if source.tools is not UNSET:
        tools = _kept_tools(source.tools, translated, guarded, dropped)
        changes["tools"] = tools or UNSET
        if not tools or (guarded.tool_choice is UNSET and translated.tool_choice is not UNSET):
            changes["tool_choice"] = UNSET
    return Outbound(_encode(msgspec.structs.replace(source, **changes)), dropped, False)


def count_body(source: CountTokensRequest, translated: ChatCompletionRequest, guarded: ChatCompletionRequest,
               *, model: str) -> Outbound:
    """The body of a ``count_tokens`` request for its ``api: anthropic`` target: the prompt as it would be sent."""
    if _rewritten(translated, guarded):
        body = from_chat(guarded, model=model, stream=False)
        body.pop("max_tokens", None)
        return Outbound(_encode(body), [], True)
    dropped: list[str] = []
    changes: dict[str, Any] = {"model": model}
    if source.mcp_servers is not UNSET:
        changes["mcp_servers"] = UNSET
        dropped.append("mcp_servers")
    if source.tools is not UNSET:
        tools = _kept_tools(source.tools, translated, guarded, dropped)
        changes["tools"] = tools or UNSET
        if not tools:
            changes["tool_choice"] = UNSET
    return Outbound(_encode(msgspec.structs.replace(source, **changes)), dropped, False)


def _rewritten(translated: ChatCompletionRequest, guarded: ChatCompletionRequest) -> bool:
    """Whether the input guard changed more than which tools are offered (it masks in place of
    these fields, so an unchanged field is the very object the decode made)."""
    if guarded is translated:
        return False
    if guarded.messages is not translated.messages or guarded.stop is not translated.stop \
            or guarded.user is not translated.user:
        return True
    return tool_rewritten(translated, guarded)


def _kept_tools(tools: list[Tool], translated: ChatCompletionRequest, guarded: ChatCompletionRequest,
                dropped: list[str]) -> list[Tool]:
    """The caller's custom tools the guard left offered; server tools never go."""
    allowed = granted(translated, guarded)
    kept = []
    for tool in tools:
        if tool.type is not UNSET and tool.type != "custom":
            if "server_tools" not in dropped:
                dropped.append("server_tools")
        elif allowed is None or tool.name in allowed:
            kept.append(tool)
    return kept


# The chat request in Anthropic's wire ---------------------------------------------------------------------


def from_chat(req: ChatCompletionRequest, *, model: str, stream: bool) -> dict[str, Any]:
    """A chat request as a Messages body: the reverse of ``decode``'s table.

    System messages become ``system``; a tool message a ``tool_result`` block of a user turn; an assistant's
    ``tool_calls`` its ``tool_use`` blocks (``input``: the parsed arguments); consecutive turns of one role
    are one turn; ``stop`` is ``stop_sequences``, ``user`` is ``metadata.user_id``.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role in ("system", "developer"):
            system.append(content_text(m.content))
            continue
        if m.role == "tool":
            role, blocks = "user", [{"type": "tool_result", "tool_use_id": m.tool_call_id or "",
                                     "content": content_text(m.content)}]
        elif m.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(m.content, m.tool_calls)
        else:
            role, blocks = "user", _user_blocks(m.content)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    body: dict[str, Any] = {"model": model, "messages": turns,
                            "max_tokens": req.max_completion_tokens or req.max_tokens or 1}
    if system:
        body["system"] = "\n\n".join(system)
    tools = [_tool(t["function"]) for t in req.tools or () if isinstance(t.get("function"), dict)]
    if tools:
        body["tools"] = tools
        choice = _choice(req.tool_choice, req.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
    if req.stop:
        body["stop_sequences"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name, UNSET)
        if value is not UNSET and value is not None:
            body[name] = value
    if isinstance(req.user, str):
        body["metadata"] = {"user_id": req.user}
    if stream:
        body["stream"] = True
    return body


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"type": "text", "text": content_text(content)}]
    blocks = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
            blocks.append({"type": "image", "source": _image_source(str(part["image_url"].get("url") or ""))})
    return blocks or [{"type": "text", "text": ""}]


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[5:].partition(";base64,")
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _assistant_blocks(content: Any, calls: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = content_text(content)
    if text:
        blocks.append({"type": "text", "text": text})
    for call in calls or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            blocks.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": str(fn.get("name") or ""),
                           "input": _input(fn.get("arguments"))})
    return blocks or [{"type": "text", "text": ""}]


def _input(arguments: Any) -> dict[str, Any]:
    try:
        return _args.decode(arguments) if isinstance(arguments, str) and arguments else {}
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def _tool(fn: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": str(fn.get("name") or "")}
    if isinstance(fn.get("description"), str):
        tool["description"] = fn["description"]
    tool["input_schema"] = fn["parameters"] if isinstance(fn.get("parameters"), dict) else {"type": "object"}
    return tool


def _choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        fn = choice.get("function")
        out: dict[str, Any] = {"type": "tool", "name": str(fn.get("name") or "") if isinstance(fn, dict) else ""}
    elif choice in ("auto", "required", "none"):
        out = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif parallel is False:
        out = {"type": "auto"}
    else:
        return None
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out
