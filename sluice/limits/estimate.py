"""How many tokens a request may cost before it runs: the reservation.

Prompt tokens are counted with the model's real tokenizer where it is known: the
``tokenizer.json`` a model names (``models[].tokenizer``, ``core.tokenizer``), with the chat
template's framing counted as that tokenizer's template renders it; else OpenAI models', through
the offline ``bpe-openai`` tables. Otherwise they are estimated at four characters per token, plus
four tokens of framing per message. Tools, schemas, tool calls count too, and an image part a
fixed ``core.prompt.IMAGE_TOKENS``. Output is reserved at ``max_tokens`` (or
``max_completion_tokens``) times ``n``, or at the policy's cap.

A legacy completion (``CompletionRequest``) has no chat template: each prompt counts its own tokens
(token ids one each) plus its suffix's; it generates ``max(n, best_of)`` sequences per prompt, each
of ``max_tokens``, which means 16 when absent (the API's default) and up to the cap when null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec import UNSET

from ..core.errors import InvalidRequest
from ..core.prompt import IMAGE_TOKENS, message_extras, part_text, request_extras
from ..core.tokenizer import Tokenizer, load
from ..core.wire import LEGACY_MAX_TOKENS, ChatCompletionRequest, CompletionRequest, EmbeddingRequest

_PER_MESSAGE = 4


_encodings: dict[str, Any] = {}  # upstream model -> its OpenAI tokenizer, or None where it is not known
_named: dict[str, Tokenizer] = {}  # served model -> the tokenizer its config names


def _encoding(model: str) -> Any | None:
    try:
        return _encodings[model]
    except KeyError:
        pass
    try:
        import bpe_openai

        name = bpe_openai.encoding_name_for_model(model)  # cheap; loads nothing for unknown models
        enc = bpe_openai.get_encoding(name)
    except Exception:  # unknown model, or the tables are not installed: estimate instead
        enc = None
    if len(_encodings) < 1024:  # bounded: models come from the config
        _encodings[model] = enc
    return enc


def warm(models: list[str], named: Mapping[str, str] | None = None) -> None:
    """Load the tokenizers of these upstream models now (start-up), not on some unlucky first
    request; ``named``: served model -> the ``tokenizer.json`` its config names."""
    for m in models:
        _encoding(m)
    for model, path in (named or {}).items():
        _named[model] = load(path)  # read when the config was checked; kept once per process


_PIECE = 100_000  # bpe-openai refuses a text of a million characters, or 200,000 tokens, at once


def _count(text: str, enc: Any | None) -> int:
    if enc is None:
        return (len(text) + 3) // 4
    if type(enc) is Tokenizer:
        return enc.count(text)
    try:
        # ordinary: text that spells a special token (<|endoftext|>) is text here, not an error
        if len(text) <= _PIECE:
            return len(enc.encode_ordinary(text))
        return sum(len(enc.encode_ordinary(text[i:i + _PIECE])) for i in range(0, len(text), _PIECE))
    except ValueError:  # past another of the tokenizer's limits: estimate
        return (len(text) + 3) // 4


def _tokenizer(tokenizer_model: str, model: str) -> Any | None:
    enc = _named.get(model) if _named else None
    return _encoding(tokenizer_model) if enc is None else enc


def _prompt_sizes(request: CompletionRequest, enc: Any | None) -> list[int]:
    suffix = request.suffix
    extra = _count(suffix, enc) if type(suffix) is str and suffix else 0
    return [(_count(p, enc) if type(p) is str else len(p)) + extra for p in request.prompts()]


def prompt_sizes(request: CompletionRequest, tokenizer_model: str, model: str = "") -> list[int]:
    """Each prompt's tokens of a legacy completion (with the suffix): each is its own sequence, so each on
    its own must fit the context window."""
    return _prompt_sizes(request, _tokenizer(tokenizer_model, model))


def prompt_tokens(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, tokenizer_model: str,
                  model: str = "", unset: Any = UNSET) -> int:
    """Prompt tokens of a request, counted or estimated: everything that reaches the model's
    context (``core.prompt``). ``tokenizer_model``: the upstream's model name; ``model``: the served
    one, whose config may name its tokenizer. On every limited request, so plain text messages
    stay lean (``unset`` is bound once, a local instead of a global lookup per check)."""
    enc = _named.get(model) if _named else None
    if enc is None:
        enc = _encoding(tokenizer_model)
    if isinstance(request, CompletionRequest):  # every prompt, each with the suffix
        return sum(_prompt_sizes(request, enc))
    # a chat request, or its wider type for a model with extra parameters (a subclass)
    if type(request) is not EmbeddingRequest:
        if type(enc) is Tokenizer:  # its template's framing: what it adds around each message
            n = sum(len(enc.framing(m.role)) for m in request.messages)
        else:
            n = _PER_MESSAGE * len(request.messages)
        for m in request.messages:
            c = m.content
            if type(c) is str:
                n += (len(c) + 3) // 4 if enc is None else _count(c, enc)
            elif isinstance(c, list):
                for part in c:
                    text = part_text(part)
                    n += IMAGE_TOKENS if text is None else _count(text, enc)
            if m.name is not unset or m.role == "assistant":  # names, tool calls, refusals
                n += sum(_count(text, enc) for text in message_extras(m))
        if request.tools is not unset or request.response_format is not unset or request.tool_choice is not unset \
                or request.functions is not unset:
            n += sum(_count(text, enc) for text in request_extras(request))
        return n
    inp = request.input  # type: ignore[union-attr]
    if isinstance(inp, str):
        return _count(inp, enc)
    # a list of strings, or of token arrays (counted as they are), or one token array
    return sum(_count(x, enc) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in inp)


def _sequences(request: CompletionRequest) -> int:
    """How many sequences a legacy completion generates: ``best_of`` (at least ``n``) per prompt."""
    n, best = request.n, request.best_of
    return max(n if type(n) is int else 1, best if type(best) is int else 1) * len(request.prompts())


def _per_sequence(request: CompletionRequest, cap: int) -> int:
    asked = request.max_tokens
    if type(asked) is int:
        return asked if asked < cap else cap
    return min(LEGACY_MAX_TOKENS, cap) if asked is UNSET else cap  # null: as long as the context allows


def output_tokens(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, cap: int) -> int:
    """The most output a request may produce, as far as the reservation is concerned."""
    if type(request) is EmbeddingRequest:
        return 0
    if isinstance(request, CompletionRequest):
        return _per_sequence(request, cap) * _sequences(request)
    asked = request.max_completion_tokens or request.max_tokens
    per_choice = (asked if asked < cap else cap) if type(asked) is int else cap
    n = request.n
    return per_choice * n if type(n) is int else per_choice


def bounded_output(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, cap: int, clamp: bool) -> int:
    """The most output a request may produce (``output_tokens``), refusing a limit above ``cap``.

    Above ``cap`` a request is refused (400 naming the cap) or, with ``clamp``, lowered to
    it, so the upstream is never asked for more than was reserved. A request that gave no
    limit reserves the cap and is given it by ``ask_for`` once it holds a reservation.
    """
    if type(request) is EmbeddingRequest:
        return 0
    if isinstance(request, CompletionRequest):
        if type(request.max_tokens) is int and request.max_tokens > cap:
            request.max_tokens = _over_cap("max_tokens", request.max_tokens, cap, clamp)
        return _per_sequence(request, cap) * _sequences(request)
    mct, mt = request.max_completion_tokens, request.max_tokens
    # the upstream reads max_completion_tokens first (OpenAI, vLLM): so does the reservation;
    # but both are bounded, for a server that reads max_tokens only
    if type(mt) is int:
        if mt > cap:
            mt = request.max_tokens = _over_cap("max_tokens", mt, cap, clamp)
        per_choice = mt
    else:
        per_choice = cap
    if type(mct) is int:
        if mct > cap:
            mct = request.max_completion_tokens = _over_cap("max_completion_tokens", mct, cap, clamp)
        per_choice = mct
    n = request.n
    return per_choice * n if type(n) is int else per_choice  # type: ignore[return-value]


def ask_for(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, cap: int) -> None:
    """A reserved request that gave no output limit (so reserved ``cap`` per choice) is sent
    with that limit, so it cannot produce more than it holds. A legacy completion is sent with the limit its
    reservation took (16 when absent: the API's default made explicit, which llama.cpp would not apply)."""
    if isinstance(request, CompletionRequest):
        if type(request.max_tokens) is not int:
            request.max_tokens = _per_sequence(request, cap)
        return
    if type(request) is not EmbeddingRequest and type(request.max_completion_tokens) is not int \
            and type(request.max_tokens) is not int:
        request.max_tokens = cap


def _over_cap(field: str, asked: int, cap: int, clamp: bool) -> int:
    if clamp:
        return cap
    raise InvalidRequest(f"`{field}` is {asked}, above this gateway's limit of {cap} output tokens per request; "
                         f"ask for at most {cap}.", code="max_tokens_above_cap", param=field)
