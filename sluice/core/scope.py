"""The control-plane request being served (its id and source address), for records written deep
below the handler: the audit entry of a change cites the request that made it."""

from __future__ import annotations

from contextvars import ContextVar

request: ContextVar[tuple[str | None, str | None]] = ContextVar("sluice_request", default=(None, None))
