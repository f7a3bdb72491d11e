"""Every text a chat request carries upstream, for the input detectors: found, scanned, masked in place.

Scanned, by the param a refusal names:
  messages[i].content                 a string; or its text parts scanned as one joined text (a secret
                                      split across parts is found), masked in each part it spans:
                                      a refusal names the part where the finding begins,
                                      messages[i].content[j].text
  messages[i].name, messages[i].refusal
  messages[i].tool_calls[k].function.arguments (as JSON: masked inside its strings, so it stays JSON),
  messages[i].tool_calls[k].custom.input, messages[i].function_call.arguments (legacy)
  prediction.content                  like a message's content
  tools[k].function.<field>, tools[k].custom.<field>, functions[k].<field> (legacy): every field but
                                      the name (description, parameters, format)
  response_format, web_search_options, stop / stop[k], an extra parameter a model allows (vLLM's
                                      documents, chat_template_kwargs ...), by its name
  metadata.<key>, user, safety_identifier, prompt_cache_key, cache_salt: opaque ids, often hashes by
                                      design, so every kind but high_entropy
Not scanned: ids (tool_calls[k].id, tool_call_id, audio.id), tool and function names (identifiers the
tool registry judges), tool_choice, enums, numbers and flags, image URLs, audio and file data.

A legacy completion (``scan_completion``): ``prompt`` (a string) or ``prompt[k]``, ``suffix``, ``stop`` /
``stop[k]``, ``user`` (opaque), and an extra parameter its model allows; a prompt of token ids is no text
(``inputs.check_completion`` decides what happens to it).

On the hot path: a message with string content only, and a request with none of the other fields
(the common ones), cost one detector call per message and a few attribute reads (a message with
a finding is read again by the reader that names and masks it); a param's name is built only when
it has something to report.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from operator import attrgetter
from typing import Any

import msgspec

from ..core.wire import ChatCompletionRequest, CompletionRequest, Message
from .detectors import Detector, Finding, masked_json, masked_pieces, masked_text

Report = Callable[[list[Finding], str], None]  # findings of one param: recorded, or refused
_OPAQUE = ("user", "safety_identifier", "prompt_cache_key")
_OPAQUE_EXTRAS = frozenset({"cache_salt"})
_BASE_FIELDS = frozenset(ChatCompletionRequest.__struct_fields__)
_COMPLETION_FIELDS = frozenset(CompletionRequest.__struct_fields__)
# the request's text fields besides its messages, read in one call: all unset in the common request
_OTHER_TEXT = attrgetter("prediction", "tools", "functions", "stop", "metadata", "response_format",
                         "web_search_options", *_OPAQUE)


def scan_request(detector: Detector, req: ChatCompletionRequest, report: Report, mask: bool) -> ChatCompletionRequest:
    """``req`` with every finding masked when ``mask``, else ``req`` itself; ``report`` hears each field's findings."""
    find, s = detector.find, None
    messages = req.messages
    changed: list[Message] | None = None
    for i, m in enumerate(messages):
        c = m.content
        # the common message, string content only, read inline; any other goes through the reader
        if type(c) is str and not (m.name or m.refusal or m.tool_calls or m.function_call) and not find(c):
            continue
        s = s or _Scan(detector, report, mask)
        new = s.message(m, i)
        if new is not m:
            changed = changed or list(messages)
            changed[i] = new
    if type(req) is ChatCompletionRequest and not any(_OTHER_TEXT(req)):
        return req if changed is None else msgspec.structs.replace(req, messages=changed)
    fields: dict[str, Any] = {"messages": changed} if changed else {}
    _other_fields(s or _Scan(detector, report, mask), req, _extra_fields(type(req)), fields)
    return msgspec.structs.replace(req, **fields) if fields else req


