"""The native client's active health check: one small GET on a connection of its own.

Not through the pool: a pool that is busy (every connection carrying a long stream) must not read
as a server that is down, and a probe must not take a slot that a request is waiting for.
"""

from __future__ import annotations

import asyncio
import ssl


async def answers(host: str, port: int, ssl_context: ssl.SSLContext | None, request: bytes, timeout: float) -> bool:
    """Whether the server answers ``request`` with a status below 500 within ``timeout`` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None)
            writer.write(request)
            line = await reader.readline()  # "HTTP/1.1 200 OK"
        parts = line.split(None, 2)
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() and int(parts[1]) < 500
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()
