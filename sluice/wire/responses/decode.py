"""A Responses request decoded into the pipeline's chat request, by the rules of the table below.

| Responses                                     | chat completions                                        |
|-----------------------------------------------|---------------------------------------------------------|
| ``instructions``                              | a first ``system`` message                              |
| ``history`` (the chain's earlier items)       | translated as ``input`` is, before it                   |
| ``input`` a string                            | one ``user`` message                                    |
| ``system`` / ``developer`` message items      | ``system`` messages; text parts joined by a blank line  |
| ``user`` message: ``input_text`` / ``input_image`` | content parts ``text`` / ``image_url`` (``detail`` kept; ``original`` is ``high``) |
| ``assistant`` message: ``output_text`` parts  | ``content``, the parts concatenated; ``refusal`` parts: ``refusal`` |
| consecutive ``function_call`` items           | ``tool_calls`` of one assistant message (the one just before, if any) |
| ``function_call_output``                      | a ``tool`` message with ``tool_call_id``; text parts joined by a blank line |
| ``reasoning`` items                           | dropped (``reasoning_items``): chat has no place for them |
| ``tools`` (``function``)                      | ``function`` tools: ``name``, ``description``, ``parameters``, ``strict`` |
| ``tools`` (OpenAI's hosted tools)             | dropped (``hosted_tools``)                              |
| ``tool_choice`` auto / none / required / function | the same / ``{"type":"function","function":{"name"}}`` |
| ``parallel_tool_calls``                       | the same, when function tools are offered               |
| ``text.format`` json_schema / json_object     | ``response_format`` json_schema ``{name, schema, strict, description}`` / json_object |
| ``text.verbosity``                            | ``verbosity``                                           |
| ``reasoning.effort``                          | ``reasoning_effort``                                    |
| ``max_output_tokens``                         | ``max_tokens``                                          |
| ``temperature``, ``top_p``, ``user``, ``prompt_cache_key``, ``safety_identifier`` | the same names    |
| ``stream``                                    | ``stream`` with ``stream_options.include_usage``        |
| ``store``, ``metadata``, ``previous_response_id`` | not sent: the gateway's own (it stores, and resolves chains into ``history``) |

Dropped by a rule of ``dropped.DROP_RULES`` and reported in ``Translated.dropped``: ``reasoning``
items, ``reasoning.summary``/``generate_summary``/``context``/``mode``, ``include``, hosted tools,
images in a ``function_call_output``, annotations and ``phase`` of earlier assistant messages,
``prompt_cache_breakpoint``, ``truncation: auto``, ``service_tier``, ``stream_options``,
``max_tool_calls``, ``top_logprobs``, ``prompt_cache_retention``, ``prompt_cache_options``,
``context_management``, ``image``, ``access_programs`` and Codex's ``client_metadata``.

Refused (400, ``param`` naming the field), by ``parse``: ``background: true``, ``background_options``,
``conversation``, ``prompt``, ``moderation``, ``item_reference`` items, ``input_file`` parts,
images by ``file_id`` or without ``image_url``, images or output parts in a system or developer
message, output parts in a user message, input images in an assistant message. By ``to_chat``:
a ``function_call_output`` whose ``call_id`` answers no earlier ``function_call`` (of the history or
the input), a ``tool_choice`` that needs a function tool when none is offered or names one that is
not, and an empty conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
from msgspec import UNSET

from sluice.core.errors import GatewayError, InvalidRequest
from sluice.core.ids import unique_id
from sluice.core.wire import ChatCompletionRequest, Message, StreamOptions

from ..dropped import Dropped
from .dropped import DROP_RULES
from .errors import invalid, not_json, refused
from .schema import (
    FormatJsonObject,
    FormatJsonSchema,
    FunctionCall,
    FunctionCallOutput,
    InputFile,
    InputImage,
    InputText,
    Item,
    ItemReference,
    MessageItem,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
    ToolChoiceFunction,
    is_hosted,
)

_decoder = msgspec.json.Decoder(ResponsesRequest)
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
# Features that change what the answer is, refused rather than dropped: field -> why.
REFUSED: dict[str, str] = {
    "background_options": "background responses are not served; send the request without background",
    "conversation": "conversations are not stored here; chain responses with previous_response_id",
    "prompt": "stored prompt templates live at OpenAI; send the instructions and input themselves",
    "moderation": "moderation is sluice's guard policy, not a request option",
}


class Translated(NamedTuple):
    """A decoded Responses request: the chat request it became, and the features dropped on the way."""

    request: ChatCompletionRequest
    dropped: list[str]


def parse(body: bytes) -> ResponsesRequest:
    """The typed Responses request of a body, or an ``InvalidRequest`` that quotes nothing of it
    and whose ``param`` names the field. Features sluice does not serve are refused here."""
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        req = _untyped_messages(body, exc)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise not_json() from None
    _refuse_unserved(req)
    return req


def _untyped_messages(body: bytes, first: msgspec.ValidationError) -> ResponsesRequest:
    """The request again, after giving the message items that left out ``type`` (as the SDK's
    EasyInputMessage may) their type; the first error if there were none such."""
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # pragma: no cover - the typed decode read it
        raise not_json() from None
    items = raw.get("input") if isinstance(raw, dict) else None
    filled = False
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and "type" not in item and "role" in item:
            item["type"] = "message"
            filled = True
    if not filled:
        raise invalid(first) from None
    try:
        return msgspec.convert(raw, ResponsesRequest)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None


def _refuse_unserved(req: ResponsesRequest) -> None:
    if req.background:
        raise refused("background", "background responses are not served; send the request without background")
    for name, why in REFUSED.items():
        if getattr(req, name) not in (UNSET, None):
            raise refused(name, why)
    _check_items(req.input if isinstance(req.input, list) else (), "input")


def _check_items(items: Sequence[Any], name: str) -> None:
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        if isinstance(item, ItemReference):
            raise refused(f"{where}.type", "item references are not resolved; send the item itself")
        if isinstance(item, MessageItem) and isinstance(item.content, list):
            for j, part in enumerate(item.content):
                _check_part(item.role, part, f"{where}.content[{j}]")
        elif isinstance(item, FunctionCallOutput) and isinstance(item.output, list):
            for j, part in enumerate(item.output):
                _check_part("tool", part, f"{where}.output[{j}]")


def _check_part(role: str, part: Any, where: str) -> None:
    if isinstance(part, InputFile):
        raise refused(f"{where}.type", "file inputs are not served; send the text")
    if isinstance(part, InputImage):
        if part.file_id not in (UNSET, None):
            raise refused(f"{where}.file_id", "files are not stored here; send the image as image_url")
        if not part.image_url:
            raise InvalidRequest(f"Missing required parameter: '{where}.image_url'.",
                                 code="missing_required_parameter", param=f"{where}.image_url")
    if role in ("system", "developer") and not isinstance(part, InputText):
        raise InvalidRequest(f"Invalid value for '{where}.type': a {role} message carries input_text only.",
                             code="invalid_value", param=f"{where}.type")
    if role == "user" and isinstance(part, OutputText | Refusal):
        raise InvalidRequest(f"Invalid value for '{where}.type': a user message carries input parts only.",
                             code="invalid_value", param=f"{where}.type")
    if role == "assistant" and isinstance(part, InputImage):
        raise InvalidRequest(f"Invalid value for '{where}.type': an assistant message carries text only.",
                             code="invalid_value", param=f"{where}.type")


# Input items as stored ---------------------------------------------------------------------


def item_id(kind: str) -> str:
    """A fresh id for an item of ``kind`` (``msg_…``, ``fc_…``, ``fco_…``, ``rs_…``)."""
    return unique_id(_ID_PREFIX.get(kind, "item"))


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as Responses items, the way ``GET /v1/responses/{id}/input_items`` lists
    them: a string input is one user message; message content is a list of parts; every item has
    an ``id`` (the caller's, or a fresh one) and a ``status``. ``to_chat`` reads them back as history."""
    if isinstance(req.input, str):
        return [{"id": item_id("message"), "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": req.input}]}]
    out: list[dict[str, Any]] = []
    for item in req.input or ():
        d = msgspec.to_builtins(item)
        d.setdefault("id", item_id(d["type"]))
        if isinstance(item, MessageItem):
            assistant = item.role == "assistant"
            content = [{"type": "output_text" if assistant else "input_text", "text": item.content}] \
                if isinstance(item.content, str) else d["content"]
            for part in content:
                if part["type"] in ("output_text", "input_text") and assistant:
                    part["type"] = "output_text"
                    part.setdefault("annotations", [])
            d["content"] = content
        if not isinstance(item, ReasoningItem):
            d.setdefault("status", "completed")
        out.append(d)
    return out


