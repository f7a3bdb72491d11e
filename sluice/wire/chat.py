"""The chat-completions answers the wire encoders read (whole replies and stream chunks), typed
loosely: only the fields a Messages reply or a Response is built from, anything else ignored. One
set serves both: the Messages encoder reads vLLM's ``stop_reason`` and the cache writes of an
Anthropic upstream's answer; a Response also carries the reasoning text (vLLM's
``reasoning_content``, or ``reasoning`` in newer vLLM) and the reasoning-token count."""

from __future__ import annotations

from typing import Any

import msgspec


class _Loose(msgspec.Struct, kw_only=True):
    """Base of the read structs: unknown fields are ignored, as a reader of a growing API should."""


class FunctionCall(_Loose):
    name: str | None = None
    arguments: str | None = None


class ToolCall(_Loose):
    index: int | None = None  # streams only
    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None


class ReplyMessage(_Loose):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None

    @property
    def thought(self) -> str | None:
        """The reasoning text, under either of vLLM's names."""
        return self.reasoning_content or self.reasoning


class Choice(_Loose):
    index: int = 0
    message: ReplyMessage | None = None
    delta: ReplyMessage | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: the stop string (or token id) that ended the choice


class PromptDetails(_Loose):
    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None  # sluice's, on the chat form of an Anthropic upstream's answer


class CompletionDetails(_Loose):
    reasoning_tokens: int | None = None


class Usage(_Loose):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptDetails | None = None
    completion_tokens_details: CompletionDetails | None = None


class ErrorInfo(_Loose):
    message: str | None = None
    type: str | None = None
    code: Any = None


class Completion(_Loose):
    """A whole reply or one stream chunk (``object`` tells them apart; the encoders know which they read)."""

    id: str = ""
    object: str = ""
    model: str = ""
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: ErrorInfo | None = None


completion_decoder = msgspec.json.Decoder(Completion)
