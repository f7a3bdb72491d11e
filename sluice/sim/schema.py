"""The vLLM OpenAI-compatible wire shapes the sim reads and writes, as msgspec structs.

Requests are lenient the way vLLM is (unknown fields are ignored, extensions such as
``ignore_eos`` are read); replies carry vLLM's fields, ``null`` where vLLM writes null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


# Requests --------------------------------------------------------------------------------


class ChatMessage(msgspec.Struct, kw_only=True):
    """One prompt message; only role and content matter to the sim."""

    role: str
    content: str | list[Any] | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    """``stream_options``: whether a final usage chunk is sent."""

    include_usage: bool | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/chat/completions``, the fields the sim acts on."""

    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None  # vLLM's: an int64
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tools: list[Any] | None = None  # offered tools: ``sim:call`` lines answer with tool_calls (sim/tools.py)


class CompletionRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/completions`` (legacy), the fields the sim acts on; ``prompt``'s shape is checked after decoding."""

    model: str
    prompt: str | list[str | int | list[int]]
    suffix: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = 16  # vLLM's default for this route; null: up to the context
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    echo: bool | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/embeddings``; ``input`` is checked for one of the four accepted shapes after decoding."""

    model: str
    # msgspec unions allow one array type, so the item type is a union and homogeneity is checked by hand.
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None


# Replies ---------------------------------------------------------------------------------


class PromptTokensDetails(msgspec.Struct, gc=False):
    """How much of the prompt the prefix cache served."""

    cached_tokens: int = 0


class Usage(msgspec.Struct, gc=False):
    """Token usage, vLLM's ``UsageInfo``."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class AssistantMessage(msgspec.Struct, kw_only=True, gc=False):
    """The generated message of a non-streaming choice."""

    role: str = "assistant"
    content: str
    tool_calls: list[Any] = msgspec.field(default_factory=list)


class Choice(msgspec.Struct, kw_only=True):
    """One non-streaming choice."""

    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str
    stop_reason: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    """A whole non-streaming reply."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(msgspec.Struct, omit_defaults=True):
    """What a chunk adds; absent fields are left out, as vLLM leaves them out."""

    role: str | UnsetType = UNSET
    content: str | UnsetType = UNSET


class ChunkChoice(msgspec.Struct):
    """One choice of a streamed chunk; ``logprobs`` and ``finish_reason`` are written even when null."""

    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    """One server-sent event of a streamed reply."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | UnsetType = UNSET


class TextChoice(msgspec.Struct, kw_only=True):
    """One choice of a legacy completion, whole or a streamed chunk's (vLLM writes the nulls)."""

    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None
    stop_reason: None = None


class TextCompletion(msgspec.Struct, omit_defaults=True):
    """A legacy completion, whole (with usage) or one streamed chunk (usage only on the usage chunk)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | UnsetType = UNSET


class EmbeddingData(msgspec.Struct, kw_only=True):
    """One input's vector, as floats or base64 of little-endian float32."""

    index: int
    object: str = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    """A whole embeddings reply."""

    id: str
    object: str = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: Usage


class ModelCard(msgspec.Struct, kw_only=True):
    """One entry of ``GET /v1/models``."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "sluice-sim"
    root: str | None = None
    parent: None = None
    max_model_len: int
    digest: str | UnsetType = UNSET  # the sim's ``--digest`` (vLLM has no such field; a probe reads it: routing.supply)


class ModelList(msgspec.Struct, kw_only=True):
    """``GET /v1/models``."""

    object: str = "list"
    data: list[ModelCard]