_history_type = list[Item]  # type: ignore[valid-type]


def _stored(history: Sequence[dict[str, Any]]) -> list[Any]:
    try:
        items = msgspec.convert(list(history), _history_type)
        _check_items(items, "history")
    except (msgspec.ValidationError, InvalidRequest):
        raise GatewayError("A stored item of the previous response could not be read.", status=500) from None
    return items


# The translation -----------------------------------------------------------------------------


def to_chat(req: ResponsesRequest, history: Sequence[dict[str, Any]] = (),
            chat_type: type[ChatCompletionRequest] = ChatCompletionRequest) -> Translated:
    """The chat request of a typed Responses request whose chain's earlier items (inputs and
    outputs, in order, as ``input_items`` and the encoders give them) are ``history``."""
    dropped = Dropped(DROP_RULES)
    earlier = _stored(history) if history else []
    items = [MessageItem(role="user", content=req.input)] if isinstance(req.input, str) else list(req.input or ())
    messages: list[Message] = []
    if req.instructions:
        messages.append(Message(role="system", content=req.instructions))
    messages.extend(chat_messages([*earlier, *items], len(earlier), dropped))
    if not messages:
        raise InvalidRequest("Missing required parameter: 'input'.", code="missing_required_parameter", param="input")
    fields: dict[str, Any] = {"model": req.model, "messages": messages}
    _tools(req, fields, dropped)
    _options(req, fields, dropped)
    return Translated(chat_type(**fields), dropped.names)


