"""Many worker processes on one port: ``sluice serve --workers N|auto``.

A small supervisor starts N ``sluice serve`` workers that each bind the data port with
``SO_REUSEPORT`` (the kernel spreads connections over them), restarts one that dies, and passes
SIGTERM (drain) and SIGHUP (reload) to all. Worker 0 also carries the control plane; metrics
from every worker are summed through prometheus_client's multiprocess mode.
"""

from .slot import Slot, current_slot, resolve_workers
from .supervisor import Supervisor, refusal

__all__ = ["Slot", "Supervisor", "current_slot", "refusal", "resolve_workers"]
