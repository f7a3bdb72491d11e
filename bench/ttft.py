"""Time to first token through sluice against direct, on a paced upstream (issue 23.20).

The upstream (tests/http/paced.py) streams like a model: the first token after ``--first-ms`` (150),
then one every ``--every-ms`` (40); ``--head`` says when its head goes (at once, in one send with the
first token, or ``late``: in a send of its own just before the first token). The client is a raw
socket that times the head and the first content event from the moment its request is sent, at
concurrency 1, alternating direct and through sluice so both see the same machine. Prints the
medians and the time sluice adds.

    .venv/bin/python bench/ttft.py [--n 60] [--head at-once|with-token|late]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "http"))
from paced import serve_paced, time_stream  # the paced upstream the tests use too

KEY = "slk_dev_" + "b" * 36


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--first-ms", type=float, default=150)
    ap.add_argument("--every-ms", type=float, default=40)
    ap.add_argument("--head", choices=["at-once", "with-token", "late"], default="at-once",
                    help="when the upstream sends its head: at once, in one send with the first token, or in a send"
                         " of its own just before the first token")
    args = ap.parse_args()
    up, gw, cp = free_port(), free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve", str(up), str(args.first_ms), str(args.every_ms),
                                 args.head])
    tmp = Path(tempfile.mkdtemp())
    cfg = {"data_plane": {"port": gw}, "control_plane": {"port": cp},
           "store": {"url": f"sqlite:///{tmp}/s.db"}, "security": {"pepper": "p" * 32},
           "upstreams": [{"name": "paced", "base_url": f"http://127.0.0.1:{up}/v1", "allow_link_local": True}],
           "models": [{"name": "paced", "upstream": "paced"}],
           "identities": [{"name": "bench", "owner": "o", "models": ["*"], "keys": [KEY]}]}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "SLUICE_LOG_LEVEL": "warning"}
    gateway = subprocess.Popen([sys.executable, "-m", "sluice", "serve", "--config", str(tmp / "c.yaml")], env=env, cwd=tmp,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{gw}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("sluice did not start")
            time.sleep(0.1)
        direct, through = [], []
        for _ in range(3):  # warm both paths
            time_stream(up)
            time_stream(gw, KEY)
        for _ in range(args.n):
            direct.append(time_stream(up))
            through.append(time_stream(gw, KEY))
        d, t = (statistics.median(s[1] for s in direct) * 1000, statistics.median(s[1] for s in through) * 1000)
        dh, th = (statistics.median(s[0] for s in direct) * 1000, statistics.median(s[0] for s in through) * 1000)
        print(f"paced upstream (head {args.head}, first token {args.first_ms:.0f} ms), n={args.n}, c=1: "
              f"first token: direct {d:.2f} ms, through sluice {t:.2f} ms, added {t - d:.2f} ms; "
              f"head: added {th - dh:.2f} ms (medians)")
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait()
        upstream.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        port, first, every, when = sys.argv[2:6]
        asyncio.run(serve_paced(int(port), float(first), float(every), when))
    else:
        main()
