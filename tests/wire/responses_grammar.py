"""The Responses stream grammar as a state machine over events, for tests: a stream is accepted
only if it opens with ``response.created`` then ``response.in_progress``, its output items are
added and done at contiguous ``output_index`` values one at a time, every content event names the
open item (``item_id``, ``output_index``, ``content_index``), each ``.done`` text equals its
deltas' concatenation, a completed call's arguments are a JSON object, one response id runs
through every lifecycle event, ``sequence_number`` counts 0, 1, 2..., and the stream ends with
exactly one ``response.completed`` (with usage), ``response.incomplete``, ``response.failed`` or
``error`` whose response lists the items that were done."""

from __future__ import annotations

import json
from typing import Any

from named_events import Event, GrammarError, parse_sse  # noqa: F401  (the validators' API)

_ITEM_KINDS = {"message": "output_text", "reasoning": "reasoning_text", "function_call": None}
_TEXT_EVENTS = {"output_text": ("response.output_text.delta", "response.output_text.done"),
                "reasoning_text": ("response.reasoning_text.delta", "response.reasoning_text.done")}
_ENDS = {"response.completed": "completed", "response.incomplete": "incomplete", "response.failed": "failed"}




class _Machine:
    def __init__(self) -> None:
        self.state = "start"  # start -> created -> between <-> item <-> part -> done
        self.response_id: str | None = None
        self.items: list[dict[str, Any]] = []  # items done, in output order
        self.item: dict[str, Any] | None = None  # the open item, as added
        self.part: str | None = None  # the open part's type
        self.parts: list[str] = []  # the open item's finished part texts
        self.buf = ""  # the open part's text, or the open call's arguments
        self.text_done = False
        self.args_done = False
        self.ended = ""

    def fail(self, where: str, why: str) -> None:
        raise GrammarError(f"{where}: {why}")

    def lifecycle(self, where: str, name: str, data: dict[str, Any]) -> dict[str, Any]:
        resp = data.get("response")
        if not isinstance(resp, dict) or resp.get("object") != "response":
            self.fail(where, "a lifecycle event carries the Response")
        if self.response_id is None:
            self.response_id = resp["id"]
        elif resp["id"] != self.response_id:
            self.fail(where, f"response id {resp['id']!r} after {self.response_id!r}")
        return resp

    def where_open(self, where: str, data: dict[str, Any], content: bool) -> None:
        if self.item is None:
            self.fail(where, "a content event with no item open")
        if data.get("item_id") != self.item["id"] or data.get("output_index") != len(self.items):
            self.fail(where, f"names item {data.get('item_id')!r} at {data.get('output_index')}, "
                             f"but {self.item['id']!r} at {len(self.items)} is open")
        if content and data.get("content_index") != len(self.parts):
            self.fail(where, f"content_index {data.get('content_index')} where {len(self.parts)} is next")

    def step(self, n: int, name: str, data: dict[str, Any]) -> None:
        where = f"event {n} ({name}) in state {self.state}"
        if self.state == "done":
            self.fail(where, "nothing may follow the end of the stream")
        if data.get("sequence_number") != n:
            self.fail(where, f"sequence_number {data.get('sequence_number')} where {n} is due")
        if name == "error":
            if not isinstance(data.get("message"), str):
                self.fail(where, "an error event needs a message")
            self.state, self.ended = "done", "error"
        elif name == "response.created":
            if self.state != "start":
                self.fail(where, "response.created must come first, once")
            resp = self.lifecycle(where, name, data)
            if resp.get("status") not in ("in_progress", "queued") or resp.get("output") != []:
                self.fail(where, "response.created carries an in-progress Response with no output")
            self.state = "created"
        elif self.state == "start":
            self.fail(where, "the stream must open with response.created")
        elif name == "response.in_progress":
            if self.state != "created":
                self.fail(where, "response.in_progress comes right after response.created")
            if self.lifecycle(where, name, data).get("status") != "in_progress":
                self.fail(where, "response.in_progress carries status in_progress")
            self.state = "between"
        elif name in _ENDS:
            self.end(where, name, data)
        elif self.state == "created":
            self.fail(where, "response.in_progress must follow response.created")
        elif name == "response.output_item.added":
            self.added(where, data)
        elif name == "response.content_part.added":
            self.part_added(where, data)
        elif name in ("response.output_text.delta", "response.reasoning_text.delta"):
            self.where_open(where, data, True)
            if self.state != "part" or name != _TEXT_EVENTS[self.part][0] or self.text_done:  # type: ignore[index]
                self.fail(where, f"a {name} while a {self.part} part is open")
            if not isinstance(data.get("delta"), str):
                self.fail(where, "a delta is a string")
            self.buf += data["delta"]
        elif name in ("response.output_text.done", "response.reasoning_text.done"):
            self.where_open(where, data, True)
            if self.state != "part" or name != _TEXT_EVENTS[self.part][1] or self.text_done:  # type: ignore[index]
                self.fail(where, f"a {name} while a {self.part} part is open")
            if data.get("text") != self.buf:
                self.fail(where, "the done text is not its deltas' concatenation")
            self.text_done = True
        elif name == "response.content_part.done":
            self.where_open(where, data, True)
            if self.state != "part" or not self.text_done:
                self.fail(where, "content_part.done before its text is done")
            if data["part"].get("type") != self.part or data["part"].get("text") != self.buf:
                self.fail(where, "content_part.done carries the part's whole text")
            self.parts.append(self.buf)
            self.state, self.part = "item", None
        elif name in ("response.function_call_arguments.delta", "response.function_call_arguments.done"):
            self.where_open(where, data, False)
            if self.state != "item" or self.item["type"] != "function_call" or self.args_done:  # type: ignore[index]
                self.fail(where, "arguments events belong to an open function_call item")
            if name.endswith("delta"):
                self.buf += data["delta"]
            else:
                if data.get("arguments") != self.buf:
                    self.fail(where, "the done arguments are not their deltas' concatenation")
                self.args_done = True
        elif name == "response.output_item.done":
            self.item_done(where, data)
        else:
            self.fail(where, "unknown event")

    def added(self, where: str, data: dict[str, Any]) -> None:
        if self.state != "between":
            self.fail(where, "an item may be added only when none is open")
        item = data.get("item") or {}
        if data.get("output_index") != len(self.items):
            self.fail(where, f"output_index {data.get('output_index')} where {len(self.items)} is next")
        if item.get("type") not in _ITEM_KINDS or not isinstance(item.get("id"), str):
            self.fail(where, f"unknown item type {item.get('type')!r} or no id")
        if item.get("status") != "in_progress":
            self.fail(where, "an added item is in progress")
        if item["id"] in {i["id"] for i in self.items}:
            self.fail(where, "an item id is used twice")
        if item["type"] == "function_call" and (item.get("arguments") != "" or not item.get("call_id")):
            self.fail(where, "an added function_call has a call_id and no arguments yet")
        if item["type"] != "function_call" and item.get("content") != []:
            self.fail(where, "an added item has no content yet")
        self.item, self.parts, self.buf, self.args_done = item, [], "", False
        self.state = "item"

    def part_added(self, where: str, data: dict[str, Any]) -> None:
        self.where_open(where, data, True)
        kind = _ITEM_KINDS.get(self.item["type"])  # type: ignore[index]
        part = data.get("part") or {}
        if self.state != "item" or kind is None or part.get("type") != kind or part.get("text") != "":
            self.fail(where, f"a {part.get('type')} part cannot open in a {self.item['type']} item here")  # type: ignore[index]
        self.state, self.part, self.buf, self.text_done = "part", kind, "", False

    def item_done(self, where: str, data: dict[str, Any]) -> None:
        if self.state != "item":
            self.fail(where, "output_item.done with a part open or no item open")
        item = data.get("item") or {}
        added = self.item
        if data.get("output_index") != len(self.items) or item.get("id") != added["id"] or item.get("type") != added["type"]:  # type: ignore[index]
            self.fail(where, "output_item.done names another item than the open one")
        if item.get("status") not in ("completed", "incomplete"):
            self.fail(where, "a done item is completed or incomplete")
        if item["type"] == "function_call":
            if not self.args_done or item.get("arguments") != self.buf or item.get("call_id") != added.get("call_id"):  # type: ignore[union-attr]
                self.fail(where, "a done call carries its whole arguments, after function_call_arguments.done")
            if item["status"] == "completed":
                try:
                    parsed = json.loads(self.buf)
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    self.fail(where, "a completed call's arguments are not a JSON object")
        elif [p.get("text") for p in item.get("content", [])] != self.parts:
            self.fail(where, "a done item carries the text of its parts")
        self.items.append(item)
        self.item, self.state = None, "between"

    def end(self, where: str, name: str, data: dict[str, Any]) -> None:
        resp = self.lifecycle(where, name, data)
        if resp.get("status") != _ENDS[name]:
            self.fail(where, f"{name} carries status {resp.get('status')!r}")
        if name == "response.failed":
            error = resp.get("error") or {}
            if not (isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
                self.fail(where, "a failed Response carries error.code and error.message")
            if [i["id"] for i in resp["output"][:len(self.items)]] != [i["id"] for i in self.items]:
                self.fail(where, "the failed Response lists the items done so far")
        else:
            if self.state != "between":
                self.fail(where, f"{name} with an item still open")
            if resp.get("output") != self.items:
                self.fail(where, "the final Response's output is the items done, in order")
            use = resp.get("usage") or {}
            if not all(isinstance(use.get(k), int) for k in ("input_tokens", "output_tokens", "total_tokens")):
                self.fail(where, f"{name} carries usage")
            if name == "response.incomplete" and not (resp.get("incomplete_details") or {}).get("reason"):
                self.fail(where, "an incomplete Response says why")
        self.state, self.ended = "done", name


def validate(events: list[Event]) -> str:
    """Run the state machine; returns how the stream ended (``response.completed``,
    ``response.incomplete``, ``response.failed`` or ``error``)."""
    machine = _Machine()
    for n, (name, data) in enumerate(events):
        machine.step(n, name, data)
    if machine.state != "done":
        raise GrammarError(f"the stream ended in state {machine.state}, without a closing event")
    return machine.ended
