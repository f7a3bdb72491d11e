"""The sim's HTTP face: vLLM's OpenAI-compatible routes (``chat``, ``completions``, ``vllm_routes``), Anthropic's
Messages routes (``messages``), OpenAI's Responses route (``responses``), plus
``/sim/*`` controls for tests (``controls``), on one replica's state (``replica``)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web

from sluice.core.config import Sim
from sluice.core.errors import ListenError

from .completions import Completions
from .controls import SimControls
from .messages import Messages
from .responses import Responses
from .vllm_routes import VllmRoutes

log = logging.getLogger("sluice.sim")


class Replica(Messages, Responses, Completions, VllmRoutes, SimControls):
    """One simulated replica with every route: its state lives in ``ReplicaBase``."""


REPLICA_KEY = web.AppKey("replica", Replica)


def build_app(settings: Sim, *, replica: str = "sim-0") -> web.Application:
    """The sim as an aiohttp application; ``app[REPLICA_KEY]`` is its state."""
    state = Replica(settings, replica)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[REPLICA_KEY] = state
    app.router.add_get("/v1/models", state.list_models)
    app.router.add_post("/v1/chat/completions", state.chat)
    app.router.add_post("/v1/completions", state.complete)
    app.router.add_post("/v1/messages", state.messages)
    app.router.add_post("/v1/messages/count_tokens", state.count_tokens)
    app.router.add_post("/v1/responses", state.responses)
    app.router.add_post("/v1/embeddings", state.embed)
    app.router.add_get("/health", state.health)
    app.router.add_get("/sim/stats", state.get_stats)
    app.router.add_post("/sim/stats/reset", state.reset_stats)
    app.router.add_get("/sim/kv_events", state.kv_events)
    app.router.add_post("/sim/faults", state.set_faults)
    app.router.add_delete("/sim/faults", state.clear_faults)
    app.router.add_post("/reset_prefix_cache", state.reset_prefix_cache)
    app.on_shutdown.append(state.on_shutdown)
    return app


async def serve(settings: Sim, *, replica: str = "sim-0") -> tuple[web.AppRunner, int]:
    """Start the sim on ``settings.host:settings.port`` (0 picks a free port); returns the runner and the port."""
    runner = web.AppRunner(
        build_app(settings, replica=replica),
        access_log=None,
        # Cancel a handler when its client disconnects, so abandoned requests stop generating.
        handler_cancellation=True,
        # Streams in flight at shutdown are simulated work; do not hold the exit for them.
        shutdown_timeout=2.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(exc, "sim.port", settings.host, settings.port) from None
    port = int(runner.addresses[0][1])
    return runner, port


def run(settings: Sim) -> None:
    """Serve the sim until SIGINT or SIGTERM, on uvloop when it is installed."""

    async def main() -> None:
        runner, port = await serve(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not on Windows' default loop
                pass
        log.info("sluice sim listening on http://%s:%d models=%s", settings.host, port, ",".join(settings.models))
        print(f"sluice sim listening on http://{settings.host}:{port}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())

