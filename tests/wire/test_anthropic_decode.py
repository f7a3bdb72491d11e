"""Messages requests decode into the chat request by the translation table; what cannot be
translated is reported by rule; bad input is a 400 in Anthropic's shape that quotes nothing sent."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from sluice.core.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from sluice.core.wire import ChatCompletionRequest, chat_request_with
from sluice.wire.anthropic import DROP_RULES, count_messages, decode, error_body, error_status, parse_count

GOLDEN = Path(__file__).parent / "golden" / "requests"
CASES = sorted(GOLDEN.glob("*.json"))
SECRET = "s3cr3t-payload-value"


def _golden(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_claude_code_request_shapes_translate_to_their_golden_chat_requests(path: Path) -> None:
    case = _golden(path)
    body = json.dumps(case["anthropic"]).encode()
    if case.get("count_tokens"):
        messages, tools, dropped = count_messages(parse_count(body))
        assert msgspec.to_builtins({"messages": messages, "tools": tools}) == case["chat"]
    else:
        translated = decode(body)
        assert msgspec.to_builtins(translated.request) == case["chat"]
        # The translation is a valid chat request as the pipeline's own decoder reads it.
        again = msgspec.json.decode(msgspec.json.encode(translated.request), type=ChatCompletionRequest)
        assert again == translated.request
        dropped = translated.dropped
    assert dropped == case["dropped"]
    assert set(dropped) <= set(DROP_RULES)  # every drop has a documented rule


def test_top_k_is_kept_when_the_models_request_type_takes_vllm_parameters() -> None:
    body = json.dumps(_golden(GOLDEN / "images_and_sampling.json")["anthropic"]).encode()
    translated = decode(body, chat_request_with(frozenset({"top_k"})))
    assert translated.request.top_k == 40  # type: ignore[attr-defined]
    assert "top_k" not in translated.dropped
    assert "top_k" in decode(body).dropped


def _request(**over: object) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **over}).encode()


def test_a_tool_result_without_its_tool_use_is_a_400() -> None:
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nowhere", "content": "x"}]}]
    with pytest.raises(InvalidRequest) as err:
        decode(_request(messages=orphan))
    assert err.value.status == 400 and "tool_use_id" in err.value.message
    # The same id answered after its tool_use is fine; a second answer to an id used later is not.
    called = [{"role": "user", "content": "go"},
              {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]
    assert decode(_request(messages=called)).request.messages[-1].tool_call_id == "toolu_1"
    later = [called[0], called[2], called[1]]
    with pytest.raises(InvalidRequest):
        decode(_request(messages=later))


BAD = {
    "missing max_tokens": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "unknown block type": {"messages": [{"role": "user", "content": [{"type": SECRET, "text": "x"}]}]},
    "block without type": {"messages": [{"role": "user", "content": [{"text": SECRET}]}]},
    "unknown block field": {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", SECRET: 1}]}]},
    "wrong role": {"messages": [{"role": SECRET, "content": "x"}]},
    "max_tokens a string": {"max_tokens": SECRET},
    "max_tokens zero": {"max_tokens": 0},
    "temperature above 1": {"temperature": 1.5},
    "content a number": {"messages": [{"role": "user", "content": 7}]},
    "no messages": {"messages": []},
    "image media type": {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": SECRET, "data": "AAAA"}}]}]},
    "image source kind": {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": SECRET, "file_id": "f"}}]}]},
    "tool_use input a list": {"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": [SECRET]}]}]},
    "tool_use in a user turn": {"messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
    "tool_result in an assistant turn": {"messages": [{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": SECRET}]}]},
    "tool_choice unknown": {"tool_choice": {"type": SECRET}},
    "tool_choice tool without tools": {"tool_choice": {"type": "tool", "name": "f"}},
    "custom tool without input_schema": {"tools": [{"name": "f", "description": SECRET}]},
    "too many stop sequences": {"stop_sequences": ["a", "b", "c", "d", SECRET]},
    "unknown top-level field": {SECRET: True},
    "thinking budget zero": {"thinking": {"type": "enabled", "budget_tokens": 0}},
    "system a number": {"system": 3},
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_an_anthropic_invalid_request_error_that_echoes_nothing(case: str) -> None:
    over = BAD[case]
    body = json.dumps(over).encode() if "model" in over else _request(**over)
    with pytest.raises(InvalidRequest) as err:
        decode(body)
    exc = err.value
    assert error_status(exc) == 400
    shaped = error_body(exc)
    assert shaped == {"type": "error", "error": {"type": "invalid_request_error", "message": exc.message}}
    assert SECRET not in exc.message and exc.message


def test_a_body_that_is_not_json_is_a_400_that_echoes_nothing() -> None:
    for body in (b"{not json " + SECRET.encode(), b"\xff\xfe" + SECRET.encode(), b"[" * 100_000):
        with pytest.raises(InvalidRequest) as err:
            decode(body)
        assert SECRET not in err.value.message


def test_missing_max_tokens_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        decode(json.dumps(BAD["missing max_tokens"]).encode())
    assert err.value.message == "max_tokens: Field required"


@pytest.mark.parametrize(("exc", "status", "kind"), [
    (InvalidRequest("x"), 400, "invalid_request_error"),
    (Unauthenticated("x"), 401, "authentication_error"),
    (PermissionDenied("x"), 403, "permission_error"),
    (NotFound("x"), 404, "not_found_error"),
    (PayloadTooLarge("x"), 413, "request_too_large"),
    (RateLimited("x", retry_after=2), 429, "rate_limit_error"),
    (Unavailable("x"), 529, "overloaded_error"),
    (GatewayError("x"), 500, "api_error"),
    (UpstreamError("x"), 502, "api_error"),
    (UpstreamTimeout("x"), 504, "api_error"),
    (GatewayError("x", status=415), 415, "invalid_request_error"),
])
def test_gateway_errors_render_with_anthropics_status_and_type(exc: GatewayError, status: int, kind: str) -> None:
    assert error_status(exc) == status
    assert error_body(exc) == {"type": "error", "error": {"type": kind, "message": "x"}}
