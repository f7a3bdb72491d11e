"""``sluice serve --workers 2``: two processes on one data port behave as one gateway: a killed
worker is back within 2 s, limits are exact across workers, /metrics is their sum, SIGTERM
drains all and no usage is lost; the memory limit backend is refused once there are limit rules."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rig import boot_prefixes, burst, poll, redis_prefix, sqlite_usage, worker_pids
from support import Gateway, Sim, free_port, start_gateway


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    prefix = redis_prefix()
    tmp = tmp_path_factory.mktemp("workers")
    sim = Sim(tmp)
    gw = start_gateway(
        tmp, args=["--workers", "2"],
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}, {"name": "m-tokens", "upstream": "sim", "upstream_model": "sim-small"}],
        identities=[{"name": "app", "owner": "o", "models": ["*"]}],
        extra={"limits": {"backend": "redis", "key_prefix": prefix, "redis_timeout_s": 5, "rules": [
            {"name": "tokens", "match": {"model": "m-tokens"}, "output_tokens_per_minute": 100}]}})
    # worker 1 starts after worker 0 is ready: wait until both answer on the shared port
    poll(lambda: len(worker_pids(gw.log()).get(1, [])) >= 1, 30, "worker 1 never started")
    poll(lambda: len(boot_prefixes(asyncio.run(burst([gw.url], gw.keys["app"], 16)))) == 2, 60,
         "the two workers never both answered on the shared port")
    yield gw, sim, tmp
    gw.stop()
    sim.stop()


def _metric_sum(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _every_worker_serves_the_active_policy(gw: Gateway) -> None:
    """Wait until both workers answer under the control plane's active policy version (a request for no
    model is refused at the route, before any limit counts it, and still names its version)."""
    version = gw.admin("GET", "/admin/policy/versions/active?format=json").json()["id"]
    probe = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}

    def both() -> bool:
        got = asyncio.run(burst([gw.url], gw.keys["app"], 16, probe))
        assert {r.status_code for r in got} == {404}, [r.text for r in got][:2]
        tags = {(r.headers["x-request-id"][4:20], r.headers["x-sluice-policy"]) for r in got}
        return len({w for w, _ in tags}) == 2 and all(t.startswith(f"{version}-") for _, t in tags)

    poll(both, 10, f"both workers did not serve policy version {version} within 10 s")


def test_two_workers_share_the_port_and_a_token_limit_is_exact_across_them(workers):
    gw, sim, _ = workers
    before = sim.stats()["completion_tokens"]
    got = asyncio.run(burst([gw.url], gw.keys["app"], 40, {**_tokens_body(), "max_tokens": 10}))
    statuses = [r.status_code for r in got]
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses
    assert sim.stats()["completion_tokens"] - before == 100
    assert len(boot_prefixes(got)) == 2, "both workers should have answered part of the burst"


def _tokens_body() -> dict:
    return {"model": "m-tokens", "messages": [{"role": "user", "content": "x"}]}


def test_metrics_on_the_control_plane_sum_over_workers(workers):
    gw, sim, _ = workers
    # the fixture's warm-up bursts (and earlier tests) may still be folding into the shared files: start
    # once every request the sim answered is counted (each reached the sim and was answered 200)
    poll(lambda: _metric_sum(gw, "sluice_requests_total", status="200") == sim.stats()["chat_requests"], 10,
         "/metrics never caught up with the requests the sim answered")
    before = _metric_sum(gw, "sluice_requests_total", model="sim-small", status="200")
    got = asyncio.run(burst([gw.url], gw.keys["app"], 30))
    assert [r.status_code for r in got] == [200] * 30
    assert len(boot_prefixes(got)) == 2
    # each worker folds its records into the shared files at its next flush (0.25 s)
    poll(lambda: _metric_sum(gw, "sluice_requests_total", model="sim-small", status="200") - before == 30, 10,
         f"/metrics did not count all 30 requests of both workers: "
         f"{_metric_sum(gw, 'sluice_requests_total', model='sim-small', status='200') - before}")
    # what is read at scrape time (breaker state, memory) is there too, beside the summed counters
    text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    assert re.search(r'sluice_breaker_state\{state="closed",target="[^"]+",upstream="sim"\} 1\.0', text)
    assert re.search(r"process_resident_memory_bytes [1-9]", text)


def test_a_limit_changed_on_the_control_plane_reaches_every_worker(workers):
    """The control plane runs in worker 0; a limit put there is a policy version in the store, which
    every worker's watcher installs, so the limit is exact across both workers within a second."""
    gw, sim, _ = workers
    rules = [{"name": "tokens", "match": {"model": "m-tokens"}, "output_tokens_per_minute": 100},
             {"name": "few", "match": {"model": "sim-small"}, "requests_per_minute": 7}]
    r = gw.admin("PUT", "/admin/limits", json={"rules": rules})
    assert r.status_code == 200, r.text
    try:
        _every_worker_serves_the_active_policy(gw)  # every worker polls the store's version every 0.5 s
        before = sim.stats()["chat_requests"]
        got = asyncio.run(burst([gw.url], gw.keys["app"], 28))
        statuses = [r.status_code for r in got]
        assert statuses.count(200) == 7 and statuses.count(429) == 21, statuses
        assert sim.stats()["chat_requests"] - before == 7
        assert len(boot_prefixes(got)) == 2, "both workers should have answered part of the burst"
    finally:
        assert gw.admin("PUT", "/admin/limits", json={"rules": rules[:1]}).status_code == 200
        _every_worker_serves_the_active_policy(gw)


