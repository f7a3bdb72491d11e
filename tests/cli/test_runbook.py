"""docs/runbook.md is a test: both scenarios are read from the file and run command by command, exactly as
written (bash, the ``sluice`` command, 80 columns), against a real gateway with two operators, each holding
a control-plane key of its own identity issued with ``sluice keys issue NAME --plane control``. Each step's
printed output is checked for what the runbook says it shows, and its effect on the data plane where it
has one. A command added to or changed in the runbook fails here until its check is written."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Callable

import httpx
import pytest

from support import start_gateway

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
VERSIONS = [{"version": v, "upstream": "sim", "upstream_model": "sim-small", "approved": True} for v in ("v1", "v2", "v3")]
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def scenario(number: int) -> list[str]:
    """The commands of section ``## N.``'s sh block: every line that is not blank or a comment, as written."""
    text = RUNBOOK.read_text()
    section = text.split(f"\n## {number}. ", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class Operator:
    """A shell in which the runbook's commands run: ``sluice`` on the PATH (this checkout, this Python), the
    control plane in SLUICE_ADMIN_URL and SLUICE_ADMIN_KEY, and the incident's variables."""

    def __init__(self, g, tmp: Path, key: str) -> None:
        bin_dir = tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "sluice"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sluice "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        self.cwd = tmp
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLUICE_ADMIN_URL": g.admin_url,
                    "SLUICE_ADMIN_KEY": key, "COLUMNS": "80", "TERM": "dumb",
                    "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        self.transcript: list[str] = []

    def run(self, line: str) -> str:
        done = subprocess.run(["bash", "-c", line], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
        self.transcript.append(f"$ {line}\n{out}")
        assert done.returncode == 0, f"{line}\nexited {done.returncode}:\n{out}"
        assert "Traceback" not in out and "None" not in out, f"{line}:\n{out}"
        return out


def make_operator(g, name: str, roles: list[str]) -> str:
    """An operator's identity and its control-plane key, made with the CLI as a key-admin would."""
    env = {**os.environ, "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": g.admin_key}

    def sluice(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "sluice", *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    sluice("identities", "create", name, "--owner", f"{name}@example.com", *[a for r in roles for a in ("--role", r)])
    return json.loads(sluice("keys", "issue", name, "--plane", "control", "-o", "json"))["key"]


def chat(g, key: str, model: str = "chat") -> httpx.Response:
    return g.post("/v1/chat/completions", key, json={**CHAT, "model": model})


def targets(g, key: str, n: int = 10) -> Counter:
    seen: Counter = Counter()
    for _ in range(n):
        r = chat(g, key)
        assert r.status_code == 200, r.text
        seen[r.headers["x-sluice-route"].split("target=")[1]] += 1
    return seen


def command(line: str) -> str:
    """A runbook line without its trailing comment: what its check is filed under (the line runs whole)."""
    return re.sub(r"\s+#\s.*$", "", line)


def run_scenario(op: Operator, number: int, checks: dict[str, Callable[[str], dict | None]], request) -> None:
    commands = scenario(number)
    assert [command(c) for c in commands] == list(checks), "the runbook's commands changed: write their checks here"
    try:
        for line in commands:
            out = op.run(line)
            found = checks[command(line)](out) or {}
            op.env.update({k: str(v) for k, v in found.items()})
    finally:  # the transcript is the test's output: what an operator following the runbook saw
        print(f"\n==== docs/runbook.md, scenario {number} ({request.node.name})\n" + "\n".join(op.transcript))


@pytest.fixture()
def leak(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "alice@example.com", "team": "shop", "models": ["*"]},
                                  {"name": "reports", "owner": "alice@example.com", "models": ["*"]},
                                  {"name": "other", "owner": "bob@example.com", "models": ["*"]}],
                      extra={"teams": [{"name": "shop", "owner": "alice@example.com"}],
                             "prices": {"sim-small": {"input": 0.5, "output": 1.5}}})
    yield g
    g.stop()


def test_scenario_1_a_leaked_key_as_written(leak, tmp_path, request):
    g = leak
    sam = make_operator(g, "ops-sam", ["operator", "key-admin"])
    make_operator(g, "ops-kim", ["operator"])
    leaked = g.keys["app"]
    for _ in range(3):
        assert chat(g, leaked, "sim-small").status_code == 200
    key = next(k for k in g.admin("GET", f"/admin/identities/{ident(g, 'app')}/keys").json()["data"])
    display = key["display"]
    op = Operator(g, tmp_path, sam)
    op.env["LEAKED_KEY"] = leaked

    def check(out: str) -> None:
        assert f"valid sluice data key, environment dev: {display}" in out

    def find(out: str) -> None:
        for needle in ("app", "alice@example.com", "shop", key["id"], display, "active"):
            assert needle in out, needle
        assert leaked not in out  # never the secret

    def listed(out: str) -> None:
        assert "keys of app" in out and key["id"] in out and display in out and "active" in out

    def revoke_identity(out: str) -> None:
        assert out.startswith("revoked 1 credential of app")
        assert chat(g, leaked, "sim-small").status_code == 401  # its very next request
        assert chat(g, g.keys["reports"], "sim-small").status_code == 200  # nothing else touched

    def revoke_owner(out: str) -> None:
        assert out.startswith("revoked 1 credential of app, reports")
        assert chat(g, g.keys["reports"], "sim-small").status_code == 401 and chat(g, g.keys["other"], "sim-small").status_code == 200

    def freeze(out: str) -> None:
        assert "the control plane is frozen" in out and g.admin("GET", "/admin/policy").json()["frozen"] is True

    def usage(out: str) -> None:
        assert f"of key {key['id']} ({display}, app)" in out
        rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
        assert rows["sim-small"][1] == "3" and rows["TOTAL"][1] == "3"  # the three requests it made
        assert re.fullmatch(r"\d+(\.\d*[1-9])?", rows["TOTAL"][-1])  # cost as a plain decimal

    def unfreeze(out: str) -> None:
        assert "unfrozen" in out and g.admin("GET", "/admin/policy").json()["frozen"] is False

    def issue(out: str) -> None:
        new = re.search(r"^key\s+(slk_dev_\S+)$", out, re.M).group(1)
        assert chat(g, new, "sim-small").status_code == 200 and chat(g, leaked, "sim-small").status_code == 401
        assert "identity  app (" in out and "shown this once" in out

    run_scenario(op, 1, {
        'sluice keys check "$LEAKED_KEY"': check,
        'sluice keys find "$LEAKED_KEY"': find,
        "sluice keys list app": listed,
        'sluice switch revoke --identity app --reason "key for app posted on github, INC-123"': revoke_identity,
        'sluice switch revoke --owner alice@example.com --reason "laptop stolen, INC-123"': revoke_owner,
        'sluice switch freeze --reason "INC-123: investigating"': freeze,
        'sluice usage --key "$LEAKED_KEY" --since 7d': usage,
        'sluice switch unfreeze --reason "INC-123: contained"': unfreeze,
        "sluice keys issue app --ttl-days 30": issue,
    }, request)
    actors = {c["actor"] for c in g.admin("GET", "/admin/changes?limit=20").json()["data"] if c["action"].startswith("switch.")}
    assert actors == {"ops-sam"}  # the change log names the operator, not a shared key


def ident(g, name: str) -> str:
    return next(i["id"] for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == name)


@pytest.fixture()
def release(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5}], models=[],
                      identities=[{"name": "app", "owner": "alice@example.com", "models": ["*"]}],
                      extra={"registry": [{"name": "chat", "versions": VERSIONS}],
                             "routes": [{"name": "chat", "match": {"models": ["chat"]},
                                         "targets": [{"target": "chat@v1", "weight": 100}]}],
                             "policy": {"prod": ["routing", "limits"]}})
    yield g
    g.stop()


