"""Scale-out fixtures: Redis with a key prefix of one's own, Postgres databases, worker pids from logs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "store"))  # pg_databases
