"""The OpenAI wire schema of what callers send, as typed structs decoded once.

Top-level unknown fields are refused, as OpenAI refuses them; nested objects whose shape
OpenAI extends often (content parts, tools, response formats) are typed loosely. Absent
fields stay absent (``UNSET``) when the request is re-encoded for the upstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

# Every integer a caller sends is bounded here, limits on or off: an upstream reads them into
# fixed-width integers (llama.cpp an int32, vLLM's seed a torch int64), where 2**70 overflows.
INT32_MAX = 2**31 - 1
Tokens = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]  # max_tokens and its kin: positive, int32
TokenId = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # OpenAI's and vLLM's: an int64
Choices = Annotated[int, msgspec.Meta(ge=1, le=128)]  # OpenAI's n: at most 128
# logit_bias: a token id (at most nine digits, so below INT32_MAX) to a bias from -100 to 100,
# at most 300 of them as OpenAI allows (which also bounds the key checks: ~1 us each)
LOGIT_BIAS_MAX = 300
BiasKey = Annotated[str, msgspec.Meta(pattern=r"^(?:0|[1-9][0-9]{0,8})$")]
Bias = Annotated[float, msgspec.Meta(ge=-100, le=100)]
MAX_DIMENSIONS = 65536  # embeddings: OpenAI's largest model has 3,072; open models 4,096


class _Wire(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of wire structs: absent stays absent when re-encoded."""


class Message(_Wire):
    role: Role
    content: str | list[dict[str, Any]] | None | UnsetType = UNSET
    name: str | UnsetType = UNSET
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    function_call: dict[str, Any] | None | UnsetType = UNSET
    refusal: str | None | UnsetType = UNSET
    audio: dict[str, Any] | None | UnsetType = UNSET


class StreamOptions(_Wire, forbid_unknown_fields=True):
    include_usage: bool | UnsetType = UNSET
    include_obfuscation: bool | UnsetType = UNSET


class ChatCompletionRequest(_Wire, forbid_unknown_fields=True):
    """``POST /v1/chat/completions``."""

    model: NonEmpty
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool | None | UnsetType = UNSET
    stream_options: StreamOptions | None | UnsetType = UNSET
    max_tokens: Tokens | None | UnsetType = UNSET
    max_completion_tokens: Tokens | None | UnsetType = UNSET
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None | UnsetType = UNSET
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None | UnsetType = UNSET
    n: Choices | None | UnsetType = UNSET
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None | UnsetType = UNSET
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None | UnsetType = UNSET
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None | UnsetType = UNSET
    logit_bias: Annotated[dict[BiasKey, Bias], msgspec.Meta(max_length=LOGIT_BIAS_MAX)] | None | UnsetType = UNSET
    logprobs: bool | None | UnsetType = UNSET
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None | UnsetType = UNSET
    seed: Seed | None | UnsetType = UNSET
    user: str | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType = UNSET
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    response_format: dict[str, Any] | UnsetType = UNSET
    metadata: dict[str, str] | None | UnsetType = UNSET
    store: bool | None | UnsetType = UNSET
    service_tier: str | None | UnsetType = UNSET
    modalities: list[str] | None | UnsetType = UNSET
    audio: dict[str, Any] | None | UnsetType = UNSET
    prediction: dict[str, Any] | None | UnsetType = UNSET
    reasoning_effort: str | None | UnsetType = UNSET
    verbosity: str | None | UnsetType = UNSET
    web_search_options: dict[str, Any] | UnsetType = UNSET
    prompt_cache_key: str | UnsetType = UNSET
    safety_identifier: str | UnsetType = UNSET
    functions: list[dict[str, Any]] | UnsetType = UNSET
    function_call: str | dict[str, Any] | UnsetType = UNSET


class EmbeddingRequest(_Wire, forbid_unknown_fields=True):
    """``POST /v1/embeddings``."""

    model: NonEmpty
    input: str | Annotated[list[str | TokenId | Annotated[list[TokenId], msgspec.Meta(min_length=1)]],
                           msgspec.Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | UnsetType = UNSET
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMENSIONS)] | UnsetType = UNSET
    user: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        # One of: a string, strings, token ids, or lists of token ids; never a mix.
        inp = self.input
        if isinstance(inp, list):
            kinds = {type(x) for x in inp}
            if len(kinds) > 1:
                raise ValueError("must be a string, an array of strings, an array of token ids, "
                                 "or an array of token-id arrays - at `$.input`")
            if str in kinds and any(not x for x in inp):
                raise ValueError("must not contain empty strings - at `$.input`")


Logprobs = Annotated[int, msgspec.Meta(ge=0, le=5)]  # legacy completions: the top tokens to return, at most 5
MAX_PROMPTS = 2048  # legacy completions: prompts in one request (as embeddings' inputs)
LEGACY_MAX_TOKENS = 16  # legacy completions: what an absent max_tokens means (OpenAI's and vLLM's default)
PromptItem = str | TokenId | Annotated[list[TokenId], msgspec.Meta(min_length=1)]


