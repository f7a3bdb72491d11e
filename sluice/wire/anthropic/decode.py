"""A Messages request decoded into the pipeline's chat request, by the rules of the table below.

| Messages                                  | chat completions                                          |
|-------------------------------------------|-----------------------------------------------------------|
| ``system`` (string or text blocks)        | a first ``system`` message; blocks joined by a blank line |
| user text / image blocks                  | content parts ``text`` / ``image_url`` (base64: data URL) |
| user ``tool_result``                      | a ``tool`` message with ``tool_call_id``, before the rest |
| assistant text blocks                     | ``content``, joined by a blank line                       |
| assistant ``tool_use``                    | ``tool_calls``; arguments: canonical JSON of ``input``    |
| ``tools`` (custom)                        | ``function`` tools; ``input_schema`` as ``parameters``    |
| ``tool_choice`` auto / any / tool / none  | ``auto`` / ``required`` / ``{"type":"function",...}`` / ``none`` |
| ``disable_parallel_tool_use``             | ``parallel_tool_calls: false``                            |
| ``stop_sequences``                        | ``stop`` (at most 4, as chat allows)                      |
| ``max_tokens``, ``temperature``, ``top_p``| the same names                                            |
| ``top_k``                                 | ``top_k`` when the request type takes it (vLLM), else dropped |
| ``metadata.user_id``                      | ``user``                                                  |
| ``stream``                                | ``stream`` with ``stream_options.include_usage``          |

Everything else is dropped by a rule of ``dropped.DROP_RULES`` and reported in ``Translated.dropped``.
A ``tool_result`` must answer a ``tool_use`` of an earlier assistant turn: otherwise a 400.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
from msgspec import UNSET

from sluice.core.errors import InvalidRequest
from sluice.core.wire import ChatCompletionRequest, Message, StreamOptions

from ..dropped import Dropped
from .dropped import DROP_RULES
from .errors import invalid, not_json
from .schema import (
    Block,
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingEnabled,
    Tool,
    ToolChoice,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)

MAX_STOP = 4  # chat's bound on ``stop``
_request_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)
_canonical = msgspec.json.Encoder(order="sorted")


class Translated(NamedTuple):
    """A decoded Messages request: the chat request it became, and the features dropped on the way."""

    request: ChatCompletionRequest
    dropped: list[str]
    source: MessagesRequest


def _typed(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise not_json() from None


def parse(body: bytes) -> MessagesRequest:
    """The typed Messages request of a body, or an ``InvalidRequest`` that quotes nothing of it."""
    return _typed(_request_decoder, body)


def parse_count(body: bytes) -> CountTokensRequest:
    """The typed ``count_tokens`` request of a body, or an ``InvalidRequest``."""
    return _typed(_count_decoder, body)


def decode(body: bytes, request_type: type[ChatCompletionRequest] = ChatCompletionRequest) -> Translated:
    """A Messages body as the chat request ``request_type`` (a model's wider type takes ``top_k``)."""
    return to_chat(parse(body), request_type)


def to_chat(req: MessagesRequest, request_type: type[ChatCompletionRequest] = ChatCompletionRequest) -> Translated:
    """The chat request of a typed Messages request, with the features it dropped."""
    dropped = Dropped(DROP_RULES)
    fields: dict[str, Any] = {
        "model": req.model,
        "messages": chat_messages(req.system, req.messages, dropped),
        "max_tokens": req.max_tokens,
    }
    tools = chat_tools(req.tools, dropped)
    if tools:
        fields["tools"] = tools
        if req.tool_choice is not UNSET:
            fields.update(_tool_choice(req.tool_choice))
    elif isinstance(req.tool_choice, ToolChoiceTool | ToolChoiceAny):
        raise InvalidRequest("tool_choice: names a tool, but no tools are offered")
    if req.stop_sequences is not UNSET and req.stop_sequences:
        if len(req.stop_sequences) > MAX_STOP:
            raise InvalidRequest(f"stop_sequences: at most {MAX_STOP} are supported by this model's upstream")
        fields["stop"] = req.stop_sequences
    if req.temperature is not UNSET:
        fields["temperature"] = req.temperature
    if req.top_p is not UNSET:
        fields["top_p"] = req.top_p
    if req.top_k is not UNSET:
        if "top_k" in request_type.__struct_fields__:
            fields["top_k"] = req.top_k
        else:
            dropped.add("top_k")
    if req.metadata is not UNSET and isinstance(req.metadata.user_id, str):
        fields["user"] = req.metadata.user_id
    if req.stream:
        fields["stream"] = True
        fields["stream_options"] = StreamOptions(include_usage=True)  # usage arrives only at the end
    if isinstance(req.thinking, ThinkingEnabled | ThinkingAdaptive):
        dropped.add("thinking")
    for name in ("service_tier", "container", "mcp_servers", "context_management"):
        if getattr(req, name) is not UNSET:
            dropped.add(name)
    return Translated(request_type(**fields), dropped.names, req)


def count_messages(req: CountTokensRequest) -> tuple[list[Message], list[dict[str, Any]], list[str]]:
    """The chat messages and tools of a ``count_tokens`` request (what the estimator counts), and what was dropped."""
    dropped = Dropped(DROP_RULES)
    messages = chat_messages(req.system, req.messages, dropped)
    return messages, chat_tools(req.tools, dropped), dropped.names


def chat_messages(system: str | list[TextBlock] | Any, messages: list[MessageParam], dropped: Dropped) -> list[Message]:
    """The chat messages of a system prompt and a Messages conversation."""
    out: list[Message] = []
    if isinstance(system, str):
        out.append(Message(role="system", content=system))
    elif isinstance(system, list) and system:
        out.append(Message(role="system", content=_joined(system, dropped)))
    called: set[str] = set()  # tool_use ids of the assistant turns so far
    for m in messages:
        if isinstance(m.content, str):
            out.append(Message(role=m.role, content=m.content))
        elif m.role == "assistant":
            out.append(_assistant(m.content, called, dropped))
        else:
            out.extend(_user(m.content, called, dropped))
    return out


def chat_tools(tools: list[Tool] | Any, dropped: Dropped) -> list[dict[str, Any]]:
    """The chat ``function`` tools of the custom tools; server tools are dropped."""
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools or ()):
        if tool.type is not UNSET and tool.type != "custom":
            dropped.add("server_tools")
            continue
        if tool.input_schema is UNSET:
            raise InvalidRequest(f"tools.{i}.input_schema: Field required")
        if tool.cache_control:
            dropped.add("cache_control")
        fn: dict[str, Any] = {"name": tool.name}
        if tool.description is not UNSET:
            fn["description"] = tool.description
        fn["parameters"] = tool.input_schema
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(choice, ToolChoiceNone):
        return {"tool_choice": "none"}
    if isinstance(choice, ToolChoiceTool):
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = "required" if isinstance(choice, ToolChoiceAny) else "auto"
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def _joined(blocks: list[TextBlock], dropped: Dropped) -> str:
    for b in blocks:
        _note(b, dropped)
    return "\n\n".join(b.text for b in blocks)


