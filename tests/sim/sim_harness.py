"""Helpers for sim tests: a started sim with an SDK client factory and the ``/sim`` controls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
from aiohttp import web


class RunningSim:
    """A started sim: its base URL, an SDK factory and raw-HTTP helpers for the ``/sim`` controls."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.AsyncClient(base_url=self.url, timeout=10.0)
        self._clients: list[openai.AsyncOpenAI] = []
        self._closed = False

    def client(self, **kw: Any) -> openai.AsyncOpenAI:
        """An SDK client; no retries, so a fault shows up exactly once."""
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 10.0)
        c = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="sk-sim-test", **kw)
        self._clients.append(c)
        return c

    async def faults(self, **spec: Any) -> None:
        """Set the injected faults."""
        (await self.http.post("/sim/faults", json=spec)).raise_for_status()

    async def clear_faults(self) -> None:
        """Back to healthy."""
        (await self.http.delete("/sim/faults")).raise_for_status()

    async def stats(self) -> dict[str, Any]:
        """The sim's counters."""
        return (await self.http.get("/sim/stats")).json()

    async def close(self) -> None:
        """Close the clients, then stop the server; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for c in self._clients:
            await c.close()
        await self.http.aclose()
        await self.runner.cleanup()


StartSim = Callable[..., Awaitable[RunningSim]]


def user(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A one-message prompt."""
    return [{"role": "user", "content": content}]


def long_prompt(n_words: int) -> str:
    """Distinct words, so the sim's tokenizer counts exactly ``n_words`` tokens."""
    return " ".join(f"w{i}" for i in range(n_words))