def _other_fields(s: _Scan, req: ChatCompletionRequest, extras: tuple[str, ...], fields: dict[str, Any]) -> None:
    """The request's text fields besides its messages, each into ``fields`` when masked."""
    prediction = req.prediction
    if isinstance(prediction, dict) and prediction.get("content"):
        content = s.content(prediction["content"], "prediction.content")
        if content is not prediction["content"]:
            fields["prediction"] = {**prediction, "content": content}
    for name in ("tools", "functions"):
        defs = getattr(req, name)
        if defs:
            new = s.definitions(defs, name)
            if new is not defs:
                fields[name] = new
    s.texts(req.stop, "stop", fields)
    metadata = req.metadata
    if metadata:
        new_meta = {k: s.text(v, "metadata.{}", k, opaque=True) if isinstance(v, str) else v for k, v in metadata.items()}
        if any(new_meta[k] is not v for k, v in metadata.items()):
            fields["metadata"] = new_meta
    for name in _OPAQUE:
        value = getattr(req, name)
        if isinstance(value, str) and value:
            new = s.text(value, name, opaque=True)
            if new is not value:
                fields[name] = new
    for name in ("response_format", "web_search_options") + extras:
        value = getattr(req, name)
        if value:
            new = s.value(value, name, opaque=name in _OPAQUE_EXTRAS)
            if new is not value:
                fields[name] = new


def scan_completion(detector: Detector, req: CompletionRequest, report: Report, mask: bool) -> CompletionRequest:
    """A legacy completion with every finding in its texts masked when ``mask``, else ``req`` itself."""
    s = _Scan(detector, report, mask)
    fields: dict[str, Any] = {}
    s.texts(req.prompt, "prompt", fields)  # token ids pass as they are
    s.texts(req.suffix, "suffix", fields)
    s.texts(req.stop, "stop", fields)
    if isinstance(req.user, str) and req.user:
        new = s.text(req.user, "user", opaque=True)
        if new is not req.user:
            fields["user"] = new
    for name in _extra_fields(type(req)):
        value = getattr(req, name)
        if value:
            new = s.value(value, name, opaque=name in _OPAQUE_EXTRAS)
            if new is not value:
                fields[name] = new
    return msgspec.structs.replace(req, **fields) if fields else req


@lru_cache(maxsize=64)  # one request type per model and policy version: a handful
def _extra_fields(cls: type) -> tuple[str, ...]:
    """The parameters a model's ``extra_params`` added to the request type (none on the plain type)."""
    base = _COMPLETION_FIELDS if issubclass(cls, CompletionRequest) else _BASE_FIELDS
    return tuple(n for n in cls.__struct_fields__ if n not in base)  # type: ignore[attr-defined]


def _piece_at(pieces: list[str], at: int) -> int:
    """Which of the joined ``pieces`` holds position ``at``."""
    end = 0
    for n, piece in enumerate(pieces):
        end += len(piece)
        if at < end:
            return n
    return len(pieces) - 1


