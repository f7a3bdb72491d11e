"""The OpenAI Responses API (``/v1/responses``) as a wire adapter over the chat pipeline.

``parse`` reads a body into the typed request (refusing what sluice does not serve);
``input_items`` gives its input as stored items; ``to_chat`` turns it, after the chain's earlier
items, into the chat request (and the features it had to drop); ``encode_response`` turns a whole
chat completion into a Response; ``StreamEncoder`` re-encodes a chat stream in the Responses event
grammar; ``error_bytes`` renders any ``GatewayError`` in OpenAI's envelope. For an upstream that serves
the Responses API itself (``api: responses``): ``native_body`` writes what is sent to it (``from_chat``
when the input guard rewrote the request), and ``native`` reads its answers into the chat form the
pipeline governs (``native_chat_completion``, ``NativeEvents``).
"""

from __future__ import annotations

from .decode import REFUSED, Translated, input_items, item_id, parse, to_chat
from .dropped import DROP_RULES
from .encode import INCOMPLETE, encode_response, response_id
from .errors import error_bytes, failure
from .native import ChatEvents as NativeEvents
from .native import chat_completion as native_chat_completion
from .native_body import Outbound, from_chat, native_body
from .schema import ResponsesRequest
from .stream import StreamEncoder

__all__ = [
    "DROP_RULES", "INCOMPLETE", "REFUSED", "NativeEvents", "Outbound", "ResponsesRequest", "StreamEncoder", "Translated",
    "encode_response", "error_bytes", "failure", "from_chat", "input_items", "item_id", "native_body",
    "native_chat_completion", "parse", "response_id", "to_chat",
]
