"""The Responses request (``POST /v1/responses``) as typed structs, decoded once.

Items and content parts are tagged unions on ``type``: an unknown type, a missing field, a wrong
type or an unknown field is a decode error (a 400 that names the place), never something passed
through unread. Every top-level field of OpenAI's SDK is declared, so that ``decode`` can map it,
drop it by a named rule, or refuse it by name; ``client_metadata`` is Codex's. Fields of hosted
tools are read loosely: they are dropped whole, so their insides are not sluice's to check.
Shapes follow the ``openai`` SDK's ``types/responses``; ids OpenAI marks required on stored items
are optional here, as Codex sends its items back without them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, UnsetType

from sluice.core.wire import INT32_MAX, NonEmpty, Tokens

Status = Literal["in_progress", "completed", "incomplete"]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Wire(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Base of the request structs: unknown fields are refused, as OpenAI refuses them."""


class CacheBreakpoint(_Wire):
    """``prompt_cache_breakpoint`` of a content part (dropped: the upstream caches on its own)."""

    mode: Literal["explicit"]
    ttl: Literal["30m", "12h"] | UnsetType = UNSET


# Content parts -------------------------------------------------------------------------------


class InputText(_Wire, tag_field="type", tag="input_text"):
    text: str
    prompt_cache_breakpoint: CacheBreakpoint | UnsetType = UNSET


class InputImage(_Wire, tag_field="type", tag="input_image"):
    image_url: str | None | UnsetType = UNSET
    file_id: str | None | UnsetType = UNSET
    detail: Literal["low", "high", "auto", "original"] | UnsetType = UNSET
    prompt_cache_breakpoint: CacheBreakpoint | UnsetType = UNSET


class InputFile(msgspec.Struct, kw_only=True, tag_field="type", tag="input_file"):
    """A file part: read (loosely) only to be refused by name."""


class OutputText(_Wire, tag_field="type", tag="output_text"):
    text: str
    annotations: list[dict[str, Any]] | UnsetType = UNSET
    logprobs: list[dict[str, Any]] | None | UnsetType = UNSET


class Refusal(_Wire, tag_field="type", tag="refusal"):
    refusal: str


Part = InputText | InputImage | InputFile | OutputText | Refusal
OutputPart = InputText | InputImage | InputFile  # what a function_call_output may carry


# Items ---------------------------------------------------------------------------------------


class MessageItem(_Wire, tag_field="type", tag="message"):
    """A message; ``type`` may be left out (``parse`` fills it in, as the SDK's EasyInputMessage allows)."""

    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]
    id: Id | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    phase: Literal["commentary", "final_answer"] | None | UnsetType = UNSET


class FunctionCall(_Wire, tag_field="type", tag="function_call"):
    call_id: NonEmpty
    name: NonEmpty
    arguments: str
    id: Id | UnsetType = UNSET
    status: Status | UnsetType = UNSET


class FunctionCallOutput(_Wire, tag_field="type", tag="function_call_output"):
    call_id: NonEmpty
    output: str | list[OutputPart]
    id: Id | UnsetType = UNSET
    status: Status | UnsetType = UNSET


class SummaryText(_Wire, tag_field="type", tag="summary_text"):
    text: str


class ReasoningText(_Wire):
    type: Literal["reasoning_text", "text"]
    text: str


class ReasoningItem(_Wire, tag_field="type", tag="reasoning"):
    summary: list[SummaryText]
    id: Id | UnsetType = UNSET
    content: list[ReasoningText] | None | UnsetType = UNSET
    encrypted_content: str | None | UnsetType = UNSET
    status: Status | UnsetType = UNSET


class ItemReference(_Wire, tag_field="type", tag="item_reference"):
    """A reference to a stored item: read only to be refused by name (send the item itself)."""

    id: Id


Item = MessageItem | FunctionCall | FunctionCallOutput | ReasoningItem | ItemReference


# Tools ---------------------------------------------------------------------------------------


class FunctionTool(_Wire, tag_field="type", tag="function"):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None | UnsetType = UNSET
    parameters: dict[str, Any] | None | UnsetType = UNSET
    strict: bool | None | UnsetType = UNSET


# OpenAI's hosted tools: they run at OpenAI, so here they are read loosely and dropped whole.
HOSTED_TOOLS = ("web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11",
                "file_search", "code_interpreter", "image_generation", "computer_use_preview", "computer", "mcp",
                "tool_search")