def chat_messages(items: list[Any], first_input: int, dropped: Dropped) -> list[Message]:
    """The chat messages of Responses items; ``items[first_input:]`` are the request's own input
    (an error names them as ``input[i]``)."""
    out: list[Message] = []
    called: set[str] = set()  # call ids of the function calls so far
    joinable = False  # whether out[-1] is an assistant message the next function calls belong to
    for i, item in enumerate(items):
        if isinstance(item, MessageItem):
            if item.phase not in (UNSET, None):
                dropped.add("message.phase")
            if item.role == "assistant":
                out.append(_assistant(item.content, dropped))
            elif item.role == "user":
                out.append(Message(role="user", content=_user(item.content, dropped)))
            else:
                out.append(Message(role="system", content=_system(item.content, dropped)))
            joinable = item.role == "assistant"
        elif isinstance(item, FunctionCall):
            called.add(item.call_id)
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            if joinable:
                last = out[-1]
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                out.append(Message(role="assistant", content=None, tool_calls=[call]))
                joinable = True
        elif isinstance(item, FunctionCallOutput):
            if item.call_id not in called:
                where = f"input[{i - first_input}].call_id" if i >= first_input else "previous_response_id"
                raise InvalidRequest(f"Invalid value for '{where}': it answers no function_call of an earlier item.",
                                     code="invalid_value", param=where)
            out.append(Message(role="tool", content=_tool_output(item.output, dropped), tool_call_id=item.call_id))
            joinable = False
        elif isinstance(item, ReasoningItem):
            dropped.add("reasoning_items")
    return out


def _note(part: Any, dropped: Dropped) -> None:
    if getattr(part, "prompt_cache_breakpoint", UNSET) is not UNSET:
        dropped.add("prompt_cache_breakpoint")


def _image(part: InputImage) -> dict[str, Any]:
    image: dict[str, Any] = {"url": part.image_url}
    if part.detail is not UNSET:
        image["detail"] = "high" if part.detail == "original" else part.detail
    return {"type": "image_url", "image_url": image}


def _user(content: Any, dropped: Dropped) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        _note(part, dropped)
        parts.append({"type": "text", "text": part.text} if isinstance(part, InputText) else _image(part))
    return parts


