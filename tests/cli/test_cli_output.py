"""The CLI for people and for scripts (issue 26): names wherever an identity or key is asked for, a leaked
key traced, usage per key, control-plane keys, tables that fit 80 columns in a pipe, -o json, times as
people write them, money as plain decimals, and --help without typer's type noise. Against a real gateway."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
import typer

from support import start_gateway

from sluice.admin.chargeback import cost_text
from sluice.cli import app
from sluice.cli.output import money
from sluice.cli.params import parse_time, tidy_help
from sluice.identity import display

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
DISPLAY = re.compile(r"\b(?:slk_(?:dev|prod)|sla)_[0-9A-Za-z]{4}…[0-9A-Za-z]{4}\b")


@pytest.fixture(scope="module")
def gw(sim, tmp_path_factory):
    g = start_gateway(tmp_path_factory.mktemp("cli"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "alice@example.com", "team": "shop", "models": ["*"]},
                                  {"name": "reports", "owner": "alice@example.com", "models": ["*"]}],
                      extra={"teams": [{"name": "shop", "owner": "alice@example.com"}],
                             "prices": {"sim-small": {"input": 0.5, "output": 1.5}}})
    for who, n in (("app", 3), ("reports", 1)):
        for _ in range(n):
            assert g.post("/v1/chat/completions", g.keys[who], json=CHAT).status_code == 200
    yield g
    g.stop()


def sluice(g, *args: str, key: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    """The command as an operator runs it in a pipe (no COLUMNS: rich's 80)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update({"SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": key or g.admin_key})
    done = subprocess.run([sys.executable, "-m", "sluice", *args], env=env, capture_output=True, text=True, timeout=60)
    if ok:
        assert done.returncode == 0, f"sluice {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done


def keys_of(g, name: str) -> list[dict]:
    return json.loads(sluice(g, "keys", "list", name, "-o", "json").stdout)["data"]


def test_keys_issue_plane_control_gives_an_identity_with_a_control_role_its_control_plane_key(gw):
    name = f"auditor-{time.time_ns() % 10**6}"
    sluice(gw, "identities", "create", name, "--owner", "audit@example.com", "--role", "auditor")
    refused = sluice(gw, "keys", "issue", name, ok=False)  # the default, a data-plane key, it cannot hold
    assert refused.returncode == 1 and f"sluice keys issue {name} --plane control" in refused.stderr
    got = json.loads(sluice(gw, "keys", "issue", name, "--plane", "control", "-o", "json").stdout)
    assert got["plane"] == "control" and got["key"].startswith("sla_")
    who = httpx.get(gw.admin_url + "/admin/whoami", headers={"Authorization": f"Bearer {got['key']}"}, timeout=10)
    assert who.status_code == 200 and who.json()["name"] == name and who.json()["roles"] == ["auditor"]
    assert gw.post("/v1/chat/completions", got["key"], json=CHAT).status_code == 401  # and the reverse


def test_an_identity_and_a_key_are_taken_by_name_id_or_display_form_and_a_miss_says_how_to_list_them(gw):
    ident = next(i for i in gw.admin("GET", "/admin/identities").json()["data"] if i["name"] == "reports")
    assert keys_of(gw, "reports") == keys_of(gw, ident["id"])
    shown = sluice(gw, "identities", "show", "reports").stdout
    assert ident["id"] in shown and "alice@example.com" in shown and "None" not in shown
    secret = json.loads(sluice(gw, "keys", "issue", "reports", "-o", "json").stdout)["key"]
    assert gw.post("/v1/chat/completions", secret, json=CHAT).status_code == 200
    done = sluice(gw, "keys", "revoke", display(secret).replace("…", "..."))  # by its display form, as a scanner shows it
    assert done.stdout.startswith("revoked key-") and "of reports" in done.stdout
    assert gw.post("/v1/chat/completions", secret, json=CHAT).status_code == 401
    missing = sluice(gw, "keys", "list", "nobody-here", ok=False)
    assert missing.returncode == 1 and "no identity named 'nobody-here'" in missing.stderr
    assert "sluice identities" in missing.stderr
    missing = sluice(gw, "keys", "rotate", "slk_dev_zzzz…zzzz", ok=False)
    assert missing.returncode == 1 and "no key 'slk_dev_zzzz…zzzz'" in missing.stderr and "sluice keys list" in missing.stderr


def test_keys_find_traces_a_whole_key_its_display_form_or_its_id_and_never_prints_the_secret(gw):
    secret = gw.keys["app"]
    key_id = keys_of(gw, "app")[0]["id"]
    shown = display(secret)
    for form in (secret, shown, shown.replace("…", "..."), key_id):
        out = sluice(gw, "keys", "find", form).stdout
        for needle in ("app", "alice@example.com", "shop", key_id, shown, "data"):
            assert needle in out, (form, needle, out)
        assert secret not in out and "None" not in out
        got = json.loads(sluice(gw, "keys", "find", form, "-o", "json").stdout)["data"]
        assert [(f["identity"]["name"], f["key"]["id"]) for f in got] == [("app", key_id)]
        assert secret not in json.dumps(got) and "hash" not in got[0]["key"]
    unknown = "slk_dev_" + secret[8:-10] + "Zz" + secret[-8:]  # well formed but nobody's (its checksum is wrong anyway)
    for form in (unknown, display(gw.keys["reports"])[:-1] + "Q"):
        miss = sluice(gw, "keys", "find", form, ok=False)
        assert miss.returncode == 1 and "no key matches" in miss.stderr and unknown not in miss.stderr + miss.stdout


def test_usage_per_key_and_of_one_key_on_the_summary_endpoint_and_the_cli(gw):
    app_key = keys_of(gw, "app")[0]
    by_key = gw.admin("GET", "/admin/usage/summary?by=key").json()
    groups = {g["key"]: g for g in by_key["data"]}
    assert groups[app_key["id"]]["requests"] >= 3 and groups[app_key["id"]]["name"] == app_key["display"]
    assert sum(g["requests"] for g in by_key["data"]) == by_key["totals"]["requests"]
    one = gw.admin("GET", f"/admin/usage/summary?by=identity&key={app_key['id']}").json()
    assert [(g["name"], g["requests"]) for g in one["data"]] == [("app", groups[app_key["id"]]["requests"])]
    out = sluice(gw, "usage", "--key", app_key["display"], "--since", "1h").stdout
    assert f"of key {app_key['id']} ({app_key['display']}, app)" in out
    assert re.search(rf"^sim-small\s+{groups[app_key['id']]['requests']}\s", out, re.M), out
    people = sluice(gw, "usage").stdout
    assert re.search(r"^app\s+sim-small\s+\d+", people, re.M) and "cfg-app" not in people  # names, not ids
    teams = sluice(gw, "usage", "--by", "team", "-o", "csv").stdout.splitlines()
    assert any(row.startswith("(no team),") for row in teams) and not any(row.startswith(",") for row in teams)


def test_every_table_fits_80_columns_in_a_pipe_without_cutting_a_word_or_printing_none(gw):
    app_key = keys_of(gw, "app")[0]
    commands = [["identities"], ["identities", "--include-disabled"], ["identities", "show", "app"], ["teams", "list"],
                ["keys", "list", "app"], ["keys", "find", app_key["id"]], ["usage"], ["usage", "--by", "identity"],
                ["usage", "--by", "key"], ["usage", "--by", "team"], ["usage", "--by", "day"], ["usage", "--by", "model"],
                ["policy", "versions"], ["policy", "show"], ["policy", "changes"], ["routes", "list"]]
    whole = ["alice@example.com", "app", "reports", "shop", "sim-small", "(no team)", app_key["display"], app_key["id"]]
    for args in commands:
        out = sluice(gw, *args).stdout
        assert out.strip() and "None" not in out, (args, out)
        for row in out.splitlines():
            assert len(row) <= 80 and row == row.rstrip(), (args, row)  # fitted, and no padding left in a pipe
        assert not re.search(r"\S*…\S*", DISPLAY.sub("", out)), (args, out)  # only a key's display form has an ellipsis
        for value in whole:  # a value shows whole or not at all
            for part in re.findall(re.escape(value[:4]) + r"[^\s,]*", out):
                assert not (value.startswith(part) and part != value and len(part) > 4) or part in whole, (args, part, out)


def test_json_for_scripts_on_every_command_that_prints_one(gw):
    for args in (["identities"], ["identities", "show", "app"], ["teams", "list"], ["keys", "list", "app"],
                 ["keys", "find", display(gw.keys["app"])], ["usage"], ["usage", "--by", "key"],
                 ["policy", "versions"], ["policy", "show"], ["policy", "changes"], ["routes", "list"]):
        out = sluice(gw, *args, "-o", "json").stdout
        assert isinstance(json.loads(out), (dict, list)), args
    made = json.loads(sluice(gw, "identities", "create", f"js-{time.time_ns() % 10**6}", "--owner", "o@example.com",
                             "-o", "json").stdout)
    assert made["id"].startswith("id-") and made["team"] is None  # the API's answer as it is: null stays null in JSON
    bad = sluice(gw, "policy", "versions", "-o", "yaml", ok=False)
    assert bad.returncode == 2 and "'yaml' is not one of table, json" in bad.stderr


def test_since_and_until_take_rfc3339_a_time_ago_and_unix_seconds(gw):
    now = time.time()
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20Z") == parse_time("2023-11-14T22:13:20+00:00") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20") == 1700000000.0  # no zone: UTC
    assert parse_time("7d", now=now) == now - 7 * 86400 and parse_time("1h30m", now=now) == now - 5400
    since = json.loads(sluice(gw, "usage", "--since", "1h", "--until", "2099-01-01T00:00:00Z", "-o", "json").stdout)
    assert abs(since["since"] - (time.time() - 3600)) < 120 and since["until"] == parse_time("2099-01-01T00:00:00Z")
    assert since["totals"]["requests"] >= 4
    bad = sluice(gw, "usage", "--since", "yesterday", ok=False)
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr and "7d" in bad.stderr


