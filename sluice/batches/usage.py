"""A batch's ``usage`` as OpenAI's batch object carries it: the sum of its answered lines' usage (the ``usage``
of each response body in the output and error files), in the Responses API's names."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec


class _Details(msgspec.Struct):
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0  # an answer in the Responses API's names
    output_tokens: int = 0
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _Body(msgspec.Struct):
    usage: _Usage | None = None


class _Response(msgspec.Struct):
    body: _Body | str | None = None


class _Result(msgspec.Struct):
    response: _Response | None = None


_decode = msgspec.json.Decoder(_Result).decode


def summed(results: Iterable[str]) -> dict:
    """The batch object's ``usage`` from its lines' result JSON (only the usage of each is decoded)."""
    inp = out = cached = reasoning = 0
    for text in results:
        try:
            r = _decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # a body that is not an answer's (an error's text) has no usage
        body = r.response.body if r.response is not None else None
        u = body.usage if isinstance(body, _Body) else None
        if u is None:
            continue
        inp += u.prompt_tokens or u.input_tokens
        out += u.completion_tokens or u.output_tokens
        d = u.prompt_tokens_details or u.input_tokens_details
        cached += d.cached_tokens if d is not None else 0
        d = u.completion_tokens_details or u.output_tokens_details
        reasoning += d.reasoning_tokens if d is not None else 0
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out,
            "input_tokens_details": {"cached_tokens": cached}, "output_tokens_details": {"reasoning_tokens": reasoning}}
