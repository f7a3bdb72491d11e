"""An audit entry and its canonical encoding: sorted-key compact JSON in UTF-8 (RFC 8785 style;
times as RFC 3339 strings so no float formatting is involved in the fields we write)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from ..core.types import ChangeEvent

VERSION = 1
FIELDS = ("v", "seq", "time", "actor", "action", "target", "before", "after", "request_id", "source",
          "change_id", "detail")


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=str).encode()


def digest(obj: Any) -> str | None:
    """SHA-256 (hex) of a value's canonical encoding; None for None."""
    return None if obj is None else hashlib.sha256(canonical(obj)).hexdigest()


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 / RFC 3339 time (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def build(seq: int, event: ChangeEvent, *, before: str | None, after: str | None, request_id: str | None,
          change_id: str | None) -> bytes:
    """The canonical bytes of entry ``seq`` for a change (or a failed login, ``change_id`` None)."""
    return canonical({
        "v": VERSION, "seq": seq, "time": rfc3339(event.ts), "actor": event.actor, "action": event.action,
        "target": event.target, "before": before, "after": after, "request_id": request_id,
        "source": event.source_ip, "change_id": change_id, "detail": event.detail,
    })


def decode(data: bytes) -> dict[str, Any]:
    """The entry's fields; ValueError when the bytes are not one canonical entry."""
    obj = json.loads(data)
    if not isinstance(obj, dict) or set(obj) != set(FIELDS) or canonical(obj) != data:
        raise ValueError("not a canonical audit entry")
    return obj
