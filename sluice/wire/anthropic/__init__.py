"""The Anthropic Messages API (``/v1/messages``) as a wire adapter over the chat pipeline.

``decode`` turns a Messages body into the chat request (and the features it had to drop);
``encode_message`` turns a whole chat completion into a Messages reply; ``StreamEncoder``
re-encodes a chat stream in Anthropic's event grammar; ``error_body``/``error_status`` render
any ``GatewayError`` the way an Anthropic SDK expects it. For an upstream that speaks Anthropic's API
itself (``api: anthropic``): ``messages_body``/``count_body`` write what is sent to it, and ``native``
reads its answers into the chat form the pipeline governs (``chat_completion``, ``ChatEvents``), with
what that form cannot hold kept in a ``NativeAnswer``.
"""

from __future__ import annotations

from .decode import Translated, count_messages, decode, parse, parse_count, to_chat
from .dropped import DROP_RULES
from .encode import STOP_REASONS, encode_message, encode_message_bytes, message_id
from .errors import ERROR_TYPES, describe, error_body, error_bytes, error_event, error_reply, error_status, error_type
from .native import ChatEvents, NativeAnswer, chat_completion
from .native_body import DEFAULT_VERSION, Outbound, count_body, from_chat, messages_body
from .schema import CountTokensRequest, MessagesRequest
from .stream import StreamEncoder, ping

__all__ = [
    "DEFAULT_VERSION", "DROP_RULES", "ERROR_TYPES", "STOP_REASONS", "ChatEvents", "CountTokensRequest", "MessagesRequest",
    "NativeAnswer", "Outbound", "StreamEncoder", "Translated", "chat_completion", "count_body", "count_messages", "decode",
    "describe", "encode_message", "encode_message_bytes", "error_body", "error_bytes", "error_event", "error_reply",
    "error_status", "error_type", "from_chat", "message_id", "messages_body", "parse", "parse_count", "ping", "to_chat",
]