class CompletionRequest(_Wire, forbid_unknown_fields=True):
    """``POST /v1/completions``, OpenAI's legacy text completions: one prompt or several, as text or token ids."""

    model: NonEmpty
    prompt: str | Annotated[list[PromptItem], msgspec.Meta(min_length=1)]  # one array of ids: as long as the body
    suffix: str | None | UnsetType = UNSET
    max_tokens: Tokens | None | UnsetType = UNSET
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None | UnsetType = UNSET
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None | UnsetType = UNSET
    n: Choices | None | UnsetType = UNSET
    stream: bool | None | UnsetType = UNSET
    stream_options: StreamOptions | None | UnsetType = UNSET
    logprobs: Logprobs | None | UnsetType = UNSET
    echo: bool | None | UnsetType = UNSET
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None | UnsetType = UNSET
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None | UnsetType = UNSET
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None | UnsetType = UNSET
    best_of: Choices | None | UnsetType = UNSET
    logit_bias: Annotated[dict[BiasKey, Bias], msgspec.Meta(max_length=LOGIT_BIAS_MAX)] | None | UnsetType = UNSET
    user: str | UnsetType = UNSET
    seed: Seed | None | UnsetType = UNSET

    def __post_init__(self) -> None:
        # One of: a string, strings, token ids, or lists of token ids; never a mix (as embeddings' input).
        prompt = self.prompt
        if isinstance(prompt, list):
            kinds = {type(x) for x in prompt}
            if len(kinds) > 1:
                raise ValueError("must be a string, an array of strings, an array of token ids, "
                                 "or an array of token-id arrays - at `$.prompt`")
            if int not in kinds and len(prompt) > MAX_PROMPTS:
                raise ValueError(f"must hold at most {MAX_PROMPTS} prompts - at `$.prompt`")

    def prompts(self) -> list[str] | list[list[int]]:
        """Each prompt of the request: a string, or a list of token ids (one array of ids is one prompt)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if type(prompt[0]) is int:
            return [prompt]  # type: ignore[list-item]
        return prompt  # type: ignore[return-value]


# Extra top-level parameters a model's upstream accepts, passed through exactly as sent.
# "vllm": vLLM's sampling and chat extensions (also read by SGLang and TGI's OpenAI routes).
# Operator-side knobs (priority, request_id, kv_transfer_params, logits_processors, which
# loads code by name) are left out on purpose: name them in a model's list to allow them.
VLLM_PARAMS = (
    "best_of", "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "prompt_logprobs", "allowed_token_ids",
    "bad_words", "echo", "add_generation_prompt", "continue_final_message", "add_special_tokens",
    "documents", "chat_template", "chat_template_kwargs", "mm_processor_kwargs", "structured_outputs",
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
    "guided_whitespace_pattern", "structural_tag", "return_tokens_as_token_ids", "return_token_ids",
    "cache_salt", "vllm_xargs", "stream_options.continuous_usage_stats",
)
PARAM_SETS: dict[str, tuple[str, ...]] = {"openai": (), "vllm": VLLM_PARAMS}

# The integer extras, bounded as vLLM reads them (-1 is its "off" or "all"); any other extra
# is passed as any JSON. A name listed by hand gets its type here too.
_EXTRA_TYPES: dict[str, Any] = {
    "best_of": Choices | None | UnsetType,
    "top_k": Annotated[int, msgspec.Meta(ge=-1, le=INT32_MAX)] | None | UnsetType,
    "min_tokens": Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)] | None | UnsetType,
    "truncate_prompt_tokens": Annotated[int, msgspec.Meta(ge=-1, le=INT32_MAX)] | None | UnsetType,
    "prompt_logprobs": Annotated[int, msgspec.Meta(ge=-1, le=INT32_MAX)] | None | UnsetType,
    "stop_token_ids": list[TokenId] | None | UnsetType,
    "allowed_token_ids": list[TokenId] | None | UnsetType,
}


def extra_params(spec: str | Iterable[str] | None) -> frozenset[str]:
    """The parameter names a model's ``extra_params`` allows: a set's name, or a list of set names and names."""
    if spec is None:
        return frozenset()
    names: set[str] = set()
    for item in [spec] if isinstance(spec, str) else spec:
        names.update(PARAM_SETS.get(item, (item,)))
    return frozenset(names - set(ChatCompletionRequest.__struct_fields__))


class VllmStreamOptions(StreamOptions, forbid_unknown_fields=True):
    """vLLM's ``stream_options``: usage on every chunk as well (guidellm asks for it)."""

    continuous_usage_stats: bool | UnsetType = UNSET


# Parameters inside a standard one: the field they widen and its wider type.
_NESTED: dict[str, tuple[str, Any]] = {
    "stream_options.continuous_usage_stats": ("stream_options", VllmStreamOptions | None | UnsetType),
}


def chat_request_with(names: frozenset[str], base: type = ChatCompletionRequest) -> type:
    """``base`` (chat's request, or legacy completions') that also takes the named parameters, re-encoded
    unchanged: the integer ones bounded (``_EXTRA_TYPES``), the rest any JSON. A name that is already
    one of ``base``'s fields keeps its own type."""
    names = frozenset(names - set(base.__struct_fields__))  # type: ignore[attr-defined]
    if not names:
        return base
    fields = [_NESTED[name] + (UNSET,) if name in _NESTED else (name, _EXTRA_TYPES.get(name, Any), UNSET)
              for name in sorted(names)]
    return msgspec.defstruct(f"{base.__name__}WithExtras", fields, bases=(base,),
                             kw_only=True, forbid_unknown_fields=True, omit_defaults=True)


class PromptTokensDetails(msgspec.Struct, gc=False):
    """How much of the prompt the upstream served from its cache (priced as ``cached_input``), and how
    much it wrote to it (Anthropic's ``cache_creation_input_tokens``, priced as ``cache_creation_input``;
    sluice's own field, set only on the chat form of an Anthropic upstream's answer)."""

    cached_tokens: int | None = 0
    cache_creation_tokens: int | None = 0


class TokenUsage(msgspec.Struct, gc=False):
    """Token counts as an upstream reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details is not None else 0

    @property
    def cache_creation_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cache_creation_tokens or 0) if details is not None else 0


class UsageEnvelope(msgspec.Struct, gc=False):
    """The part of a completion, chunk or embedding reply that carries usage."""

    usage: TokenUsage | None = None