def _note(block: TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, dropped: Dropped) -> None:
    if block.cache_control:
        dropped.add("cache_control")
    if isinstance(block, TextBlock) and block.citations:
        dropped.add("citations")


def _image_part(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    url = src.url if not hasattr(src, "data") else f"data:{src.media_type};base64,{src.data}"  # type: ignore[union-attr]
    return {"type": "image_url", "image_url": {"url": url}}


def _assistant(blocks: list[Block], called: set[str], dropped: Dropped) -> Message:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in blocks:
        if isinstance(b, TextBlock):
            _note(b, dropped)
            texts.append(b.text)
        elif isinstance(b, ToolUseBlock):
            _note(b, dropped)
            called.add(b.id)
            calls.append({"id": b.id, "type": "function",
                          "function": {"name": b.name, "arguments": _canonical.encode(b.input).decode()}})
        elif isinstance(b, ThinkingBlock | RedactedThinkingBlock):
            dropped.add("thinking_blocks")
        else:
            raise InvalidRequest(f"an assistant message cannot carry a {type(b).__struct_config__.tag} block")
    msg = Message(role="assistant", content="\n\n".join(texts) if texts else None)
    if calls:
        msg.tool_calls = calls
    return msg


def _user(blocks: list[Block], called: set[str], dropped: Dropped) -> list[Message]:
    """A user turn: its tool results first (chat wants them right after the calls), then the rest."""
    results: list[Message] = []
    parts: list[dict[str, Any]] = []
    for b in blocks:
        if isinstance(b, ToolResultBlock):
            if b.tool_use_id not in called:
                raise InvalidRequest("tool_result: tool_use_id names no tool_use of an earlier assistant turn")
            results.append(_tool_message(b, dropped))
        elif isinstance(b, TextBlock):
            _note(b, dropped)
            parts.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            _note(b, dropped)
            parts.append(_image_part(b))
        else:
            raise InvalidRequest(f"a user message cannot carry a {type(b).__struct_config__.tag} block")
    if parts or not results:
        results.append(Message(role="user", content=parts))
    return results


def _tool_message(block: ToolResultBlock, dropped: Dropped) -> Message:
    _note(block, dropped)
    if block.is_error:
        dropped.add("tool_result.is_error")
    content = block.content
    if content is UNSET:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        texts = []
        for part in content:
            _note(part, dropped)
            if isinstance(part, TextBlock):
                texts.append(part.text)
            else:
                dropped.add("tool_result.image")
        text = "\n\n".join(texts)
    return Message(role="tool", content=text, tool_call_id=block.tool_use_id)
