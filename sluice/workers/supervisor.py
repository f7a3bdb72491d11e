"""The supervisor: starts the workers, restarts one that dies, passes signals on, drains all."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..core.config import Config
from ..core.lifecycle import ignore_stop_signals
from .slot import ENV_READY, ENV_SLOT

log = logging.getLogger("sluice.workers")

_QUICK_DEATH_S = 5.0  # a worker that dies sooner than this after starting counts towards a crash loop
_MAX_QUICK_DEATHS = 10  # in a row: the config or the machine is wrong, stop instead of spinning
_READY_TIMEOUT_S = 120.0


def refusal(cfg: Config, count: int) -> str | None:
    """Why this config cannot run as ``count`` workers, or None."""
    if count <= 1:
        return None
    if cfg.limits.backend == "memory" and (cfg.limits.rules or cfg.limits.anomaly is not None):
        # with nothing to count there is nothing to keep exact; rules added later are refused the same way
        what = "limits.rules" if cfg.limits.rules else "limits.anomaly"
        return (f"--workers {count} with {what} set needs limits.backend: redis. The memory backend counts in "
                f"each process, so limits would not be exact across workers; set limits.backend: redis and "
                f"limits.redis_url (or run --workers 1).")
    for i, lst in enumerate(cfg.listeners):
        if lst.port == 0:
            where = f"data_plane[{i}].port" if isinstance(cfg.data_plane, list) else "data_plane.port"
            return f"--workers {count} needs a fixed {where} (workers share it); port 0 picks one per process."
    if cfg.sim is not None and cfg.sim.port == 0:
        return f"--workers {count} needs a fixed sim.port for the embedded simulator."
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the supervisor dies, so no worker is orphaned."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.quick_deaths = 0


class Supervisor:
    """Runs ``count`` copies of ``sluice serve --config PATH`` and keeps them running."""

    def __init__(self, config_path: str, cfg: Config, count: int) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.count = count
        self.run_dir = Path(tempfile.mkdtemp(prefix="sluice-workers-"))
        self.metrics_dir = self.run_dir / "metrics"
        self.metrics_dir.mkdir()
        self.workers = [_Worker(i) for i in range(count)]
        self._stopping = False
        self._hup = False

    def _spawn(self, w: _Worker) -> None:
        ready = self.run_dir / f"ready-{w.index}"
        ready.unlink(missing_ok=True)
        env = {**os.environ, ENV_SLOT: f"{w.index}/{self.count}", ENV_READY: str(ready),
               "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        w.proc = subprocess.Popen([sys.executable, "-m", "sluice", "serve", "--config", self.config_path],
                                  env=env, preexec_fn=_die_with_parent)
        w.started = time.monotonic()
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _wait_ready(self, w: _Worker) -> bool:
        ready = self.run_dir / f"ready-{w.index}"
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping:
            if ready.exists():
                return True
            if w.proc is not None and w.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def _on_stop(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self._hup = True

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(sig)

    def run(self) -> int:
        """Blocking: start, supervise, and on SIGTERM or SIGINT drain every worker. The exit code."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            # worker 0 first: it migrates the store and syncs declared identities before the others race it
            first = self.workers[0]
            self._spawn(first)
            if not self._wait_ready(first):
                code = first.proc.poll() if first.proc is not None else None
                log.error("worker 0 did not start (exit code %s); stopping", code)
                self._stopping = True
                return code or 1
            for w in self.workers[1:]:
                self._spawn(w)
            log.info("%d workers serving on port %s", self.count, ", ".join(str(lst.port) for lst in self.cfg.listeners))
            return self._supervise()
        finally:
            self._shutdown()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            ignore_stop_signals()

    def _supervise(self) -> int:
        while not self._stopping:
            if self._hup:
                self._hup = False
                log.info("SIGHUP: reloading every worker")
                self._signal_all(signal.SIGHUP)
            for w in self.workers:
                code = w.proc.poll() if w.proc is not None else 0
                if code is None:
                    continue
                lived = time.monotonic() - w.started
                w.quick_deaths = w.quick_deaths + 1 if lived < _QUICK_DEATH_S else 0
                log.warning("worker %d (pid %d) exited with %s after %.1f s; restarting", w.index,
                            w.proc.pid if w.proc else -1, code, lived)
                if w.proc is not None:
                    self._forget(w.proc.pid)
                if w.quick_deaths >= _MAX_QUICK_DEATHS:
                    log.error("worker %d died %d times in a row within %.0f s of starting; stopping",
                              w.index, w.quick_deaths, _QUICK_DEATH_S)
                    return 1
                if w.quick_deaths > 1:  # back off a crash loop, but never past the 2 s promise
                    time.sleep(min(0.1 * 2 ** (w.quick_deaths - 2), 1.0))
                self._spawn(w)
            time.sleep(0.05)
        return 0

    def _forget(self, pid: int) -> None:
        """A dead worker's live gauges leave the sums; its counters stay (they happened)."""
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.metrics_dir))
        except OSError:
            pass

    def _shutdown(self) -> None:
        self._signal_all(signal.SIGTERM)
        grace = max(lst.shutdown_timeout for lst in self.cfg.listeners) + self.cfg.lifecycle.ready_grace_s + 15.0
        deadline = time.monotonic() + grace
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not drain within %.0f s; killing it", w.index, grace)
                w.proc.kill()
                w.proc.wait()
        log.info("all workers stopped")
