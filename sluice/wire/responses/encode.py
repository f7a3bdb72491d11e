"""A whole chat completion encoded as a Response, and the pieces the stream encoder shares.

| chat completions                                 | Responses                                            |
|--------------------------------------------------|------------------------------------------------------|
| message ``reasoning_content`` (or ``reasoning``) | a ``reasoning`` item: ``content`` one ``reasoning_text``, ``summary`` empty |
| message ``content``                              | a ``message`` item with one ``output_text`` part (none when empty) |
| ``tool_calls``                                   | ``function_call`` items: ``call_id`` the chat call's id, ``arguments`` a JSON object (``""`` is ``{}``) |
| ``finish_reason`` stop / tool_calls              | ``status: completed``                                |
| ``finish_reason`` length / content_filter        | ``status: incomplete``, ``incomplete_details.reason`` max_output_tokens / content_filter; the last item ``incomplete`` |
| ``prompt_tokens``, ``cached_tokens``             | ``usage.input_tokens``, ``usage.input_tokens_details.cached_tokens`` |
| ``completion_tokens``, ``reasoning_tokens``      | ``usage.output_tokens``, ``usage.output_tokens_details.reasoning_tokens`` |

Output items are ordered reasoning, message, calls, and their ids derive from the response id
and their index (``msg_<response>_1``), so a whole reply and its stream give the same items.
Only the first choice is encoded (Responses has no ``n``); a chat ``refusal`` is not encoded.
Around the output, the Response echoes what the request asked for (model, instructions, tools,
tool_choice, text, reasoning, sampling, limits, ``store``, ``metadata``, ``previous_response_id``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from sluice.core.errors import UpstreamError
from sluice.core.ids import unique_id

from ..chat import Completion, Usage, completion_decoder
from .schema import FunctionTool, ResponsesRequest, ToolChoiceFunction

INCOMPLETE: dict[str, str] = {"length": "max_output_tokens", "content_filter": "content_filter"}
_args_decoder = msgspec.json.Decoder(dict[str, Any])


def response_id() -> str:
    """A fresh Response id: ``resp_`` and random hex."""
    return unique_id("resp")


def output_id(response: str, prefix: str, index: int) -> str:
    """The id of the output item at ``index`` of a response (``msg``, ``fc`` or ``rs`` items)."""
    return f"{prefix}_{response.removeprefix('resp_')}_{index}"


def usage(u: Usage | None, input_tokens: int = 0) -> dict[str, Any]:
    """The Response usage of a chat usage; without one, the caller's input estimate and no output."""
    prompt, completion, cached, reasoning = input_tokens, 0, 0, 0
    if u is not None:
        prompt, completion = u.prompt_tokens, u.completion_tokens
        cached = (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details is not None else 0
        details = u.completion_tokens_details
        reasoning = (details.reasoning_tokens or 0) if details is not None else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message item; ``text`` None is the empty item a stream opens with."""
    return {"id": id, "type": "message", "status": status, "role": "assistant",
            "content": [] if text is None else [output_text(text)]}


def reasoning_item(id: str, text: str | None, status: str) -> dict[str, Any]:
    return {"id": id, "type": "reasoning", "status": status, "summary": [],
            "content": [] if text is None else [{"type": "reasoning_text", "text": text}]}


def function_call_item(id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def checked_arguments(arguments: str) -> str:
    """A completed call's arguments: a JSON object (``""`` is ``{}``); anything else is the upstream's fault."""
    if not arguments:
        return "{}"
    try:
        _args_decoder.decode(arguments)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError("The upstream returned tool arguments that are not a JSON object.") from None
    return arguments


def _or(value: Any, default: Any) -> Any:
    return default if value is UNSET or value is None else value


def echo(req: ResponsesRequest) -> dict[str, Any]:
    """The fields of a Response that repeat its request (computed once per request)."""
    tools = [{"type": "function", **msgspec.to_builtins(t)} for t in req.tools or () if isinstance(t, FunctionTool)]
    for tool in tools:
        tool.setdefault("parameters", None)
        tool.setdefault("strict", None)
    choice = req.tool_choice
    text: dict[str, Any] = {"format": {"type": "text"}}
    if req.text not in (UNSET, None):
        text = msgspec.to_builtins(req.text)
        text.setdefault("format", {"type": "text"})
    reasoning = msgspec.to_builtins(req.reasoning) if req.reasoning not in (UNSET, None) else None
    out = {
        "model": req.model,
        "instructions": _or(req.instructions, None),
        "tools": tools,
        "tool_choice": msgspec.to_builtins(choice) if isinstance(choice, ToolChoiceFunction) else _or(choice, "auto"),
        "parallel_tool_calls": _or(req.parallel_tool_calls, True),
        "text": text,
        "reasoning": reasoning,
        "temperature": _or(req.temperature, None),
        "top_p": _or(req.top_p, None),
        "max_output_tokens": _or(req.max_output_tokens, None),
        "truncation": _or(req.truncation, "disabled"),
        "previous_response_id": _or(req.previous_response_id, None),
        "store": _or(req.store, True),
        "metadata": _or(req.metadata, {}),
        "user": _or(req.user, None),
        "background": False,
    }
    for name in ("prompt_cache_key", "safety_identifier"):
        value = getattr(req, name)
        if value not in (UNSET, None):
            out[name] = value
    return out


def response_object(*, id: str, echoed: dict[str, Any], created_at: int, status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None, error: dict[str, str] | None = None,
                    incomplete: str | None = None) -> dict[str, Any]:
    """A whole Response object."""
    return {"id": id, "object": "response", "created_at": created_at, "status": status, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None, **echoed, "output": output,
            "usage": usage}


def encode_response(chat_reply: bytes | Completion, *, id: str, request: ResponsesRequest, created_at: int) -> dict[str, Any]:
    """The Response of a whole chat completion (its JSON, or decoded)."""
    completion = completion_decoder.decode(chat_reply) if isinstance(chat_reply, bytes | bytearray | memoryview) else chat_reply
    if not completion.choices:
        raise UpstreamError("The upstream returned a completion without choices.")
    choice = completion.choices[0]
    msg = choice.message
    incomplete = INCOMPLETE.get(choice.finish_reason or "stop")
    output: list[dict[str, Any]] = []
    if msg is not None:
        if msg.thought:
            output.append(reasoning_item(output_id(id, "rs", len(output)), msg.thought, "completed"))
        if msg.content:
            output.append(message_item(output_id(id, "msg", len(output)), msg.content, "completed"))
        calls = msg.tool_calls or ()
        for k, call in enumerate(calls):
            fn = call.function
            arguments = (fn.arguments if fn else None) or ""
            if not (incomplete and k == len(calls) - 1):
                arguments = checked_arguments(arguments)
            output.append(function_call_item(output_id(id, "fc", len(output)), call.id or f"call_{k}",
                                             (fn.name if fn else None) or "", arguments, "completed"))
    if incomplete and output:
        output[-1]["status"] = "incomplete"
    return response_object(id=id, echoed=echo(request), created_at=created_at,
                           status="incomplete" if incomplete else "completed", output=output,
                           usage=usage(completion.usage), incomplete=incomplete)
