"""A port that is taken stops `sluice demo`, `sluice sim` and `sluice serve` with one line that names
the flag or config key to change: no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import yaml

from support import free_port


@pytest.fixture()
def held():
    """A port something else listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", free_port()))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, timeout=90, cwd=cwd)


def _one_line(r: subprocess.CompletedProcess, port: int, setting: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "╭" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("cannot start")]
    assert lines == [f"cannot start: cannot listen on 127.0.0.1:{port} (address already in use): stop what listens "
                     f"there, or set another {setting}"], r.stderr


def test_a_busy_port_names_the_demo_flag(held, tmp_path):
    _one_line(_run("demo", "--once", "--port", str(held), "--admin-port", str(free_port()), cwd=tmp_path), held, "--port")
    _one_line(_run("demo", "--once", "--port", str(free_port()), "--admin-port", str(held), cwd=tmp_path), held,
              "--admin-port")


def test_a_busy_port_names_the_sim_flag(held, tmp_path):
    _one_line(_run("sim", "--port", str(held), cwd=tmp_path), held, "--port")


@pytest.mark.parametrize("setting", ["data_plane.port", "control_plane.port", "sim.port"])
def test_a_busy_port_names_the_config_key_and_file(held, tmp_path, setting):
    ports = {"data_plane": free_port(), "control_plane": free_port(), "sim": free_port()}
    ports[setting.split(".")[0]] = held
    cfg = {"data_plane": {"port": ports["data_plane"]}, "control_plane": {"port": ports["control_plane"]},
           "sim": {"port": ports["sim"]}, "store": {"url": f"sqlite:///{tmp_path}/s.db"},
           "security": {"pepper": "x" * 32}, "logging": {"level": "error"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _one_line(_run("serve", "--config", str(path), cwd=tmp_path), held, f"{setting} in {path}")
