"""Wall-clock and monotonic time behind one seam, so every timestamp has one source."""

from __future__ import annotations

import time

now = time.time
monotonic = time.perf_counter
