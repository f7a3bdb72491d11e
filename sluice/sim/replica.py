"""One simulated replica's state, and what every route does first: count, decode, check the
model, apply injected faults. The routes themselves live in ``chat``, ``completions``, ``vllm_routes`` and
``controls``; ``server`` assembles them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

import msgspec
from msgspec import UNSET
from aiohttp import web

from sluice.core import clock
from sluice.core.config import Sim

from .faults import Faults, error_body
from .kv_events import EventLog
from .latency import LatencyModel, pause
from .prefix_cache import PrefixCache
from .schema import ModelCard, ModelList
from .stats import Stats

MAX_MODEL_LEN = 32768
JSON = "application/json"
encode = msgspec.json.encode


def json_reply(payload: Any, status: int = 200) -> web.Response:
    """A JSON response."""
    return web.Response(body=encode(payload), status=status, content_type=JSON)


def error_reply(status: int, message: str, retry_after: int = 1) -> web.Response:
    """A vLLM-shaped error response; 429 and 503 carry ``Retry-After`` (seconds)."""
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return web.Response(body=error_body(status, message), status=status, content_type=JSON, headers=headers)


class ReplicaBase:
    """One simulated backend replica: its prefix cache, latency model, faults and counters."""


    def __init__(self, settings: Sim, replica: str = "sim-0") -> None:
        self.settings = settings
        self.replica = replica
        self.models = frozenset(settings.models)
        self.cache = PrefixCache(
            settings.prefix_cache_blocks, settings.block_tokens, EventLog() if settings.kv_events else None
        )
        self.latency = LatencyModel(settings)
        self.faults = Faults(settings.seed)
        self.stats = Stats()
        self.embedder = None  # --embedder wordllama: its model, loaded once (sim.embeddings.WordLlamaVectors)
        if settings.embedder == "wordllama":
            from .embeddings import WordLlamaVectors
            self.embedder = WordLlamaVectors()
        self.last_chat: dict[str, Any] = {}  # the output limits the last chat request asked for, and its body
        self.last_completion: dict[str, Any] = {}  # the prompt, suffix and body of the last legacy completion
        self.last_messages: dict[str, Any] = {}  # the anthropic-* headers of the last Messages request
        self.last_responses: dict[str, Any] = {}  # the header lines and body of the last Responses request
        self.traceparents: deque[str] = deque(maxlen=256)  # W3C traceparent headers received, newest last
        self._ids = count(1)
        self._id_prefix = secrets.token_hex(6)
        self._closing = asyncio.Event()
        created = int(clock.now())
        self._model_list = encode(
            ModelList(data=[ModelCard(id=m, created=created, max_model_len=MAX_MODEL_LEN, root=m,
                                 digest=UNSET if settings.digest is None else settings.digest) for m in settings.models])
        )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):010x}"

    # ---- faults ---------------------------------------------------------------------------

    async def _apply_faults(self, request: web.Request,
                            render: Callable[[int, str, int], web.Response] | None = None) -> web.Response | None:
        """Hang, delay or fail this request as the current faults say (an error rendered by
        ``render``, vLLM's shape by default); None means carry on."""
        faults = self.faults
        if not faults.active:
            return None
        spec = faults.spec
        if spec.hang:
            # Accept and never answer: wait until the client gives up (the handler is cancelled)
            # or the server shuts down, then drop the connection without a response.
            await self._closing.wait()
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        await pause(spec.delay_ms / 1000.0)
        status = faults.error_status()
        if status is not None:
            self.stats.errors_injected += 1
            return (render or error_reply)(status, f"injected fault: status {status}", spec.retry_after)
        return None

    async def _admit(self, request: web.Request, decoder: msgspec.json.Decoder) -> Any:
        """Count the request, decode its body and check its model; the request, or the refusal to send."""
        self.stats.requests_total += 1
        try:
            req = decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return self._refuse(400, str(exc))
        except RecursionError:  # msgspec's answer to JSON nested deeper than it follows
            return self._refuse(400, "The request body is nested too deeply.")
        if req.model not in self.models:
            return self._refuse(404, f"The model `{req.model}` does not exist.")
        return req

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Count a request in flight while it runs; a cancelled one (its client left) as a disconnect."""
        stats = self.stats
        stats.in_flight += 1
        try:
            yield
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client goes away: generation stops here.
            stats.client_disconnects += 1
            raise
        finally:
            stats.in_flight -= 1

    def _refuse(self, status: int, message: str) -> web.Response:
        self.stats.errors_returned += 1
        return error_reply(status, message)

    async def on_shutdown(self, app: web.Application) -> None:
        """Release hung requests so shutdown does not wait on them."""
        self._closing.set()
