"""Config is typed and fails loud; the CLI starts what the README says it starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import free_port


def sluice(*args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_config_schema_is_json_schema():
    r = sluice("config", "schema")
    schema = json.loads(r.stdout)
    assert "$defs" in schema and "Config" in schema["$defs"]


@pytest.mark.parametrize("yaml_text,needle", [
    ("data_plane: {port: 'http'}", "$.data_plane.port"),
    ("upstreams: [{name: a, base_url: 'file:///etc/passwd'}]", "$.upstreams[0].base_url"),
    ("models: [{name: m, upstream: nowhere}]", "$.models[0].upstream"),
    ("bogus_section: 1", "bogus_section"),
    ("identities: [{name: x, owner: o, keys: ['${SLUICE_TEST_UNSET_VAR}']}]", "SLUICE_TEST_UNSET_VAR"),
    ("identities: [{name: x, owner: o, keys: [short]}]", "$.identities[0].keys[0]"),
    ("data_plane: {server: aiohttp}", "aiohttp data-plane server is retired"),  # issue 23.21: said, not silently moved
    ("a: [unclosed", "not valid YAML"),
    # a model's tokenizer: a file that is missing, or one that is not a tokenizer.json (this config)
    ("upstreams: [{name: u, base_url: 'http://127.0.0.1:9'}]\nmodels: [{name: m, upstream: u, tokenizer: gone.json}]",
     "$.models[0].tokenizer"),
    ("upstreams: [{name: u, base_url: 'http://127.0.0.1:9'}]\nmodels: [{name: m, upstream: u, tokenizer: c.yaml}]",
     "$.models[0].tokenizer"),
])
def test_invalid_config_names_the_field_and_stops(tmp_path, yaml_text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    r = sluice("serve", "--config", str(p), cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr.replace("\n", "")
    assert "Traceback" not in r.stderr


def test_env_interpolation_fills_secrets(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("admin: {keys: ['${SLUICE_TEST_ADMIN}']}\n")
    env_ok = subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(p)], capture_output=True, text=True,
                            env={**__import__("os").environ, "SLUICE_TEST_ADMIN": "x" * 24})
    assert env_ok.returncode == 0 and "valid" in env_ok.stdout


def test_demo_serves_a_real_request_and_prints_working_examples(tmp_path):
    port, admin = free_port(), free_port()
    r = sluice("demo", "--once", "--port", str(port), "--admin-port", str(admin), cwd=tmp_path, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "-> 200" in out and "chat.completion" in out
    assert f"http://127.0.0.1:{port}/v1" in out and "curl" in out and "from openai import OpenAI" in out
    assert "slk_dev_" in out


def test_config_check_reads_the_store_but_never_migrates_it(tmp_path):
    """`sluice config check` looks for revoked declared keys in the store; it must not create
    tables or apply migrations to a database it was only asked to read."""
    import sqlite3

    db = tmp_path / "s.db"
    sqlite3.connect(db).close()  # an existing, empty database
    (tmp_path / "pepper").write_text("p" * 32)
    p = tmp_path / "c.yaml"
    p.write_text(f"store: {{url: 'sqlite:///{db}'}}\nsecurity: {{pepper_file: '{tmp_path / 'pepper'}'}}\n"
                 "identities: [{name: svc, owner: o, keys: ['slk_dev_" + "a" * 40 + "']}]\n")
    r = sluice("config", "check", str(p), cwd=tmp_path)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    tables = sqlite3.connect(db).execute("select name from sqlite_master where type = 'table'").fetchall()
    assert tables == []