class _Scan:
    """One request's scan: each reader returns its value itself when nothing in it is masked.

    A ``param`` is a template its ``i`` and ``k`` fill in, formatted only when something is reported.
    """

    __slots__ = ("find", "find_json", "report", "mask")

    def __init__(self, detector: Detector, report: Report, mask: bool) -> None:
        self.find, self.find_json, self.report, self.mask = detector.find, detector.find_json, report, mask

    def found(self, text: str, opaque: bool, json: bool = False) -> list[Finding]:
        found = self.find_json(text) if json else self.find(text)
        if found and opaque:  # an opaque id is often a hash: random by design
            found = [f for f in found if f.kind != "high_entropy"]
        return found

    def text(self, text: str, param: str, i: Any = None, k: Any = None, opaque: bool = False) -> str:
        found = self.found(text, opaque)
        if not found:
            return text
        self.report(found, param.format(i, k))
        return masked_text(text, found) if self.mask else text

    def texts(self, value: Any, param: str, fields: dict[str, Any]) -> None:
        """A string, or a list whose strings are read one by one (``param[k]``), into ``fields`` when masked."""
        if isinstance(value, str) and value:
            new = self.text(value, param)
            if new is not value:
                fields[param] = new
        elif isinstance(value, list):
            news = [self.text(x, param + "[{}]", k) if isinstance(x, str) else x for k, x in enumerate(value)]
            if any(a is not b for a, b in zip(news, value)):
                fields[param] = news

    def json_text(self, text: str, param: str, i: Any = None, k: Any = None) -> str:
        """Text that is JSON (tool-call arguments): masked inside its strings, so it stays JSON."""
        found = self.find_json(text)
        if not found:
            return text
        self.report(found, param.format(i, k))
        return masked_json(text, found) if self.mask else text

    def value(self, value: Any, param: str, opaque: bool = False) -> Any:
        """A JSON value: a string read as text, an object or array as its JSON (masked, it stays JSON)."""
        if isinstance(value, str):
            return self.text(value, param, opaque=opaque)
        if not isinstance(value, (dict, list)):
            return value
        raw = msgspec.json.encode(value).decode()
        found = self.found(raw, opaque, json=True)
        if not found:
            return value
        self.report(found, param)
        return msgspec.json.decode(masked_json(raw, found)) if self.mask else value

    def content(self, content: Any, param: str, i: Any = None) -> Any:
        """A string, or parts whose texts are read as one: what the model reads as one text."""
        if isinstance(content, str):
            return self.text(content, param, i)
        if not isinstance(content, list):
            return content
        at = [j for j, p in enumerate(content) if p.get("type") == "text" and isinstance(p.get("text"), str)]
        if not at:
            return content
        texts = [content[j]["text"] for j in at]
        found = self.find(texts[0] if len(texts) == 1 else "".join(texts))
        if not found:
            return content
        self.report(found, f"{param.format(i)}[{at[_piece_at(texts, found[0].start)]}].text")
        if not self.mask:
            return content
        out = list(content)
        for j, old, new in zip(at, texts, masked_pieces(texts, found)):
            if new is not old:
                out[j] = {**content[j], "text": new}
        return out

    def message(self, m: Message, i: int) -> Message:
        c = m.content
        new_c = self.content(c, "messages[{}].content", i) if c else c
        if not (m.name or m.refusal or m.tool_calls or m.function_call):  # content only: the common message
            return m if new_c is c else msgspec.structs.replace(m, content=new_c)
        name, refusal, calls, legacy = m.name, m.refusal, m.tool_calls, m.function_call
        new_name = self.text(name, "messages[{}].name", i) if name else name
        new_refusal = self.text(refusal, "messages[{}].refusal", i) if refusal else refusal
        new_calls = self.calls(calls, i) if calls else calls
        new_legacy = legacy
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            args = self.json_text(legacy["arguments"], "messages[{}].function_call.arguments", i)
            if args is not legacy["arguments"]:
                new_legacy = {**legacy, "arguments": args}
        if new_c is c and new_name is name and new_refusal is refusal and new_calls is calls and new_legacy is legacy:
            return m
        return msgspec.structs.replace(m, content=new_c, name=new_name, refusal=new_refusal, tool_calls=new_calls,
                                       function_call=new_legacy)

    def calls(self, calls: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
        """An assistant turn's tool calls: function arguments (JSON) and custom tool input (text)."""
        out: list[dict[str, Any]] | None = None
        for k, call in enumerate(calls):
            for key, field in (("function", "arguments"), ("custom", "input")):
                body = call.get(key)
                value = body.get(field) if isinstance(body, dict) else None
                if not isinstance(value, str) or not value:
                    continue
                param = f"messages[{{}}].tool_calls[{{}}].{key}.{field}"
                new = self.json_text(value, param, i, k) if key == "function" else self.text(value, param, i, k)
                if new is not value:
                    out = out or list(calls)
                    out[k] = {**call, key: {**body, field: new}}  # type: ignore[dict-item]
        return out or calls

    def definitions(self, defs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
        """Tool (or legacy function) definitions: every field of each but its name."""
        out: list[dict[str, Any]] | None = None
        for k, d in enumerate(defs):
            if not isinstance(d, dict):
                continue
            key = d.get("type", "function") if name == "tools" else None
            body = d.get(key) if isinstance(key, str) else d if key is None else None
            if not isinstance(body, dict):
                continue
            prefix = f"{name}[{k}].{key}." if key is not None else f"{name}[{k}]."
            new_body = {f: v if f == "name" else self.value(v, prefix + f) for f, v in body.items()}
            if any(new_body[f] is not v for f, v in body.items()):
                out = out or list(defs)
                out[k] = {**d, key: new_body} if key is not None else new_body
        return out or defs
