"""What the two readers of an upstream's own API (``anthropic.native``, ``responses.native``) share: the
chat form they write, a whole completion or the chunks of a stream, and the reading of the upstream's
stream of named events. The events are split at their blank lines (one held past the relay's bound
without its blank line is refused, as the relay refuses it) and each one's data read; a line that is
not server-sent events fails the stream. What an event means is each reader's own (``_read``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluice.core.errors import UpstreamError

_json = msgspec.json.encode
MAX_EVENT_BYTES = 4 * 1024 * 1024  # as the relay's bound: an event held this long without its blank line is refused
DONE = b"data: [DONE]\n\n"


def tool_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    """One tool call of a chat message."""
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(id: str, model: str, message: dict[str, Any], finish: str, usage: dict[str, Any] | None) -> bytes:
    """A whole chat completion of one choice, encoded: an upstream's whole answer in the chat form."""
    out: dict[str, Any] = {"id": id, "object": "chat.completion", "model": model,
                           "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return _json(out)


class NativeStream:
    """An upstream's event stream in (bytes split anywhere), the chat form's events out.

    ``feed`` returns the pieces to relay in order: each run of chat events the reader wrote
    (``_chunk``, ``_arguments``...) as one piece, and whatever the reader put in ``_pieces`` on its own
    between them. ``done`` is set by the reader at the stream's end.
    """

    __slots__ = ("_buf", "done", "_pieces", "_run")

    def __init__(self) -> None:
        self._buf = b""
        self.done = False
        self._pieces: list[bytes] = []
        self._run: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            return []
        buf = self._buf + data if self._buf else data
        if buf.find(b"\r") >= 0:  # not `in`: CPython tries the needle as an int first
            buf = buf.replace(b"\r\n", b"\n")
        *events, self._buf = buf.split(b"\n\n")
        if len(self._buf) > MAX_EVENT_BYTES:
            raise UpstreamError("The upstream sent an event larger than this gateway relays.",
                                code="upstream_event_too_large")
        for raw in events:
            if raw and not self.done:
                self._read(raw)
        if self._run:
            self._pieces.append(b"".join(self._run))
            self._run.clear()
        out, self._pieces = self._pieces, []
        return out

    def _read(self, raw: bytes) -> None:
        raise NotImplementedError

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> None:
        self._run.append(b"data: " + _json({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n")

    def _open_call(self, k: int, id: str, name: str) -> None:
        """The chunk that opens chat tool call ``k``."""
        self._chunk({"tool_calls": [{"index": k, **tool_call(id, name, "")}]})

    def _arguments(self, k: int, piece: str) -> None:
        self._chunk({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})

    def _usage_chunk(self, usage: dict[str, Any]) -> None:
        """The chunk of the stream's usage, in the chat form's fields."""
        self._run.append(b"data: " + _json({"choices": [], "usage": usage}) + b"\n\n")


def event_data(raw: bytes) -> bytes | None:
    """The data of one SSE event (its data lines joined), None for a comment; anything else is not SSE."""
    data = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif not line.startswith((b"event:", b":", b"id:", b"retry:")):
            raise UpstreamError("The upstream sent an event that is not server-sent-events data.", code="upstream_bad_event")
    return b"\n".join(data) if data else None
