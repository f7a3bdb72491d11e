"""`sluice demo` prints examples that run exactly as printed, whatever the terminal's width, and hands
over what the CLI needs: the control plane's URL and key as exports, the dashboard, its config file,
and a prod section with a second admin key to try a two-person change."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

from support import free_port


def _block(text: str, heading: str) -> str:
    """The lines after a ``# heading`` line, up to the next blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading)) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[start:end])


def _demo(tmp_path, *extra: str) -> tuple[subprocess.Popen, int]:
    port, admin = free_port(), free_port()
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    proc = subprocess.Popen([sys.executable, "-m", "sluice", "demo", "--port", str(port), "--admin-port", str(admin), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    proc.admin_port = admin  # type: ignore[attr-defined]
    return proc, port


def _bash(script: str, cwd) -> subprocess.CompletedProcess:
    """A printed block run as a newcomer would paste it: no SLUICE_ variables from this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_ADMIN")}
    return subprocess.run(["bash", "-c", "set -e\n" + script], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_demo_once_through_a_pipe_at_80_columns_prints_unpadded_whole_lines(tmp_path):
    proc, port = _demo(tmp_path, "--once")
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "-> 200" in out
    padded = [line for line in out.splitlines() if line != line.rstrip()]
    assert not padded, f"lines end in spaces: {padded[:3]}"
    curl = _block(out, "# curl")
    assert all(line.endswith("\\") for line in curl.splitlines()[:-1])  # continuations end the line
    key = re.search(r"API key\s+(\S+)", out).group(1)
    assert f"'Authorization: Bearer {key}'" in curl
    assert f'api_key="{key}",' in _block(out, "# openai SDK")


def test_the_printed_curl_and_python_run_as_printed_against_the_running_demo(tmp_path):
    proc, port = _demo(tmp_path)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("sluice is running"):
                break
        out = "".join(seen)
        assert "sluice is running" in out, out
        curl = subprocess.run(["bash", "-c", _block(out, "# curl")], capture_output=True, text=True, timeout=30)
        assert curl.returncode == 0 and '"chat.completion"' in curl.stdout, curl.stdout + curl.stderr
        py = subprocess.run([sys.executable, "-c", _block(out, "# openai SDK")], capture_output=True, text=True, timeout=60)
        assert py.returncode == 0, py.stderr
        assert len(py.stdout.strip()) > 0
        admin = subprocess.run(["bash", "-c", _block(out, "# admin")], capture_output=True, text=True, timeout=30)
        assert '"demo-app"' in admin.stdout, admin.stdout
        # the CLI block: the control plane's own URL (no /admin, which made the CLI call /admin/admin/...),
        # the key, and the demo's config file for the commands that read the store
        control = f"http://127.0.0.1:{proc.admin_port}"
        cli = _block(out, "# the sluice CLI")
        assert f"export SLUICE_ADMIN_URL={control}\n" in cli and "export SLUICE_ADMIN_KEY=sla_" in cli
        assert f"dashboard      {control}/admin/dashboard" in out
        config = re.search(r"^  config +(\S+)$", out, re.M).group(1)
        assert f"sluice audit verify -c {config}" in cli
        done = _bash(cli, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "no switch in force" in done.stdout and "Traceback" not in done.stderr
        # a two-person change, as printed: the proposer cannot approve it, the second admin can
        lines = _block(out, "# a two-person change").splitlines()
        steps = [line for line in lines if not line.startswith("#")]
        exports = "\n".join(line for line in cli.splitlines() if line.startswith((". ", "export ")))
        done = _bash(exports + "\n" + "\n".join(steps[:2]), tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        key = re.search(r"export SLUICE_ADMIN_KEY=(\S+)", cli).group(1)
        pending = httpx.get(control + "/admin/policy/changes", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]
        assert pending["status"] == "pending" and pending["sections"] == ["limits"], pending
        mine = _bash(exports + f"\nsluice policy approve {pending['id']} --reason mine", tmp_path)
        assert mine.returncode != 0 and "other than its proposer" in mine.stderr, mine.stdout + mine.stderr
        done = _bash(exports + "\n" + steps[2].replace(" ID ", f" {pending['id']} "), tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        rules = httpx.get(control + "/admin/limits", headers={"Authorization": f"Bearer {key}"}).json()
        assert "demo-rpm" in str(rules), rules
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
