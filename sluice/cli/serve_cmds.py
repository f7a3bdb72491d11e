"""``sluice serve``, ``sluice demo`` and ``sluice sim``: processes that listen."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ..core import config as cfgmod
from ..core.errors import ConfigError, ListenError

err = Console(stderr=True)


def _load(path: Path) -> cfgmod.Config:
    try:
        return cfgmod.load(path)
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def serve(config: Path = typer.Option(..., "--config", "-c", help="YAML config file.", exists=False),
          workers: str = typer.Option("1", "--workers", envvar="SLUICE_WORKERS",
                                      help="Worker processes on the data port (SO_REUSEPORT): a number, or 'auto' "
                                           "for the cores this process may use. Worker 0 also serves the control plane.")) -> None:
    """Start the gateway: data plane and control plane, as the config says."""
    from ..app import run
    from ..store import StoreUnavailable
    from ..workers import current_slot

    cfg = _load(config)
    if current_slot().count == 1:  # the supervisor's workers never supervise
        _supervise_if_asked(cfg, config, workers)
    try:
        run(cfg, str(config))
    except ListenError as exc:  # the setting named is the config file's
        err.print(f"[red]cannot start:[/red] {escape(str(exc))} in {escape(str(config))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (StoreUnavailable, OSError) as exc:
        err.print(f"[red]cannot start:[/red] {escape(type(exc).__name__ + ': ' + str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None


def _supervise_if_asked(cfg: cfgmod.Config, config: Path, workers: str) -> None:
    """With ``--workers`` above 1, run the supervisor (and exit with its code) instead of one gateway."""
    from ..telemetry import configure
    from ..workers import Supervisor, refusal, resolve_workers

    try:
        count = resolve_workers(workers)
    except ValueError as exc:
        err.print(f"[red]bad --workers:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if count == 1:
        return
    why = refusal(cfg, count)
    if why is not None:
        err.print(f"[red]cannot start:[/red] {escape(why)}", soft_wrap=True)
        raise typer.Exit(2)
    configure(cfg.logging.level, cfg.logging.format, [])
    raise typer.Exit(Supervisor(str(config.resolve()), cfg, count).run())


def sim(
    port: int = typer.Option(8090, help="Port to listen on (0 = any free port)."),
    host: str = typer.Option("127.0.0.1"),
    decode_ms: float = typer.Option(2.0, help="Decode delay per output token, ms."),
    prefill_ms: float = typer.Option(0.05, help="Prefill time per uncached prompt token, ms."),
    base_ms: float = typer.Option(1.0, help="Fixed latency per request, ms."),
    max_concurrency: int = typer.Option(0, help="Requests served at once (0 = unbounded)."),
    model: list[str] = typer.Option(["sim-small", "sim-embed"], help="Model names to serve."),
    cache_blocks: int = typer.Option(4096, help="Prefix cache size in blocks (0 = no prefix caching)."),
    block_tokens: int = typer.Option(16, help="Tokens per prefix cache block."),
    prefill_concurrency: int = typer.Option(0, help="Prefills at once (0 = unbounded, 1 = one at a time)."),
    batch_slowdown: float = typer.Option(0.0, help="Decode step slowdown per other sequence in the batch."),
    kv_events: bool = typer.Option(False, help="Publish vLLM-shaped KV block events at /sim/kv_events."),
    digest: str = typer.Option(None, help="The weights digest every model reports in GET /v1/models."),
    embedder: str = typer.Option("hash", help="Embeddings: hash (per input bytes) or wordllama (a small real model)."),
) -> None:
    """Run the simulated backend (vLLM-compatible wire) as its own process."""
    from ..sim import run as run_sim

    with listening({"sim.port": "--port", "sim.host": "--host"}):
        run_sim(cfgmod.Sim(host=host, port=port, decode_ms_per_token=decode_ms, prefill_ms_per_token=prefill_ms,
                           base_latency_ms=base_ms, max_concurrency=max_concurrency, models=model,
                           prefix_cache_blocks=cache_blocks, block_tokens=block_tokens,
                           prefill_concurrency=prefill_concurrency, decode_batch_slowdown=batch_slowdown,
                           kv_events=kv_events, digest=digest, embedder=embedder))


@contextmanager
def listening(flags: dict[str, str]) -> Iterator[None]:
    """A listener that cannot bind is one line naming the flag to change (``flags``: setting -> flag), exit 1."""
    try:
        yield
    except ListenError as exc:
        err.print(f"[red]cannot start:[/red] {escape(exc.text(flags.get(exc.setting, exc.setting)))}", soft_wrap=True)
        raise typer.Exit(1) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(
    port: int = typer.Option(8080, help="Data-plane port."),
    admin_port: int = typer.Option(8081, help="Control-plane port."),
    once: bool = typer.Option(False, help="Serve one example request, then exit."),
) -> None:
    """Start sluice on the embedded default with the simulated backend, and show a working request."""
    from .demo import run_demo

    with listening({"data_plane.port": "--port", "control_plane.port": "--admin-port"}):
        code = run_demo(port, admin_port, _free_port(), once)
    sys.exit(code)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(demo)
    app.command()(sim)


