"""What a native connection reads from the listener that accepted it: its limits, its deadlines
and the state it shares with every connection. A protocol, so that ``connection`` does not import
``server`` (which imports ``connection`` to make them)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Protocol

from .router import Router


class ConnectionHost(Protocol):
    loop: asyncio.AbstractEventLoop
    router: Router
    access_log: bool
    max_body: int
    max_url_bytes: int
    max_header_bytes: int
    max_header_field_bytes: int
    max_headers: int
    max_connections: int
    write_high_water: int
    keepalive_timeout: float
    header_timeout: float
    body_timeout: float
    send_timeout: float
    connections: set  # of the listener's live connections
    shedding: int  # refused connections still reading their 503
    draining: bool
    # mTLS: reads a connection's client certificate once its handshake is done (None: the listener maps none)
    peer_cert: Callable[[ssl.SSLObject | None], object] | None
    served: object | None  # the named listener's gate, carried by each Exchange (None: a single unnamed listener)

    def refuse(self, transport: asyncio.Transport) -> bool: ...
