"""Scale-out fixtures: Redis with a key prefix of one's own, Postgres databases, worker pids from logs."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_TESTS / "store"))  # pg_databases
sys.path.insert(0, str(_TESTS / "limits"))  # test_limits: REDIS_URL, require_redis
