"""HTTP listeners and the OpenAI error envelope."""

from .envelope import error_reply, to_response
from .listener import Handler, Listener, Route, next_request_id

__all__ = ["Handler", "Listener", "Route", "error_reply", "next_request_id", "to_response"]
