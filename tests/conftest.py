"""Fixtures that start real processes: the simulated backend and sluice itself, on free ports."""

from __future__ import annotations

import re

import pytest

from store.pg_databases import drop_pg_database, fresh_pg_database
from support import Sim, start_gateway, stop_leftovers

_KEY_SHAPES = re.compile(r"sl[ka]_(?:dev_|prod_)?[A-Za-z0-9]{36}")

# Tests that measure time against time (a latency ratio, a pace, a throttle's reaction) or a
# microsecond cost: `make test` runs them after the parallel workers, with nothing of the suite
# beside them (`-m alone`), as they ran before the suite went parallel.
ALONE = (
    "sim/test_sim_latency.py",
    "sim/test_sim_batching.py",
    "sim/test_sim_prefix_cache.py",
    "sim/test_sim_stream.py::test_tokens_are_paced_by_the_decode_delay",
    "limits/test_fair_admission.py",
    "limits/test_anomaly_throttling.py",
    "routing/test_bulkheads.py",  # B's p99 with A stalled against B's p99 alone
    "routing/test_placement.py::test_a_decision_on_an_8000_character_prompt_costs_well_under_a_millisecond",
    "http/test_stream_writes.py::test_a_paced_stream_gets_its_head_and_first_token_through_sluice_within",
    # its slowest request against a bound (1.5 s): beside the parallel suite it once took 1.55 s
    "telemetry/test_tracing.py::test_a_collector_that_hangs_neither_slows_requests_nor_grows_memory_nor_holds_shutdown",
    "listeners/test_isolated_listeners.py::test_a_refused_key_takes_no_longer_than_an_unknown_one",
    # a revocation or disable on every replica within 1 s: beside the parallel suite of 2,400 tests on 2 cores
    # (29 min) two trials took 1.19 s and over 1 s; alone, and beside two CPU burners, they pass
    "identity/test_replicas_share_identity.py::test_a_revoked_key_is_refused_on_every_replica_within_one_second",
    "identity/test_replicas_share_identity.py::test_a_disabled_identitys_tokens_die_on_every_replica_within_one_second",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.removeprefix("tests/").startswith(ALONE):
            item.add_marker(pytest.mark.alone)


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_log(tmp_path_factory: pytest.TempPathFactory):
    """After the whole run, no log file of any process holds anything shaped like a key. Under
    pytest-xdist each worker scans its own base temp, which holds the logs of every test it ran."""
    yield
    stop_leftovers()  # their logs complete, and no process of ours outlives the run
    root = tmp_path_factory.getbasetemp()
    leaks = []
    for log in root.rglob("*.log"):
        for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            if _KEY_SHAPES.search(line):
                leaks.append(f"{log.name}:{n}: {line[:200]}")
    assert not leaks, "keys found in logs:\n" + "\n".join(leaks)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory):
    s = Sim(tmp_path_factory.mktemp("sim"))
    yield s
    s.stop()


STANDARD_MODELS = [
    {"name": "sim-small", "upstream": "sim"},
    {"name": "sim-embed", "upstream": "sim"},
    {"name": "sim-secret", "upstream": "sim", "upstream_model": "sim-small"},
    {"name": "sim-prod", "upstream": "sim", "upstream_model": "sim-small", "environment": "prod"},
]
STANDARD_IDENTITIES = [
    {"name": "app", "owner": "team-a@example.com", "environment": "dev", "models": ["sim-small", "sim-embed", "sim-prod"]},
    {"name": "other", "owner": "team-b@example.com", "environment": "dev", "models": ["sim-secret"]},
    {"name": "prod-app", "owner": "team-a@example.com", "environment": "prod", "models": ["sim-*"]},
]


@pytest.fixture(scope="session")
def gw(sim: Sim, tmp_path_factory: pytest.TempPathFactory):
    """One gateway in front of the sim, shared by tests that do not change its state."""
    g = start_gateway(
        tmp_path_factory.mktemp("gw"),
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5, "total_timeout": 20}],
        models=STANDARD_MODELS, identities=STANDARD_IDENTITIES,
    )
    yield g
    g.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request, tmp_path):
    """A store's URL: a SQLite file, or a fresh Postgres database dropped afterwards (the same
    contract runs on both; in CI a missing Postgres fails instead of skipping)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    url = await fresh_pg_database()
    yield url
    await drop_pg_database(url)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line naming what was skipped and why, so a run without Postgres or Redis is not taken for a
    whole green one (CI=true turns a missing service into a failure instead). Written after pytest's own
    summary, just above its count line."""
    result = yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return result
    reasons: dict[str, list] = {}  # what is missing -> [count, first detail]
    for report in skipped:
        longrepr = report.longrepr
        text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        text = text.removeprefix("Skipped: ")
        what, _, detail = text.partition(": ")
        entry = reasons.setdefault(what, [0, detail])
        entry[0] += 1
    parts = [f"{n} {what}" + (f" ({detail[:80]})" if detail else "")
             for what, (n, detail) in sorted(reasons.items(), key=lambda kv: -kv[1][0])]
    terminalreporter.write_line(f"skipped {len(skipped)} tests: " + "; ".join(parts)
                                + "; run with the services up or CI=true", yellow=True, bold=True)
    return result
