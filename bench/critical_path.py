"""Where a c = 1 request's time goes, inside the server: time stamps at the points of its critical path.

    python bench/critical_path.py sluice [CONFIG]     # sluice serve (default bench/gateway.yaml), port 8080
    python bench/critical_path.py floor              # ../shared/bench/floor.py plain, port 8095

Run it pinned to CPU 0 beside the canned upstream, drive it at concurrency 1 with
``../shared/bench/load URL chat.lua 1``, then stop it (SIGTERM): it writes the median of each
step over the requests after the first fifth to stdout. ``SPIN=20000`` busy-waits that many
nanoseconds after each upstream write instead of going back to the loop at once: if the
upstream's answer then arrives sooner after the write, the time it took otherwise was this
CPU's wake-up from idle, not work. ``DELAY=20000`` busy-waits before each upstream write: the
floor's work made that much longer (bench/README.md, "The c = 1 median").

The points (sluice; floor.py has A, D, X, E and H):
A the request's bytes reach the protocol;  B the endpoint starts;  C the stages are done;
D the upstream write starts;  X it returned;  E the upstream's answer reaches its protocol;
F the endpoint returns;  G the reply write starts;  H it returned.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time

ns = time.perf_counter_ns
SPIN = int(os.environ.get("SPIN", "0"))
DELAY = int(os.environ.get("DELAY", "0"))
events: list[tuple[str, int]] = []
add = events.append


def stamp(cls: type, name: str, tag: str, exit_tag: str | None = None, is_async: bool = False) -> None:
    f = getattr(cls, name)
    if is_async:
        async def wrapped(*a, **k):
            add((tag, ns()))
            r = await f(*a, **k)
            if exit_tag:
                add((exit_tag, ns()))
            return r
    else:
        def wrapped(*a, **k):
            add((tag, ns()))
            r = f(*a, **k)
            if exit_tag:
                add((exit_tag, ns()))
            return r
    setattr(cls, name, wrapped)


class Stamped:
    """A transport whose writes are stamped: ``first`` before, ``second`` after (and the spin)."""

    def __init__(self, transport, first: str | None, second: str) -> None:
        self._t, self._first, self._second = transport, first, second

    def write(self, data: bytes) -> None:
        if DELAY and self._second == "X":  # hold the upstream write back, busy
            end = ns() + DELAY
            while ns() < end:
                pass
        if self._first:
            add((self._first, ns()))
        self._t.write(data)
        add((self._second, ns()))
        if SPIN and self._second == "X":  # the upstream write
            end = ns() + SPIN
            while ns() < end:
                pass

    def __getattr__(self, name: str):
        return getattr(self._t, name)


def stamp_transport(cls: type, first: str | None, second: str) -> None:
    made = cls.connection_made
    cls.connection_made = lambda self, t: made(self, Stamped(t, first, second))


def report(order: str) -> None:
    requests, cur = [], {}
    for tag, t in events:
        if tag == "A":
            if len(cur) == len(order):
                requests.append(cur)
            cur = {"A": t}
        else:
            cur.setdefault(tag, t)
    requests = requests[len(requests) // 5:]
    if len(requests) < 2:
        print("too few requests")
        return
    print(f"{len(requests)} requests, medians (us)")
    for a, b in zip(order, order[1:]):
        print(f"{a} -> {b} {statistics.median([r[b] - r[a] for r in requests]) / 1000:7.1f}")
    print(f"A -> H {statistics.median([r['H'] - r['A'] for r in requests]) / 1000:7.1f}")
    gaps = [n["A"] - r["H"] for r, n in zip(requests, requests[1:])]
    print(f"H -> next A {statistics.median(gaps) / 1000:7.1f}  (the client's turn)")


def sluice(config: str) -> None:
    from sluice.cli import main
    from sluice.http.connection import Connection
    from sluice.pipeline.endpoints import ModelCall
    from sluice.pipeline.forward import Forward
    from sluice.upstream.connection import UpstreamConnection

    stamp(Connection, "data_received", "A")
    stamp(ModelCall, "__call__", "B", "F", True)
    stamp(Forward, "complete", "C", None, True)
    stamp(UpstreamConnection, "send", "D")
    stamp_transport(UpstreamConnection, None, "X")
    stamp(UpstreamConnection, "data_received", "E")
    stamp(Connection, "_write_reply", "G", "H", True)
    sys.argv = ["sluice", "serve", "--config", config]
    try:
        main()
    finally:
        report("ABCDXEFGH")


def floor() -> None:
    import uvloop

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench", "floor.py")
    sys.argv = ["floor.py", "8095", "plain"]
    ns_: dict = {"__name__": "floor"}
    exec(compile(open(path).read().replace("uvloop.run(main())", ""), path, "exec"), ns_)
    stamp(ns_["Client"], "data_received", "A")
    stamp_transport(ns_["UpstreamConnection"], "D", "X")
    stamp(ns_["UpstreamConnection"], "data_received", "E")
    stamp_transport(ns_["Client"], "G", "H")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvloop.run(ns_["main"]())
    finally:
        report("ADXEGH")


if __name__ == "__main__":
    if sys.argv[1:2] == ["floor"]:
        floor()
    else:
        sluice(sys.argv[2] if len(sys.argv) > 2 else "bench/gateway.yaml")