EDITOR = textwrap.dedent("""\
    import sys, yaml
    path = sys.argv[1]
    doc = yaml.safe_load(open(path))
    for route in doc["routing"]["routes"]:
        if route["name"] == "chat":
            route["targets"] = [{"target": "chat@v1", "weight": 95}, {"target": "chat@v3", "weight": 5}]
    open(path, "w").write(yaml.safe_dump(doc))
""")


def test_scenario_2_a_bad_model_release_as_written(release, tmp_path, request):
    g = release
    sam = make_operator(g, "ops-sam", ["operator", "key-admin"])
    kim = make_operator(g, "ops-kim", ["operator"])
    app = g.keys["app"]

    def as_(key: str, method: str, path: str, body: dict) -> httpx.Response:
        return httpx.request(method, g.admin_url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=10)

    # the release: v2 at 10%, proposed by one operator and approved by the other (routing is prod)
    proposed = as_(sam, "POST", "/admin/policy/changes", {"reason": "v2 canary at 10%", "sections": {"routing": {
        **g.admin("GET", "/admin/policy/versions/1?format=json").json()["document"]["routing"],
        "routes": [{"name": "chat", "match": {"models": ["chat"]},
                    "targets": [{"target": "chat@v1", "weight": 90}, {"target": "chat@v2", "weight": 10}]}]}}})
    assert proposed.status_code == 202, proposed.text
    assert as_(kim, "POST", f"/admin/policy/changes/{proposed.json()['id']}/approve", {"reason": "ok"}).status_code == 200
    served = chat(g, app)
    assert served.status_code == 200 and served.headers["x-sluice-policy"].startswith("2-")
    editor = tmp_path / "editor"
    editor.write_text(f"#!{sys.executable}\n{EDITOR}")
    editor.chmod(editor.stat().st_mode | stat.S_IEXEC)
    op = Operator(g, tmp_path, sam)
    op.env.update({"SECOND_OPERATOR_KEY": kim, "REQUEST_ID": served.headers["x-request-id"], "EDITOR": str(editor)})

    def policy() -> dict:
        return g.admin("GET", "/admin/policy").json()

    def kill(out: str) -> None:
        assert "chat@v2 is switched off, chat@v1 takes its traffic" in out and "policy version 3" in out
        assert targets(g, app) == {"chat@v1": 10}

    def limit(out: str) -> None:
        assert "chat is limited to 600 requests/min" in out
        rule = next(r for r in g.admin("GET", "/admin/limits").json()["rules"] if r["name"] == "switch-chat")
        assert rule["requests_per_minute"] == 600 and rule["match"] == {"model": "chat"}

    def why(out: str) -> None:
        for needle in (op.env["REQUEST_ID"], "route", "chat (takes models chat)", "chat@v1 weight 90", "chat@v2 weight 10",
                       "version 2 (sha256:"):
            assert needle in out, needle

    def versions(out: str) -> dict:
        assert "* active: 4" in out and "INC-124: v1 alone" in out and "ops-sam" in out
        release_line = next(line for line in out.splitlines() if "v2 canary at 10%" in line)
        before = int(release_line.split()[0]) - 1
        assert before == g.admin("GET", "/admin/policy/versions").json()["data"][-2]["parent"] == 1
        return {"BEFORE": before}

    def warned(out: str) -> None:
        assert "-    weight: 10\n" in out or "-  - target: chat@v2" in out or "chat@v2" in out  # the diff names v2
        assert "it switches target chat@v2 back on (killed now)" in out
        assert "it lifts the switch limit on chat" in out

    def dry_run(out: str) -> None:
        warned(out)
        last = next(line for line in out.splitlines() if line.startswith("would restore"))
        assert last.startswith("would restore version 1 over version 4 (routing, limits, switches): waits for a second "
                               "operator: version 1 is not the parent of the active version 4"), last
        assert policy()["version"] == 4

    def rollback(out: str) -> dict:
        warned(out)
        cid = re.search(r"sluice policy approve (rollback-1-[0-9a-f]+) --reason", out).group(1)
        assert policy()["version"] == 4  # waits
        return {"ROLLBACK": cid}

    def approve_rollback(out: str) -> None:
        assert "approved rollback to version 1: version 5 is active" in out
        assert policy()["hash"] == g.admin("GET", "/admin/policy/versions/1?format=json").json()["hash"]
        assert targets(g, app) == {"chat@v1": 10}
        assert g.admin("GET", "/admin/changes?limit=1").json()["data"][0]["actor"] == "ops-kim"

    def exported(out: str) -> None:
        assert out == "" and (tmp_path / "policy.yaml").read_text().startswith("# sluice policy version 5 sha256:")

    def edited(out: str) -> None:
        assert "chat@v3" in (tmp_path / "policy.yaml").read_text()

    def propose(out: str) -> dict:
        assert "+++ changeset-" in out and re.search(r"^\+\s+- target: chat@v3$", out, re.M)  # the diff as a diff
        assert "dry run: sections routing; routes chat" in out
        cid = re.search(r"change set (\w+) waits for a second operator: sluice policy approve \1", out).group(1)
        assert policy()["version"] == 5
        return {"CHANGESET": cid}

    def diff(out: str) -> None:
        assert re.search(r"^\+\s+- target: chat@v3$", out, re.M) and "dry run: sections routing" in out
        assert f"change set {op.env['CHANGESET']} waits for a second operator" in out

    def approve_change(out: str) -> None:
        assert f"approved change set {op.env['CHANGESET']}: version 6 is active" in out
        assert set(targets(g, app, 40)) <= {"chat@v1", "chat@v3"}

    def show(out: str) -> None:
        fields = [line for line in out.splitlines() if re.search(r"\S\s{2,}\S", line)]
        rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in fields)
        assert rows["version"] == "6" and rows["frozen"] == "no" and rows["killed targets"] == "—"
        assert "no switch in force" in out  # the rollback lifted them all
        assert rows["sha256"] == policy()["hash"]

    run_scenario(op, 2, {
        'sluice switch disable-target chat@v2 --fallback chat@v1 --reason "v2 returns empty answers, INC-124"': kill,
        'sluice switch limit chat --rpm 600 --reason "INC-124: v1 alone"': limit,
        'sluice routes why "$REQUEST_ID"': why,
        'sluice policy versions': versions,
        'sluice policy rollback "$BEFORE" --dry-run': dry_run,
        'sluice policy rollback "$BEFORE" --reason "INC-124: back to before the v2 canary"': rollback,
        'SLUICE_ADMIN_KEY=$SECOND_OPERATOR_KEY sluice policy approve "$ROLLBACK" --reason "INC-124 reviewed"': approve_rollback,
        "sluice policy export > policy.yaml": exported,
        '"${EDITOR:-vi}" policy.yaml': edited,
        'sluice policy propose policy.yaml --reason "v3 canary at 5%"': propose,
        'sluice policy diff "$CHANGESET"': diff,
        'SLUICE_ADMIN_KEY=$SECOND_OPERATOR_KEY sluice policy approve "$CHANGESET" --reason "dry run reviewed"': approve_change,
        "sluice policy show": show,
    }, request)