def _system(content: Any, dropped: Dropped) -> str:
    if isinstance(content, str):
        return content
    for part in content:
        _note(part, dropped)
    return "\n\n".join(part.text for part in content)


def _assistant(content: Any, dropped: Dropped) -> Message:
    if isinstance(content, str):
        return Message(role="assistant", content=content)
    texts: list[str] = []
    refusals: list[str] = []
    for part in content:
        _note(part, dropped)
        if isinstance(part, Refusal):
            refusals.append(part.refusal)
            continue
        if isinstance(part, OutputText) and part.annotations:
            dropped.add("output_text.annotations")
        texts.append(part.text)
    msg = Message(role="assistant", content="".join(texts) if texts else None)
    if refusals:
        msg.refusal = "".join(refusals)
    return msg


def _tool_output(output: Any, dropped: Dropped) -> str:
    if isinstance(output, str):
        return output
    texts: list[str] = []
    for part in output:
        _note(part, dropped)
        if isinstance(part, InputText):
            texts.append(part.text)
        else:
            dropped.add("function_call_output.image")
    return "\n\n".join(texts)


def _tools(req: ResponsesRequest, fields: dict[str, Any], dropped: Dropped) -> None:
    tools: list[dict[str, Any]] = []
    for tool in req.tools or ():
        if is_hosted(tool):
            dropped.add("hosted_tools")
            continue
        fn: dict[str, Any] = {"name": tool.name}
        for name in ("description", "parameters", "strict"):
            value = getattr(tool, name)
            if value not in (UNSET, None):
                fn[name] = value
        tools.append({"type": "function", "function": fn})
    choice = req.tool_choice
    if not tools:
        if choice == "required" or isinstance(choice, ToolChoiceFunction):
            raise InvalidRequest("Invalid value for 'tool_choice': it needs a function tool, and none is offered.",
                                 code="invalid_value", param="tool_choice")
        return
    fields["tools"] = tools
    if isinstance(choice, ToolChoiceFunction):
        if not any(t["function"]["name"] == choice.name for t in tools):
            raise InvalidRequest("Invalid value for 'tool_choice.name': it names no function tool of the request.",
                                 code="invalid_value", param="tool_choice.name")
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not UNSET:
        fields["tool_choice"] = choice
    if req.parallel_tool_calls not in (UNSET, None):
        fields["parallel_tool_calls"] = req.parallel_tool_calls


def _set(value: Any) -> bool:
    return value is not UNSET and value is not None


def _options(req: ResponsesRequest, fields: dict[str, Any], dropped: Dropped) -> None:
    for name, chat_name in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                            ("user", "user"), ("prompt_cache_key", "prompt_cache_key"),
                            ("safety_identifier", "safety_identifier")):
        value = getattr(req, name)
        if _set(value):
            fields[chat_name] = value
    text = req.text
    if _set(text):
        fmt = text.format
        if isinstance(fmt, FormatJsonSchema):
            schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
            if _set(fmt.strict):
                schema["strict"] = fmt.strict
            if fmt.description is not UNSET:
                schema["description"] = fmt.description
            fields["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif isinstance(fmt, FormatJsonObject):
            fields["response_format"] = {"type": "json_object"}
        if _set(text.verbosity):
            fields["verbosity"] = text.verbosity
    reasoning = req.reasoning
    if _set(reasoning):
        if _set(reasoning.effort):
            fields["reasoning_effort"] = reasoning.effort
        if _set(reasoning.summary) or _set(reasoning.generate_summary):
            dropped.add("reasoning.summary")
        for name in ("context", "mode"):
            if _set(getattr(reasoning, name)):
                dropped.add(f"reasoning.{name}")
    if req.stream:
        fields["stream"] = True
        fields["stream_options"] = StreamOptions(include_usage=True)  # usage arrives only at the end
    if req.include:
        dropped.add("include")
    if req.truncation == "auto":
        dropped.add("truncation")
    for name in ("service_tier", "stream_options", "max_tool_calls", "top_logprobs", "prompt_cache_retention",
                 "prompt_cache_options", "context_management", "image", "access_programs", "client_metadata"):
        if _set(getattr(req, name)):
            dropped.add(name)
