"""`sluice demo` prints examples that run exactly as printed, whatever the terminal's width."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

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
    return proc, port


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
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
