"""Verified model supply: a registry version with a ``digest`` takes traffic only from replicas whose backend
reports that digest for the version's model (issue 28).

Checked before the listeners open, whenever a policy version is installed, and every health interval
(``resilience.health_interval_s``; when that is 0, every ``SUPPLY_INTERVAL_S``): each replica of the version's
upstream is asked (one GET per replica and probe path per round, however many versions share it) and judged:

- ``verified``: it reports the approved digest; it takes the version's requests.
- ``mismatch``: it reports another digest, or none for the model; it takes none of them.
- ``unreachable``: the probe got no 200 answer; it takes none (what it serves is unknown).
- ``pending``: not checked since the version (or its digest) was installed; it takes none.
- ``no_probe``: its upstream has no ``digest_probe`` (a policy change put a digest there); it takes none.

A version some of whose replicas are not verified is placed on the others only (``Deployment.without``); a
version none of whose replicas is verified is held: left out of every route (``CompiledRoute.hold``: the other
weighted versions or the fallbacks take its share, else 503), its breaker open with no probe until a check
verifies a replica again. Versions without a digest are not checked. None of this is on the request path: a
check changes routes and deployments in place, and a request reads them as it reads a compiled table.

Each process checks on its own (workers and gateway replicas reach the same verdict from the same backends).
Moves into and out of ``mismatch`` are written to the change log (``registry.digest_mismatch``,
``registry.digest_readmitted``) by the process that carries the control plane (``record``, given to worker 0 only):
one audit entry per state change per replica of a version, per gateway replica, never per worker or per check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec

from ..core import clock
from ..core.config import Upstream
from .digest import DigestReader
from .placement import Deployment, Replica
from .state import RoutingState
from .table import RouteTable, Target

log = logging.getLogger("sluice.routing")

VERIFIED, MISMATCH, UNREACHABLE, PENDING, NO_PROBE, NO_DIGEST = (
    "verified", "mismatch", "unreachable", "pending", "no_probe", "no_digest")
SUPPLY_INTERVAL_S = 10.0


class Verdict(msgspec.Struct, kw_only=True):
    """One replica's state for one version: the approved digest, what the backend reported, and when."""

    target: str
    replica: str
    state: str
    approved: str | None = None
    reported: str | None = None
    checked_at: float | None = None


def normal(digest: str) -> str:
    """A digest as compared: ``sha256:ABC`` and ``abc`` name the same weights."""
    d = digest.strip().lower()
    return d[7:] if d.startswith("sha256:") else d


def _why(v: Verdict) -> str:
    if v.state == MISMATCH:
        return (f"digest mismatch: the backend serves {v.reported}, approved {v.approved}" if v.reported
                else f"digest mismatch: the backend reports no digest for the model, approved {v.approved}")
    if v.state == UNREACHABLE:
        return "digest not verified: the backend's digest probe does not answer"
    if v.state == NO_PROBE:
        return "digest cannot be verified: its upstream has no digest_probe"
    return "digest not verified yet"


