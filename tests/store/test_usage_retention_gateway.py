"""Usage retention in a running gateway (issue 29, items 3 and 4), on SQLite and on Postgres: with
``ledger.export_dir`` set, the background job exports a day older than ``raw_retention_days`` and drops it
while the gateway serves real requests (the openai SDK against the sim), and ``sluice usage export --day``
writes today's requests to a file that gzip, json and jq load with the counts and digest of its manifest."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

import sluice.sim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from store.pg_databases import drop_pg_database, fresh_pg_database  # noqa: E402
from support import Sim, start_gateway  # noqa: E402

from sluice.core.types import UsageRecord  # noqa: E402
from sluice.store.sql import SqlStore  # noqa: E402

DAY = 86_400
SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))


def old_rows(day: int, n: int) -> list[UsageRecord]:
    return [UsageRecord(request_id=f"old-{i}", ts=day * DAY + 60.0 * i, identity_id="id-x", key_id=None,
                        endpoint="chat.completions", model="sim-small", upstream="sim", status=200, prompt_tokens=5,
                        completion_tokens=2, latency_ms=4.0, usage_source="upstream") for i in range(n)]


async def store_call(url: str, job):
    s = SqlStore(url)
    await s.open()
    try:
        return await job(s)
    finally:
        await s.close()


async def usage_ids(s: SqlStore) -> set[str]:
    return {r.request_id for r in await s.list_usage(limit=100_000)}


def manifest_and_lines(manifest_path: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads(manifest_path.read_text())
    [f] = manifest["files"]
    data = (manifest_path.parent / f["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
    lines = [json.loads(x) for x in gzip.decompress(data).splitlines()]
    assert len(lines) == manifest["rows"] == f["rows"]
    if shutil.which("jq"):
        jq = subprocess.run(f"gzip -dc {manifest_path.parent / f['path']} | jq -r .request_id", shell=True,
                            capture_output=True, text=True, check=True)
        assert jq.stdout.split() == [x["request_id"] for x in lines]
    return manifest, lines


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_gateway_exports_and_drops_an_expired_day_while_serving_and_the_cli_exports_today(kind, tmp_path):
    url = asyncio.run(fresh_pg_database()) if kind == "postgres" else f"sqlite:///{tmp_path}/sluice.db"
    today = int(time.time() // DAY)
    expired = today - 40
    asyncio.run(store_call(url, lambda s: s.write_usage(old_rows(expired, 50))))  # written before this gateway
    sim = Sim(tmp_path)
    export = tmp_path / "export"
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim", "tokenizer": SIM_TOKENIZER}],
                      identities=[{"name": "app", "owner": "team@example.com", "models": ["sim-small"]}],
                      extra={"store": {"url": url}, "usage": {"flush_interval": 0.05},
                             "ledger": {"raw_retention_days": 30, "export_dir": str(export), "retention_interval": 0.3}})
    try:
        client = openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)
        answered = [client.chat.completions.with_raw_response.create(
            model="sim-small", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=3) for i in range(8)]
        ids = {r.headers["x-request-id"] for r in answered}
        day = time.strftime("%Y-%m-%d", time.gmtime(expired * DAY))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stored = asyncio.run(store_call(url, usage_ids))
            if (export / f"usage-{day}.manifest.json").exists() and ids <= stored and not any(
                    x.startswith("old-") for x in stored):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"not exported and dropped in 60 s:\n{g.log()[-3000:]}")
        manifest, lines = manifest_and_lines(export / f"usage-{day}.manifest.json")
        assert manifest["day"] == day and sorted(x["request_id"] for x in lines) == sorted(f"old-{i}" for i in range(50))

        out = tmp_path / "cli-export"
        done = subprocess.run([sys.executable, "-m", "sluice", "usage", "export", "--day",
                               time.strftime("%Y-%m-%d", time.gmtime(today * DAY)), "--out", str(out),
                               "-c", str(g.config_path), "-o", "json"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        printed = json.loads(done.stdout)
        manifest, lines = manifest_and_lines(out / f"usage-{printed['day']}.manifest.json")
        assert manifest == printed
        assert ids <= {x["request_id"] for x in lines}  # (a request just before midnight UTC lands on the next day)
        assert [c["name"] for c in manifest["columns"]] == list(lines[0])
        bad = subprocess.run([sys.executable, "-m", "sluice", "usage", "export", "--day", "19-11-2026",
                              "-c", str(g.config_path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert bad.returncode != 0 and "YYYY-MM-DD" in bad.stdout + bad.stderr
        assert "Traceback" not in g.log()
    finally:
        g.stop()
        sim.stop()
        if kind == "postgres":
            asyncio.run(drop_pg_database(url))