_HOSTED = tuple(msgspec.defstruct(f"Hosted_{name}", [], kw_only=True, tag_field="type", tag=name) for name in HOSTED_TOOLS)
Tool = Union[(FunctionTool, *_HOSTED)]  # type: ignore[valid-type]  # noqa: UP007


def is_hosted(tool: Any) -> bool:
    """Whether a decoded tool is one of OpenAI's hosted tools."""
    return not isinstance(tool, FunctionTool)


class ToolChoiceFunction(_Wire, tag_field="type", tag="function"):
    name: NonEmpty


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


# Text, reasoning -----------------------------------------------------------------------------


class FormatText(_Wire, tag_field="type", tag="text"):
    pass


class FormatJsonSchema(_Wire, tag_field="type", tag="json_schema"):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    schema: dict[str, Any]
    strict: bool | None | UnsetType = UNSET
    description: str | UnsetType = UNSET


class FormatJsonObject(_Wire, tag_field="type", tag="json_object"):
    pass


class TextConfig(_Wire):
    format: FormatText | FormatJsonSchema | FormatJsonObject | UnsetType = UNSET
    verbosity: Literal["low", "medium", "high"] | None | UnsetType = UNSET


Summary = Literal["auto", "concise", "detailed"]


class Reasoning(_Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None | UnsetType = UNSET
    summary: Summary | None | UnsetType = UNSET
    generate_summary: Summary | None | UnsetType = UNSET
    context: Literal["auto", "current_turn", "all_turns"] | None | UnsetType = UNSET
    mode: str | None | UnsetType = UNSET


class StreamOptions(_Wire):
    include_obfuscation: bool | UnsetType = UNSET


Includable = Literal["file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
                     "message.input_image.image_url", "computer_call_output.output.image_url",
                     "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs"]
Metadata = Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
                     msgspec.Meta(max_length=16)]


class ResponsesRequest(_Wire):
    """``POST /v1/responses``."""

    model: NonEmpty
    input: str | list[Item] | UnsetType = UNSET
    instructions: str | None | UnsetType = UNSET
    tools: list[Tool] | None | UnsetType = UNSET  # type: ignore[valid-type]
    tool_choice: ToolChoice | UnsetType = UNSET
    parallel_tool_calls: bool | None | UnsetType = UNSET
    text: TextConfig | None | UnsetType = UNSET
    reasoning: Reasoning | None | UnsetType = UNSET
    max_output_tokens: Tokens | None | UnsetType = UNSET
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None | UnsetType = UNSET
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None | UnsetType = UNSET
    stream: bool | None | UnsetType = UNSET
    store: bool | None | UnsetType = UNSET
    previous_response_id: Id | None | UnsetType = UNSET
    metadata: Metadata | None | UnsetType = UNSET
    user: Annotated[str, msgspec.Meta(max_length=256)] | UnsetType = UNSET
    prompt_cache_key: Annotated[str, msgspec.Meta(max_length=256)] | None | UnsetType = UNSET
    safety_identifier: Annotated[str, msgspec.Meta(max_length=256)] | None | UnsetType = UNSET
    include: list[Includable] | None | UnsetType = UNSET
    truncation: Literal["auto", "disabled"] | None | UnsetType = UNSET
    # OpenAI's own features with no meaning to a chat upstream: read, then reported dropped.
    service_tier: str | None | UnsetType = UNSET
    stream_options: StreamOptions | None | UnsetType = UNSET
    max_tool_calls: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)] | None | UnsetType = UNSET
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None | UnsetType = UNSET
    prompt_cache_retention: Literal["in_memory", "24h"] | None | UnsetType = UNSET
    prompt_cache_options: dict[str, Any] | None | UnsetType = UNSET
    context_management: list[dict[str, Any]] | None | UnsetType = UNSET
    image: dict[str, Any] | None | UnsetType = UNSET
    access_programs: dict[str, Any] | None | UnsetType = UNSET
    client_metadata: dict[str, str] | None | UnsetType = UNSET  # Codex's
    # Features that change what the answer is: read, then refused by name (decode.REFUSED).
    background: bool | None | UnsetType = UNSET
    background_options: Any = UNSET
    conversation: Any = UNSET
    prompt: Any = UNSET
    moderation: Any = UNSET
