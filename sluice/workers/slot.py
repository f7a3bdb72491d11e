"""Which worker this process is, as the supervisor told it through the environment."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

ENV_SLOT = "SLUICE_WORKER"  # "index/count", set by the supervisor for each worker
ENV_READY = "SLUICE_WORKER_READY"  # a file the worker creates once it serves


class Slot(NamedTuple):
    """This process's place among the workers: ``Slot(0, 1)`` for a plain ``sluice serve``."""

    index: int
    count: int

    @property
    def control(self) -> bool:
        """Whether this process carries the control plane (worker 0 does)."""
        return self.index == 0

    @property
    def shared_port(self) -> bool:
        """Whether the data port is bound with SO_REUSEPORT beside other workers."""
        return self.count > 1

    @staticmethod
    def announce_ready() -> None:
        """Tell the supervisor this worker is serving (no-op outside a supervisor)."""
        path = os.environ.get(ENV_READY)
        if path:
            Path(path).touch()


def current_slot() -> Slot:
    raw = os.environ.get(ENV_SLOT, "")
    try:
        index, count = (int(x) for x in raw.split("/", 1))
    except ValueError:
        return Slot(0, 1)
    return Slot(index, count) if 0 <= index < count else Slot(0, 1)


def _cgroup_cpus() -> int | None:
    """The CPU quota of this container (cgroup v2 ``cpu.max``), rounded up; None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def resolve_workers(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` = the cores this process may use (affinity
    and container quota). ValueError with a reason otherwise."""
    if value == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        quota = _cgroup_cpus()
        return min(cores, quota) if quota else cores
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--workers takes a number or 'auto', not {value!r}") from None
    if not 1 <= n <= 256:
        raise ValueError(f"--workers must be between 1 and 256, not {n}")
    return n
