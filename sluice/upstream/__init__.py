"""Model backends: the transport interface, the OpenAI-compatible transport, SSE relay, usage."""

from .base import Transport, UpstreamReply, UpstreamStream
from .native import NativeTransport
from .openai import OpenAITransport
from .relay import SSERelay, error_event

__all__ = ["NativeTransport", "OpenAITransport", "SSERelay", "Transport", "UpstreamReply", "UpstreamStream", "error_event"]