def test_money_reads_as_plain_decimals(gw):
    assert [cost_text(n) for n in (0, 13_000, 1_050, 30 * 10**9, 12_500_000_000)] == ["0", "0.000013", "0.00000105", "30", "12.5"]
    assert [money(v) for v in ("0E-9", "0.000013000", "30.000000000", None)] == ["0", "0.000013", "30", "—"]
    rows = gw.admin("GET", "/admin/usage/summary?by=team").json()
    for g in rows["data"] + [rows["totals"]]:
        assert "E" not in g["cost"] and (g["cost"] == "0" or not g["cost"].endswith("0")), g


def _commands(cmd, path=()):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _help(command, path: tuple[str, ...]) -> str:
    """``sluice PATH --help`` as the command prints it (in this process: one subprocess per command is slow)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            command.main([*path, "--help"], prog_name="sluice", standalone_mode=False)
        except SystemExit as exc:
            assert not exc.code, (path, buf.getvalue())
    return buf.getvalue()


def test_help_names_arguments_and_options_without_type_noise(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERM", "dumb")
    command = tidy_help(typer.main.get_command(app))
    paths = list(_commands(command))
    assert ("keys", "find") in paths and ("switch", "revoke") in paths
    for path in paths:
        got = _help(command, path)
        assert "Usage: sluice" in got, (path, got)
        for noise in ("<str>", "<bool>", "<float>", "<int>", "<path>", "<int,int>", "<list"):
            assert noise not in got, (path, noise, got)
    issue = _help(command, ("keys", "issue"))
    assert "IDENTITY" in issue and "--plane" in issue and "data|control" in issue
