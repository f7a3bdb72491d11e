"""HTTP listeners and the OpenAI error envelope."""

from .envelope import error_reply, to_response
from .listener import Handler, Listener, Route, next_request_id
from .server import NativeListener

__all__ = ["Handler", "Listener", "NativeListener", "Route", "error_reply", "next_request_id", "to_response"]
