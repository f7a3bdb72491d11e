"""The README's CLI tour in an 80x24 tmux session: each command is typed into a real terminal, and what it
leaves on the screen is checked. No line of output relies on the terminal to wrap it (the terminal cuts a
word wherever column 80 falls), no value is cut to an ellipsis (a key's display form has the only `…`),
no name or e-mail shows in part, no `None` and no error. Every screen is printed, so it is in the test's
output. tmux comes from `make install` (apt), like the dashboard test's chromium; in CI its absence fails."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import IN_CI, start_gateway

README = Path(__file__).resolve().parents[2] / "README.md"
TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None and not IN_CI, reason="tmux is installed by `make install`")
PROMPT = "tour$"
ROWS, COLS = 24, 80
DISPLAY = re.compile(r"\b(?:slk_(?:dev|prod)|sla)_[0-9A-Za-z]{4}…[0-9A-Za-z]{4}\b")
# what the tour shows whole wherever it shows it (names, owners, models), and the other words they start
WHOLE = ["demo-app", "you@example.com", "checkout-bot", "payments@example.com", "sim-small", "sim-embed"]
WORDS = set(WHOLE) | {"payments"}  # the team


def tour() -> list[str]:
    """The commands of the README's tour, as written."""
    text = README.read_text()
    block = text.split("**A tour of the CLI.**", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


class Terminal:
    """A tmux session of its own (own server socket), 80x24, running bash with the tour's environment."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        assert TMUX is not None, "tmux is not installed: `make install` installs it (apt-get install tmux)"
        self.socket = f"sluice-tour-{os.getpid()}-{time.monotonic_ns()}"
        # the shell's whole start-up: its prompt, a signal on a tmux channel each time it shows it (so the test
        # knows a command is done without guessing from the screen), the tour's variables
        rc = tmp / "tour.bashrc"
        signal = f"{shlex.quote(TMUX)} -L {self.socket} wait-for -S prompt"
        rc.write_text(f"PS1={shlex.quote(PROMPT + ' ')}\nPROMPT_COMMAND={shlex.quote(signal)}\n"
                      + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        self.tmux("new-session", "-d", "-s", "tour", "-x", str(COLS), "-y", str(ROWS),
                  f"env -u TMUX bash --noprofile --rcfile {shlex.quote(str(rc))} -i")
        self.tmux("set-option", "-t", "tour", "history-limit", "5000")
        self.wait_prompt()

    def tmux(self, *args: str) -> str:
        done = subprocess.run([TMUX, "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"tmux {args[0]}: {done.stderr}"
        return done.stdout

    def screen(self, *flags: str) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "tour", *flags).rstrip("\n").split("\n")

    def wait_prompt(self, timeout: float = 120.0) -> None:
        """Until the shell has shown its prompt again (a tmux channel remembers a signal nobody waited for yet)."""
        try:
            subprocess.run([TMUX, "-L", self.socket, "wait-for", "prompt"], timeout=timeout, check=True)
        except subprocess.TimeoutExpired:
            raise AssertionError("the command did not finish:\n" + "\n".join(self.screen())) from None

    def run(self, command: str) -> tuple[list[str], list[str]]:
        """Type ``command`` on a cleared screen; (what the terminal shows, rows as the terminal wrapped them;
        the same joined back into the lines the program wrote), history included."""
        self.tmux("send-keys", "-t", "tour", "clear", "Enter")
        self.wait_prompt()
        self.tmux("clear-history", "-t", "tour")
        self.tmux("send-keys", "-t", "tour", "-l", command)
        self.tmux("send-keys", "-t", "tour", "Enter")
        self.wait_prompt()
        shown = self.screen("-S", "-", "-E", "-")
        written = self.screen("-J", "-S", "-", "-E", "-")
        return _trim(shown), _trim(written)

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def _trim(rows: list[str]) -> list[str]:
    """The rows from the typed command to the prompt after it (the shell signals just before drawing it)."""
    start = next(i for i, r in enumerate(rows) if r.startswith(PROMPT + " "))
    end = len(rows)
    while end > start + 1 and rows[end - 1].rstrip() in ("", PROMPT):
        end -= 1
    return rows[start:end]


@pytest.fixture()
def demo_like(sim, tmp_path):
    """A gateway as `make demo` starts one: sim-small and sim-embed on the sim, demo-app owned by you@example.com."""
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}],
                      identities=[{"name": "demo-app", "owner": "you@example.com", "models": ["sim-*"]}],
                      extra={"prices": {"sim-small": {"input": 0.5, "output": 1.5}}})
    yield g
    g.stop()


def test_the_readme_cli_tour_reads_whole_in_an_80_by_24_terminal(demo_like, tmp_path):
    g = demo_like
    for _ in range(2):  # the demo's curl, twice
        assert g.post("/v1/chat/completions", g.keys["demo-app"],
                      json={"model": "sim-small", "messages": [{"role": "user", "content": "Hello!"}]}).status_code == 200
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "sluice"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m sluice "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    root = str(Path(__file__).resolve().parents[2])
    term = Terminal(tmp_path, {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": root,
                               "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": g.admin_key,
                               "APP_KEY": g.keys["demo-app"], "HOME": str(tmp_path), "LANG": "C.UTF-8"})
    captures: list[str] = []
    problems: list[str] = []
    try:
        for command in tour():
            shown, written = term.run(command)
            output = written[1:]  # the typed command is the shell's, not ours
            for i in range(0, len(shown), ROWS):
                captures.append(f"---- {command}  (screen {i // ROWS + 1})\n" + "\n".join(r.rstrip() for r in shown[i:i + ROWS]))
            text = "\n".join(output)
            for row in output:
                if len(row.rstrip()) > COLS:
                    problems.append(f"{command}: a line the terminal had to wrap (a word cut at column {COLS}):\n{row}")
            for cut in re.finditer(r"\S*…\S*", DISPLAY.sub("", text)):
                problems.append(f"{command}: a value cut to an ellipsis: {cut.group()}")
            for value in WHOLE:
                for part in re.finditer(re.escape(value[:6]) + r"\S*", text):
                    if not value.startswith(part.group()) and not part.group().startswith(value):
                        continue
                    if value not in part.group() and part.group().rstrip(",.") not in WORDS:
                        problems.append(f"{command}: {value} shows only as {part.group()!r}")
            if "None" in text or "Traceback" in text or re.search(r"^(Error|\d{3} )|─ Error ─", text, re.M):
                problems.append(f"{command}: None, an error or a traceback:\n{text}")
    finally:
        term.close()
        transcript = "\n".join(captures)
        (tmp_path / "tour-screens.txt").write_text(transcript)
        print(f"\n==== the README's CLI tour at {COLS}x{ROWS} ({len(captures)} screens)\n{transcript}")
    assert len(captures) >= len(tour())
    assert not problems, "\n\n".join(problems)
    listed = subprocess.run([sys.executable, "-m", "sluice", "keys", "list", "checkout-bot", "-o", "json"], capture_output=True,
                            text=True, env={**os.environ, "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": g.admin_key})
    assert '"identity_id"' in listed.stdout  # the tour's last command, for scripts: the API's own answer
