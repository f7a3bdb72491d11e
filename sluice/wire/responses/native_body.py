"""The body a Responses request is sent with to an upstream that serves the Responses API itself
(``api: responses``; vLLM does).

``native_body``: the caller's request re-encoded from its parsed struct. The gateway owns the state, so
the upstream is stateless to it: ``input`` is the whole conversation, the chain's items as they were
stored (ids included: reasoning items need theirs) followed by this request's own items, sent with
``store: false`` and no ``previous_response_id``. The model is the target's ``upstream_model``,
``max_output_tokens`` what the limits stage left (maybe clamped), ``stream`` as asked; the rest goes as
the caller sent it (``instructions``, ``reasoning`` with its summary, reasoning items of earlier turns,
``text``, ``truncation``, ``prompt_cache_*``, ``service_tier``...), except:

- what no chat upstream gets either and the gateway answers for itself (``metadata``: the stored
  response's, kept here), and what the answer could not carry back through the chat form the guard reads
  (``include``, ``top_logprobs``, ``stream_options``) or runs only at OpenAI (hosted tools and
  ``max_tool_calls``, ``context_management``, Codex's ``client_metadata``): dropped by the rule names
  of ``dropped.DROP_RULES`` and reported. A hosted tool would be a call the upstream makes on its own,
  never judged against the tool registry.
- Tools the input guard removed (not granted) stay removed, and a ``tool_choice`` it unset stays unset.
  When the guard rewrote anything else (a secret masked in the conversation or a tool's description, an
  opaque id), the guarded chat request is what goes: ``from_chat`` writes it in the Responses wire by the
  reverse of ``decode``'s table, so the features the chat form could not carry stay dropped for that
  request, as they would be on the translated path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET

from sluice.core.wire import ChatCompletionRequest

from ..dropped import Dropped
from ..native_body import Outbound, content_text, granted, tool_rewritten
from .dropped import DROP_RULES
from .schema import FunctionTool, MessageItem, ResponsesRequest, is_hosted

_encode = msgspec.json.encode
# fields of the request that go upstream by the guard's leave only (tools), or were changed after it on
# purpose (the limits' output bound): the others, untouched by the guard, are the very objects decoded
_NOT_TEXT = frozenset({"model", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens",
                       "stream", "stream_options"})
_DROPPED = ("include", "top_logprobs", "stream_options", "max_tool_calls", "context_management", "client_metadata")


def native_body(source: ResponsesRequest, history: Sequence[dict[str, Any]], translated: ChatCompletionRequest,
                guarded: ChatCompletionRequest, *, model: str, stream: bool) -> Outbound:
    """The body of a Responses request for its ``api: responses`` target (see the module's docstring)."""
    if rewritten(translated, guarded):
        return Outbound(_encode(from_chat(guarded, model=model, stream=stream,
                                          instructions=bool(source.instructions))), [], True)
    dropped = Dropped(DROP_RULES)
    changes: dict[str, Any] = {"model": model, "store": False, "previous_response_id": UNSET, "metadata": UNSET,
                               "stream": True if stream else UNSET}
    if type(guarded.max_tokens) is int:
        changes["max_output_tokens"] = guarded.max_tokens
    if history:
        own = [MessageItem(role="user", content=source.input)] if isinstance(source.input, str) else source.input or []
        changes["input"] = [*history, *own]
    for name in _DROPPED:
        if getattr(source, name) not in (UNSET, None):
            changes[name] = UNSET
            dropped.add(name)
    if source.tools not in (UNSET, None):
        tools = _kept_tools(source.tools, translated, guarded, dropped)
        changes["tools"] = tools or UNSET
        if not tools:
            changes["tool_choice"] = changes["parallel_tool_calls"] = UNSET
        elif guarded.tool_choice is UNSET and translated.tool_choice is not UNSET:
            changes["tool_choice"] = UNSET
    return Outbound(_encode(msgspec.structs.replace(source, **changes)), dropped.names, False)


def rewritten(translated: ChatCompletionRequest, guarded: ChatCompletionRequest) -> bool:
    """Whether the input guard changed more than which tools are offered (it masks by replacing the fields
    it changes, so an unchanged field is the very object the decode made)."""
    if guarded is translated:
        return False
    for name in guarded.__struct_fields__:
        if name not in _NOT_TEXT and getattr(guarded, name) is not getattr(translated, name):
            return True
    return tool_rewritten(translated, guarded)


def _kept_tools(tools: list[Any], translated: ChatCompletionRequest, guarded: ChatCompletionRequest,
                dropped: Dropped) -> list[FunctionTool]:
    """The caller's function tools the guard left offered; hosted tools never go."""
    allowed = granted(translated, guarded)
    kept = []
    for tool in tools:
        if is_hosted(tool):
            dropped.add("hosted_tools")
        elif allowed is None or tool.name in allowed:
            kept.append(tool)
    return kept


# The chat request in the Responses wire ------------------------------------------------------------------


def from_chat(req: ChatCompletionRequest, *, model: str, stream: bool, instructions: bool = False) -> dict[str, Any]:
    """A chat request as a stateless Responses body: the reverse of ``decode``'s table.

    The first system message is ``instructions`` when the request had them, other system messages are
    ``system`` message items; an assistant's content an ``assistant`` message, its ``tool_calls``
    ``function_call`` items; a tool message a ``function_call_output``; ``max_tokens`` is
    ``max_output_tokens``, ``response_format`` and ``verbosity`` are ``text``, ``reasoning_effort`` is
    ``reasoning.effort``.
    """
    body: dict[str, Any] = {"model": model}
    items: list[dict[str, Any]] = []
    messages = req.messages
    if instructions and messages and messages[0].role == "system":
        body["instructions"] = content_text(messages[0].content)
        messages = messages[1:]
    for m in messages:
        if m.role in ("system", "developer"):
            items.append({"type": "message", "role": "system", "content": content_text(m.content)})
        elif m.role == "tool":
            items.append({"type": "function_call_output", "call_id": m.tool_call_id or "",
                          "output": content_text(m.content)})
        elif m.role == "assistant":
            items.extend(_assistant(m))
        else:
            items.append({"type": "message", "role": "user", "content": _user(m.content)})
    body["input"] = items
    tools = [_tool(t["function"]) for t in req.tools or () if isinstance(t.get("function"), dict)]
    if tools:
        body["tools"] = tools
        choice = req.tool_choice
        if isinstance(choice, dict):
            fn = choice.get("function")
            body["tool_choice"] = {"type": "function", "name": str(fn.get("name") or "") if isinstance(fn, dict) else ""}
        elif isinstance(choice, str):
            body["tool_choice"] = choice
        if isinstance(req.parallel_tool_calls, bool):
            body["parallel_tool_calls"] = req.parallel_tool_calls
    text = _text_config(req)
    if text:
        body["text"] = text
    if isinstance(req.reasoning_effort, str):
        body["reasoning"] = {"effort": req.reasoning_effort}
    limit = req.max_completion_tokens or req.max_tokens
    if type(limit) is int:
        body["max_output_tokens"] = limit
    for name in ("temperature", "top_p", "user", "prompt_cache_key", "safety_identifier"):
        value = getattr(req, name)
        if value is not UNSET and value is not None:
            body[name] = value
    body["store"] = False
    if stream:
        body["stream"] = True
    return body


def _user(content: Any) -> str | list[dict[str, Any]]:
    if not isinstance(content, list):
        return content_text(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "input_text", "text": part["text"]})
        elif part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
            image = part["image_url"]
            got = {"type": "input_image", "image_url": str(image.get("url") or "")}
            if isinstance(image.get("detail"), str):
                got["detail"] = image["detail"]
            parts.append(got)
    return parts or ""


def _assistant(m: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    text = content_text(m.content)
    if text or m.refusal:
        parts: list[dict[str, Any]] = [{"type": "output_text", "text": text}] if text else []
        if m.refusal:
            parts.append({"type": "refusal", "refusal": m.refusal})
        out.append({"type": "message", "role": "assistant", "content": parts})
    for call in m.tool_calls or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out.append({"type": "function_call", "call_id": str(call.get("id") or ""), "name": str(fn.get("name") or ""),
                        "arguments": fn.get("arguments") if isinstance(fn.get("arguments"), str) else "{}"})
    return out


def _tool(fn: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"type": "function", "name": str(fn.get("name") or "")}
    for name in ("description", "parameters", "strict"):
        if fn.get(name) is not None:
            tool[name] = fn[name]
    return tool


def _text_config(req: ChatCompletionRequest) -> dict[str, Any]:
    text: dict[str, Any] = {}
    fmt = req.response_format
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            text["format"] = {"type": "json_schema", **fmt["json_schema"]}
        elif fmt.get("type") == "json_object":
            text["format"] = {"type": "json_object"}
    if isinstance(req.verbosity, str):
        text["verbosity"] = req.verbosity
    return text
