"""What one replica's MCP gateway tells the others, over Redis pub/sub (with ``limits.backend: redis``).

A resource subscription lives in the table of the replica that took it (``subscriptions.py``), where sluice's own
upstream session is subscribed and so where the server's ``notifications/resources/updated`` arrives; the caller's
GET stream may be on another replica. So the replica that hears an update publishes the digests of the sessions to
tell (already judged against the grants there), and every replica pushes it to its own streams of those sessions
(``updated``). An unsubscribe or a DELETE that another replica receives is published too (``leave``, ``end``), so
the replica holding the subscription drops it at once. Messages carry session id digests (SHA-256), never the ids.

Delivery is Redis pub/sub's: at most once, to the replicas listening at the time. While the connection is down a
replica hears nothing from the others (logged, reconnected with a backoff from 0.5 s to 30 s); what it misses is an
update (the caller reads the resource again when it next hears one) or an end (its sweep finds the session ended
in the store within ``subscriptions.SWEEP_S``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

log = logging.getLogger("sluice.mcp")


class Fanout:
    """One replica's end of the channel: ``publish`` to the others, ``on_message`` for what they publish."""

    def __init__(self, url: str, channel: str, timeout_s: float = 1.0) -> None:
        self._url, self._channel, self._timeout = url, channel, timeout_s
        self._publisher = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.origin = os.urandom(8).hex()  # this replica's own messages come back to it: skipped
        self.on_message: Callable[[dict[str, Any]], Any] | None = None
        self._listen: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()

    def start(self) -> None:
        if self._listen is None:
            self._listen = asyncio.get_running_loop().create_task(self._listening(), name="mcp-fanout")

    def publish(self, message: dict[str, Any]) -> None:
        """Send to every other replica (off the caller's path; a failure is logged)."""
        task = asyncio.get_running_loop().create_task(self._publish(msgspec.json.encode({**message, "o": self.origin})))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, data: bytes) -> None:
        try:
            await self._publisher.publish(self._channel, data)
        except Exception as exc:  # noqa: BLE001 - the other replicas miss this one (see the module's doc)
            log.warning("mcp: fan-out to other replicas failed (%s)", type(exc).__name__)

    async def _listening(self) -> None:
        delay = 0.5
        while True:
            # no read timeout: it waits for messages (a dead peer is found by TCP keep-alive)
            client = aioredis.from_url(self._url, socket_connect_timeout=self._timeout, socket_keepalive=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                delay = 0.5
                async for m in pubsub.listen():
                    self._received(m.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnected below
                log.warning("mcp: fan-out from other replicas is down (%s); retrying in %.1f s", type(exc).__name__, delay)
            finally:
                await asyncio.gather(pubsub.aclose(), client.aclose(), return_exceptions=True)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    def _received(self, data: Any) -> None:
        try:
            message = msgspec.json.decode(data)
        except (msgspec.DecodeError, TypeError):
            return
        if not isinstance(message, dict) or message.get("o") == self.origin or self.on_message is None:
            return
        try:
            done = self.on_message(message)
            if asyncio.iscoroutine(done):
                task = asyncio.get_running_loop().create_task(done)
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        except Exception:  # noqa: BLE001 - one bad message does not end the listener
            log.exception("mcp: a fan-out message could not be handled")

    async def close(self) -> None:
        if self._listen is not None:
            self._listen.cancel()
            await asyncio.gather(self._listen, return_exceptions=True)
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._publisher.aclose()
