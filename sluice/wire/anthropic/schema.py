"""The Anthropic Messages request (``POST /v1/messages``) as typed structs, decoded once.

Content blocks are a tagged union on ``type``: an unknown block type, a missing field or a
wrong type is a decode error (a 400), never a block passed through unread. Top-level fields
Anthropic added for its own hosted features (``service_tier``, ``container``...) are read so
that the decoder can report them as dropped rather than refuse the request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from sluice.core.wire import INT32_MAX, NonEmpty, Tokens


class _Wire(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Base of the request structs: unknown fields are refused, as Anthropic refuses them."""


class CacheControl(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``cache_control``: a prompt-caching breakpoint (``ephemeral``, an optional ``ttl``)."""

    type: str
    ttl: str | UnsetType = UNSET


# Blocks --------------------------------------------------------------------------------------


class TextBlock(_Wire, tag_field="type", tag="text"):
    text: str
    cache_control: CacheControl | None | UnsetType = UNSET
    citations: list[dict[str, Any]] | None | UnsetType = UNSET


class Base64Source(_Wire, tag_field="type", tag="base64"):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class UrlSource(_Wire, tag_field="type", tag="url"):
    url: Annotated[str, msgspec.Meta(min_length=1)]


class ImageBlock(_Wire, tag_field="type", tag="image"):
    source: Base64Source | UrlSource
    cache_control: CacheControl | None | UnsetType = UNSET


class ToolUseBlock(_Wire, tag_field="type", tag="tool_use"):
    id: NonEmpty
    name: NonEmpty
    input: dict[str, Any]
    cache_control: CacheControl | None | UnsetType = UNSET


class ToolResultBlock(_Wire, tag_field="type", tag="tool_result"):
    tool_use_id: NonEmpty
    content: str | list[TextBlock | ImageBlock] | UnsetType = UNSET
    is_error: bool | UnsetType = UNSET
    cache_control: CacheControl | None | UnsetType = UNSET


class ThinkingBlock(_Wire, tag_field="type", tag="thinking"):
    thinking: str
    signature: str | UnsetType = UNSET


class RedactedThinkingBlock(_Wire, tag_field="type", tag="redacted_thinking"):
    data: str


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class MessageParam(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[Block]


# Tools ---------------------------------------------------------------------------------------


class Tool(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A tool offered to the model. A custom tool (no ``type``, or ``custom``) has an
    ``input_schema``; any other ``type`` names one of Anthropic's server tools, whose own fields
    are read loosely since only Anthropic runs them."""

    name: NonEmpty
    type: str | UnsetType = UNSET
    description: str | UnsetType = UNSET
    input_schema: dict[str, Any] | UnsetType = UNSET
    cache_control: CacheControl | None | UnsetType = UNSET


class ToolChoiceAuto(_Wire, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceAny(_Wire, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceTool(_Wire, tag_field="type", tag="tool"):
    name: NonEmpty
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceNone(_Wire, tag_field="type", tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


# Thinking ------------------------------------------------------------------------------------


class ThinkingEnabled(_Wire, tag_field="type", tag="enabled"):
    budget_tokens: Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]


class ThinkingDisabled(_Wire, tag_field="type", tag="disabled"):
    pass


class ThinkingAdaptive(_Wire, tag_field="type", tag="adaptive"):
    pass


Thinking = ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive


class Metadata(_Wire):
    user_id: str | None | UnsetType = UNSET


class MessagesRequest(_Wire):
    """``POST /v1/messages``."""

    model: NonEmpty
    messages: Annotated[list[MessageParam], msgspec.Meta(min_length=1)]
    max_tokens: Tokens
    system: str | list[TextBlock] | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | UnsetType = UNSET
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | UnsetType = UNSET
    top_k: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    thinking: Thinking | UnsetType = UNSET
    # Anthropic-hosted features with no meaning to another backend: read, then reported dropped.
    service_tier: str | UnsetType = UNSET
    container: Any = UNSET
    mcp_servers: Any = UNSET
    context_management: Any = UNSET


class CountTokensRequest(_Wire):
    """``POST /v1/messages/count_tokens``: the prompt part of a messages request."""

    model: NonEmpty
    messages: Annotated[list[MessageParam], msgspec.Meta(min_length=1)]
    system: str | list[TextBlock] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    thinking: Thinking | UnsetType = UNSET
    context_management: Any = UNSET
    mcp_servers: Any = UNSET