def test_a_worker_killed_with_sigkill_is_replaced_within_two_seconds(workers):
    gw, _, _ = workers
    pids = worker_pids(gw.log())
    victim = pids[1][-1]
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    poll(lambda: len(worker_pids(gw.log())[1]) == len(pids[1]) + 1, 5, "the killed worker was not restarted")
    took = time.monotonic() - t0
    assert took < 2.0, f"replacing a killed worker took {took:.2f}s"
    assert re.search(rf"worker 1 \(pid {victim}\) exited with -9", gw.log()), "the death is logged"
    # the replacement serves: both workers answer again
    poll(lambda: len(boot_prefixes(asyncio.run(burst([gw.url], gw.keys["app"], 16)))) == 2, 60,
         "the restarted worker never answered")


def test_sigterm_drains_every_worker_and_loses_no_usage(workers, tmp_path):
    gw, sim, tmp = workers
    got = asyncio.run(burst([gw.url], gw.keys["app"], 50))
    assert [r.status_code for r in got] == [200] * 50
    pids = [p[-1] for p in worker_pids(gw.log()).values()]
    # requests still in flight on both workers when SIGTERM arrives finish, and are recorded
    sim.faults(delay_ms=1500)
    in_flight: list = []
    t = threading.Thread(target=lambda: in_flight.extend(asyncio.run(burst([gw.url], gw.keys["app"], 16))))
    t.start()
    poll(lambda: sim.stats()["in_flight"] >= 16, 20, "the slow requests never reached the sim")
    gw.proc.popen.send_signal(signal.SIGTERM)
    t.join(60)
    sim.clear_faults()
    assert [r.status_code for r in in_flight] == [200] * 16, [r.status_code for r in in_flight]
    assert len(boot_prefixes(in_flight)) == 2, "both workers had requests in flight"
    # the one SIGTERM is enough: the supervisor exits 0 once every worker has drained
    try:
        code = gw.proc.popen.wait(40)
    except subprocess.TimeoutExpired:
        code = None
    gw.stop()
    assert code == 0, gw.log()[-2000:]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    # every request that reached the sim, from either worker and across the restart, left a row
    sent = sim.stats()["chat_requests"]
    assert sqlite_usage(tmp / "sluice.db", "status = 200") == sent, gw.log()[-3000:]


def test_the_memory_limit_backend_is_refused_with_workers_only_when_there_are_limits_to_count(tmp_path):
    rules = {"rules": [{"name": "r", "requests_per_minute": 5}]}
    cfg = {"data_plane": {"port": free_port()}, "control_plane": {"port": free_port()},
           "store": {"url": f"sqlite:///{tmp_path}/s.db"}, "security": {"pepper": "x" * 32}, "limits": rules}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "sluice", "serve", "--config", str(path), "--workers", "2"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "with limits.rules set needs limits.backend: redis" in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr
    bad = subprocess.run([sys.executable, "-m", "sluice", "serve", "--config", str(path), "--workers", "lots"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "--workers" in bad.stderr and "Traceback" not in bad.stderr


def test_two_workers_without_limit_rules_start_on_the_memory_backend_and_refuse_a_rule_later(sim, tmp_path):
    gw = start_gateway(tmp_path, args=["--workers", "2"], upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                       models=[{"name": "sim-small", "upstream": "sim"}],
                       identities=[{"name": "app", "owner": "o", "models": ["*"]}])
    try:
        poll(lambda: len(worker_pids(gw.log()).get(1, [])) >= 1, 30, "worker 1 never started")
        body = {"model": "sim-small", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
        assert gw.post("/v1/chat/completions", gw.keys["app"], json=body).status_code == 200
        # a rule added at run time could not be exact either: refused, with the same advice
        r = gw.admin("PUT", "/admin/switches/models/sim-small/limit", json={"reason": "x", "requests_per_minute": 1})
        assert r.status_code == 400 and "limits.backend: redis" in r.json()["error"]["message"], r.text
        assert gw.post("/v1/chat/completions", gw.keys["app"], json=body).status_code == 200
    finally:
        assert gw.stop() == 0, gw.log()[-2000:]
