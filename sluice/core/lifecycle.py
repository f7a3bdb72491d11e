"""Running as one of many: shutdown ordering, the usage spill file, the store-outage grace (config),
and the last step of a drained exit."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec

from .types import MAX_INT


class Lifecycle(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a replica (or worker) leaves, and what it does while the store is away.

    ``ready_grace_s``: on SIGTERM ``/readyz`` answers 503 at once, and the listeners keep
    accepting for this long so a load balancer that probes readiness stops sending work before
    connections are refused; then in-flight requests and streams drain up to
    ``data_plane.shutdown_timeout`` and usage is flushed.
    ``spill_after``: usage records held in memory while the store is down; past it the oldest
    are appended to ``spill_dir`` (fsync'd per batch) and written when the store returns.
    ``outage_grace_s``: with the store unreachable, known identities are served this long
    (from the last confirmation that the registry was current); after it model calls answer
    503 ``store_unavailable`` (0 = no limit).
    """

    ready_grace_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 0.0
    spill_after: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 50_000
    spill_dir: str = ".sluice/spill"
    outage_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 900.0


def ignore_stop_signals() -> None:
    """Once drained, a repeated SIGTERM or SIGINT must not turn a clean exit into death by signal.

    At interpreter shutdown CPython puts Python-level handlers back to SIG_DFL, so an orchestrator
    (or a test) that signals again while the process is exiting would kill it with -15 and report
    a failed drain; SIG_IGN survives finalisation.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


UNLIMITED = -1


def open_file_limit() -> int | None:
    """This process's soft limit on open files: ``UNLIMITED``, or None where the platform has none."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNLIMITED if soft == resource.RLIM_INFINITY or soft <= 0 else soft


def raise_open_file_limit(cap: int = 1 << 20) -> None:
    """Lift this process's soft limit on open files to its hard limit (at most ``cap``), as servers
    do (nginx's ``worker_rlimit_nofile``; Go at start): every client and upstream connection is a
    descriptor, and a soft limit of 1,024 is common."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError):
            pass


async def stop_task(task: asyncio.Task | None, every: float = 0.5) -> None:
    """Cancel a background task and wait until it has ended, cancelling it again while it has not.

    One ``cancel()`` is not enough on CPython 3.11: a cancellation that reaches an ``asyncio.wait_for``
    whose inner wait finishes at the same moment is swallowed (python/cpython#86296), a ``while True``
    loop then runs on, and a shutdown that awaits it waits for ever (a stress run's gateway did, in
    its identity sync). Whatever the task raised on its way out is retrieved, not raised.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        task.exception()


async def every(seconds: float, job: Callable[[], Awaitable[None]]) -> None:
    """Run ``job`` every ``seconds`` until cancelled; a maintenance hiccup is logged and does not end the loop."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception as exc:
            logging.getLogger("sluice").warning("periodic %s failed: %s", getattr(job, "__name__", "job"), type(exc).__name__)