class Supply:
    """The verdicts of one process, and what they do to the routes and deployments serving now."""

    def __init__(self, deployments: Mapping[str, Deployment], readers: Mapping[str, DigestReader], *,
                 record: Callable[[str, str, dict], Awaitable[None]] | None = None) -> None:
        self._deployments = deployments
        self._readers = readers
        self._verdicts: dict[tuple[str, str], Verdict] = {}  # (target, replica name) -> the last verdict
        self._flagged: set[tuple[str, str]] = set()  # found in mismatch, not verified since
        self._wake = asyncio.Event()
        self._routing: RoutingState | None = None
        # (action, target, detail) -> a change-log entry; None: this process does not write them (not worker 0)
        self._record = record
        self._side: set[asyncio.Future] = set()

    @classmethod
    def from_config(cls, upstreams: Sequence[Upstream], deployments: Mapping[str, Deployment], *,
                    record: Callable[[str, str, dict], Awaitable[None]] | None = None) -> Supply:
        """The checks of the upstreams that have a ``digest_probe``."""
        return cls(deployments, {u.name: DigestReader(u.digest_probe) for u in upstreams if u.digest_probe is not None},
                   record=record)

    def attach(self, routing: RoutingState) -> None:
        """Govern the tables ``routing`` serves: this one now (versions with a digest held until checked), each
        later one as it is installed."""
        self._routing = routing
        self.apply(routing.table)
        routing.on_change.append(self.installed)

    @property
    def _table(self) -> RouteTable:
        assert self._routing is not None, "attach() first"
        return self._routing.table

    def _verdict(self, t: Target, r: Replica) -> Verdict:
        v = self._verdicts.get((t.name, r.name))
        if v is None or v.approved != t.digest:  # a new digest counts from its own first check
            return Verdict(target=t.name, replica=r.name, approved=t.digest,
                           state=PENDING if t.upstream in self._readers else NO_PROBE)
        return v

    def rows(self) -> list[Verdict]:
        """Every version's state on every replica of its upstream (``no_digest``: not checked)."""
        out = []
        for t in self._table.targets.values():
            dep = self._deployments.get(t.upstream)
            for r in dep.replicas if dep is not None else ():
                out.append(self._verdict(t, r) if t.digest is not None
                           else Verdict(target=t.name, replica=r.name, state=NO_DIGEST))
        return out

    def metric_rows(self) -> list[tuple[str, str, str]]:
        """(version, replica, state) of every version with a digest (``sluice_model_digest_state``)."""
        return [(v.target, v.replica, v.state) for v in self.rows() if v.state != NO_DIGEST] if self._routing else []

    async def check(self) -> None:
        """Ask every replica of every version with a digest, judge, and apply to the table serving by then."""
        asks: dict[tuple[Replica, str], Awaitable[bytes | None]] = {}
        for t in self._table.targets.values():
            reader = self._readers.get(t.upstream)
            dep = self._deployments.get(t.upstream)
            if t.digest is None or reader is None or dep is None:
                continue
            for r in dep.replicas:
                key = (r, reader.path(t.upstream_model))
                if key not in asks:
                    asks[key] = r.transport.fetch(key[1])
        got = dict(zip(asks, await asyncio.gather(*asks.values())))
        now = clock.now()
        current = self._table  # a policy version may have been installed while the probes were out
        for t in current.targets.values():
            reader = self._readers.get(t.upstream)
            dep = self._deployments.get(t.upstream)
            if t.digest is None or reader is None or dep is None:
                continue
            path = reader.path(t.upstream_model)
            for r in dep.replicas:
                if (r, path) not in got:
                    continue  # not asked this round (installed meanwhile): the next round asks
                body = got[r, path]
                reported = None if body is None else reader.read(body, t.upstream_model)
                state = (UNREACHABLE if body is None else
                         VERIFIED if reported is not None and normal(reported) == normal(t.digest) else MISMATCH)
                self._judge(Verdict(target=t.name, replica=r.name, state=state, approved=t.digest, reported=reported,
                                    checked_at=now))
        self.apply(current)

    def _judge(self, v: Verdict) -> None:
        key = (v.target, v.replica)
        before = self._verdicts.get(key)
        self._verdicts[key] = v
        previous = before.state if before is not None and before.approved == v.approved else None
        if previous == v.state:
            return
        if v.state == MISMATCH:
            log.warning("model supply: %s on replica %s serves %s, approved %s: it takes no traffic",
                        v.target, v.replica, v.reported or "no digest", v.approved)
        elif v.state == UNREACHABLE:
            log.warning("model supply: %s on replica %s: the digest probe does not answer", v.target, v.replica)
        event = None
        if v.state == MISMATCH and key not in self._flagged:
            self._flagged.add(key)
            event = "mismatch"
        elif v.state == VERIFIED and key in self._flagged:  # through unreachable or pending too: readmitted
            self._flagged.discard(key)
            event = "readmitted"
            log.info("model supply: %s on replica %s serves the approved digest again: readmitted", v.target, v.replica)
        if event is not None and self._record is not None:
            task = asyncio.ensure_future(self._write(f"registry.digest_{event}", v))
            self._side.add(task)
            task.add_done_callback(self._side.discard)

    async def _write(self, action: str, v: Verdict) -> None:
        try:
            await self._record(action, v.target, {"replica": v.replica, "approved": v.approved,  # type: ignore[misc]
                                                  "reported": v.reported, "checked_at": v.checked_at})
        except Exception as exc:  # the store may be away: the verdict holds anyway, the log says so
            log.warning("model supply: %s for %s not written to the change log: %s", action, v.target,
                        type(exc).__name__)

    def apply(self, table: RouteTable) -> None:
        """Place each version with a digest on its verified replicas only; hold those with none (see module)."""
        held: dict[str, str] = {}
        for t in table.targets.values():
            dep = self._deployments.get(t.upstream)
            if t.digest is None or dep is None:
                continue
            bad = [(r, v) for r in dep.replicas if (v := self._verdict(t, r)).state != VERIFIED]
            if len(bad) == len(dep.replicas):
                held[t.name] = _why(bad[0][1])
                t.deployment = dep
            else:
                t.deployment = dep.without(frozenset(r for r, _ in bad))
        for route in table.routes:
            route.hold(held)
        for t in table.targets.values():
            b = t.breaker
            if b is not None and t.name in held:
                b.hold()
            elif b is not None and b.held:
                b.release()

    def installed(self, table: RouteTable) -> None:
        """A policy version was installed: apply what is known, and check now what is not (a new version or digest)."""
        self.apply(table)
        if any(t.digest is not None for t in table.targets.values()):
            self._wake.set()

    async def start(self, routing: RoutingState, interval: float) -> asyncio.Task:
        """Govern ``routing`` (``attach``), check once now (before the listeners open), then every ``interval``
        seconds (0: ``SUPPLY_INTERVAL_S``) and whenever a version is installed, in the background task returned."""
        self.attach(routing)
        await self.check()
        return asyncio.get_running_loop().create_task(self._run(interval or SUPPLY_INTERVAL_S), name="supply-checks")

    async def _run(self, interval: float) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
            except Exception as exc:  # a probe bug must not end the loop
                log.warning("model supply check failed: %s", type(exc).__name__)
