"""Anthropic's Messages stream grammar as a state machine over events, for tests: a stream is
accepted only if its events come in the documented order with contiguous block indices, each
delta fits its block, and each tool block's ``input_json_delta`` pieces make one JSON object."""

from __future__ import annotations

import json

from named_events import Event, GrammarError, parse_sse  # noqa: F401  (the validators' API)

_DELTAS = {"text": {"text_delta", "citations_delta"}, "tool_use": {"input_json_delta"},
           "thinking": {"thinking_delta", "signature_delta"}, "redacted_thinking": set()}
_STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}




def validate(events: list[Event]) -> str:
    """Run the state machine; returns how the stream ended (``"message_stop"`` or ``"error"``)."""
    state = "start"  # start -> message -> block -> message -> delta -> done
    index = -1
    kind = ""
    json_buf = ""
    for n, (name, data) in enumerate(events):
        where = f"event {n} ({name}) in state {state}"
        if state == "done":
            raise GrammarError(f"{where}: nothing may follow the end of the stream")
        if name == "error":
            err = data.get("error") or {}
            if not (isinstance(err.get("type"), str) and isinstance(err.get("message"), str)):
                raise GrammarError(f"{where}: an error event needs error.type and error.message")
            state = "done"
            ended = "error"
            continue
        if name == "ping":
            if state == "start":
                raise GrammarError(f"{where}: ping before message_start")
            continue
        if name == "message_start":
            if state != "start":
                raise GrammarError(f"{where}: a second message_start")
            msg = data["message"]
            if msg["content"] != [] or msg["stop_reason"] is not None or not isinstance(msg["usage"]["input_tokens"], int):
                raise GrammarError(f"{where}: message_start must carry an empty message with input usage")
            state = "message"
        elif name == "content_block_start":
            if state != "message":
                raise GrammarError(f"{where}: a block may start only between blocks")
            if data["index"] != index + 1:
                raise GrammarError(f"{where}: index {data['index']} after {index}: indices must be contiguous")
            index, kind, json_buf = data["index"], data["content_block"]["type"], ""
            if kind not in _DELTAS:
                raise GrammarError(f"{where}: unknown block type {kind!r}")
            if kind == "tool_use" and data["content_block"].get("input") != {}:
                raise GrammarError(f"{where}: a streamed tool_use starts with input {{}}")
            state = "block"
        elif name == "content_block_delta":
            if state != "block" or data["index"] != index:
                raise GrammarError(f"{where}: a delta for block {data['index']} while block {index} is open")
            dtype = data["delta"]["type"]
            if dtype not in _DELTAS[kind]:
                raise GrammarError(f"{where}: a {dtype} in a {kind} block")
            if dtype == "input_json_delta":
                json_buf += data["delta"]["partial_json"]
        elif name == "content_block_stop":
            if state != "block" or data["index"] != index:
                raise GrammarError(f"{where}: stop of block {data['index']} while block {index} is open")
            if kind == "tool_use" and json_buf and not isinstance(json.loads(json_buf), dict):
                raise GrammarError(f"{where}: the tool arguments do not make a JSON object")
            state = "message"
        elif name == "message_delta":
            if state not in ("message", "delta"):
                raise GrammarError(f"{where}: message_delta with a block open or before message_start")
            if data["delta"].get("stop_reason") not in _STOP_REASONS:
                raise GrammarError(f"{where}: stop_reason {data['delta'].get('stop_reason')!r}")
            if not isinstance(data["usage"].get("output_tokens"), int):
                raise GrammarError(f"{where}: message_delta must carry output usage")
            state = "delta"
        elif name == "message_stop":
            if state != "delta":
                raise GrammarError(f"{where}: message_stop before message_delta")
            state = "done"
            ended = "message_stop"
        else:
            raise GrammarError(f"{where}: unknown event")
    if state != "done":
        raise GrammarError(f"the stream ended in state {state}, without message_stop or error")
    return ended
