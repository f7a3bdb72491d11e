"""The limiter: reserve before the call, settle after it, answer like OpenAI when it is full.

A failing backend is a configured choice: fail closed (503, clear error) or fail open onto
a local limiter; either way it is counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from ..core.config import LimitRule, Limits
from ..core.errors import RateLimited, Unavailable
from .anomaly import AnomalyGuard
from .backend import BackendUnavailable, LimitBackend
from .checks import CONCURRENCY, INPUT, OUTPUT, SPEND, Amounts, Verdict
from .plan import Plan
from .memory import MemoryBackend
from .rules import RuleSet

log = logging.getLogger("sluice.limits")

Event = Callable[[str, str], None]  # (kind, label): "rejected" / "backend_down" / "settle_failed"


def _amount(measure: int, value: float) -> str:
    """A count as people read it: whole requests and tokens (a bucket refills in fractions, so what
    remains is rounded down: a request that needs one does not fit into 0.4), money as a plain decimal."""
    value = max(0.0, value)
    if measure == SPEND:
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return str(int(value))


class Reservation:
    """What one request holds until it settles."""

    __slots__ = ("request_id", "plan", "amounts", "backend", "once")

    def __init__(self, request_id: str, plan: Plan, amounts: Amounts, backend: LimitBackend) -> None:
        self.request_id, self.plan, self.amounts, self.backend = request_id, plan, amounts, backend
        self.once: str | None = None  # the key of work charged once however often it runs (``Limiter.reserve``)


def _beyond(amounts: Amounts, held: list[float] | None) -> Amounts:
    """What work already charged ``held`` takes more: its request is counted, its tokens and money only past
    what is held (a concurrency slot is its own, as every attempt in flight holds one)."""
    if held is None:
        return amounts
    return (0.0, max(0.0, amounts[INPUT] - held[INPUT]), max(0.0, amounts[OUTPUT] - held[OUTPUT]),
            amounts[CONCURRENCY], max(0.0, amounts[SPEND] - held[SPEND]))


def _holding(held: list[float] | None, taken: Amounts) -> list[float]:
    if held is None:
        return list(taken)
    return [held[i] + taken[i] if i != CONCURRENCY else 0.0 for i in range(5)]


def rate_headers(plan: Plan, v: Verdict) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers from the tightest request check and the tightest token check.

    An admitted request takes the plan's compiled ``render``; this general form serves refusals,
    whose verdicts carry the resets.
    """
    if v.ok:
        return plan.render(v.remaining)
    out: dict[str, str] = {}
    remaining, resets = v.remaining, v.reset_s
    for (limit_h, remaining_h, reset_h), members in plan.headers:
        i, _, printed, _ = min(members, key=lambda m: remaining[m[0]] / m[1])
        rem, reset = remaining[i], resets[i]  # type: ignore[index]  # set on refusal
        out[limit_h] = printed
        out[remaining_h] = str(int(rem)) if rem > 0 else "0"
        out[reset_h] = f"{int(reset * 1000)}ms" if reset > 0 else "0ms"  # a duration as OpenAI writes one
    return out


class Limiter:
    """Rules plus a backend (and, failing open, a local fallback)."""

    def __init__(self, cfg: Limits, backend: LimitBackend, on_event: Event | None = None,
                 anomaly: AnomalyGuard | None = None, *, apart: int = 1) -> None:
        self._cfg = cfg
        # how many processes keep counters of their own (``--workers N`` on the memory backend): above
        # one, no limit rule can be exact, so none is taken (``unshared``)
        self.apart = apart
        self.anomaly = anomaly
        self._backend = backend
        self._fallback: MemoryBackend | None = MemoryBackend() if cfg.on_backend_failure == "open" else None
        # the in-process backend is called directly: no coroutine, no task, per request
        self._memory: MemoryBackend | None = backend if isinstance(backend, MemoryBackend) else None
        self.inline = self._memory is not None  # reserving never waits: call ``reserve_now``
        self._on_event = on_event or (lambda kind, label: None)
        self._pending: set[asyncio.Task] = set()
        self._down = False
        self.replace_rules(cfg.rules)

    def replace_rules(self, rules: list[LimitRule]) -> None:
        """New rules from the next request on; counters of unchanged rules carry over (same keys)."""
        self.install_rules(self.compile_rules(rules))

    def unshared(self, rules: list[LimitRule]) -> str | None:
        """Why these rules cannot be kept exact here (workers counting apart), or None."""
        if not rules or self.apart <= 1:
            return None
        return (f"limit rules need limits.backend: redis while sluice runs as {self.apart} workers: the memory "
                f"backend counts in each process, so a limit would not be exact; set limits.backend: redis and "
                f"limits.redis_url (or run --workers 1)")

    def compile_rules(self, rules: list[LimitRule]) -> RuleSet:
        """A rule set for these rules, not yet in force (a policy version builds its own off to the side)."""
        return RuleSet(rules, self._cfg.key_prefix, self._cfg.concurrency_lease_s)

    def install_rules(self, rules: RuleSet) -> None:
        """Put a compiled rule set in force."""
        self.rules = rules
        self.active = bool(rules.rules) or self.anomaly is not None  # does a request need the limiter at all

    def _plan(self, identity: str, team: str | None, model: str, route: str, rules: RuleSet | None = None) -> Plan | None:
        if rules is None:
            rules = self.rules
        anomaly = self.anomaly
        if anomaly is not None and anomaly.throttled(identity):
            return rules.plan(identity, team, model, route, anomaly.cfg.safe_requests_per_minute)
        return rules.plan(identity, team, model, route)

    def reserve_now(self, request_id: str, identity: str, team: str | None, model: str, route: str,
                    amounts: Amounts, rules: RuleSet | None = None,
                    once: str | None = None) -> tuple[Reservation | None, dict[str, str] | None]:
        """``reserve`` on the in-process backend, without a coroutine: nothing here waits.

        ``rules``: the rule set of the policy version the request was routed under (default: the newest)."""
        plan = self._plan(identity, team, model, route, rules)
        if plan is None:
            return None, None
        memory: MemoryBackend = self._memory  # type: ignore[assignment]
        if once is not None:
            held = memory.charges.get(once)
            amounts = _beyond(amounts, held)
        got = memory.admit_now(request_id, plan, amounts, self.rules.ttl)
        if type(got) is dict:  # admitted, with its headers: the common case, on every request
            r = Reservation(request_id, plan, amounts, memory)
            if once is not None:
                r.once = once
                memory.charge_now(once, _holding(held, amounts))
            return r, got  # type: ignore[return-value]
        return self._decided(request_id, plan, amounts, got, memory)  # type: ignore[arg-type]

    async def reserve(self, request_id: str, identity: str, team: str | None, model: str, route: str,
                      amounts: Amounts, rules: RuleSet | None = None,
                      once: str | None = None) -> tuple[Reservation | None, dict[str, str] | None]:
        """Take the request's reservation in every counter it touches, or refuse it with 429.

        ``amounts``: what the request may cost, one number per measure (``checks.MEASURES``). ``once``: the key
        of work that may run more than once and is charged once (a batch line run again after a cut or a
        refusal upstream): its request is counted once, and what it holds is that of its last run, not the sum.
        """
        plan = self._plan(identity, team, model, route, rules)
        if plan is None:
            return None, None
        backend = self._backend
        try:
            held = None
            if once is not None:
                held = await backend.charged(once)
                amounts = _beyond(amounts, held)
            verdict = await backend.acquire(request_id, plan, amounts, self.rules.ttl)
            if once is not None and verdict.ok:
                await backend.charge(once, _holding(held, amounts))
            if self._down:
                self._down = False
                log.warning("limit backend reachable again")
        except BackendUnavailable as exc:
            self._on_event("backend_down", str(exc))
            if not self._down:
                log.error("limit backend unreachable (%s): failing %s", exc, self._cfg.on_backend_failure)
                self._down = True
            if self._fallback is None:
                raise Unavailable("Usage limits cannot be checked right now; retry shortly.",
                                  code="limiter_unavailable", retry_after=1.0) from None
            backend = self._fallback
            verdict = backend.acquire_now(request_id, plan, amounts, self.rules.ttl)
        r, headers = self._decided(request_id, plan, amounts, verdict, backend)
        r.once = once
        return r, headers

    def _decided(self, request_id: str, plan: Plan, amounts: Amounts, verdict: Verdict,
                 backend: LimitBackend) -> tuple[Reservation, dict[str, str]]:
        """The reservation and its headers, or the 429 that names the limit hit."""
        headers = rate_headers(plan, verdict)
        if verdict.ok:
            return Reservation(request_id, plan, amounts, backend), headers
        hit = plan.checks[verdict.failed]
        self._on_event("rejected", hit.label.split(" (", 1)[0])
        retry = max(verdict.reset_s[verdict.failed], 0.001)  # type: ignore[index]  # set on refusal
        headers["retry-after-ms"] = str(int(math.ceil(retry * 1000)))
        m = hit.measure
        exc = RateLimited(f"Rate limit reached for {hit.label}: limit {_amount(m, hit.limit)}, "
                          f"remaining {_amount(m, verdict.remaining[verdict.failed])}, "
                          f"this request needs {_amount(m, amounts[m])}. Retry after {retry:.2f}s.",
                          code="rate_limit_exceeded", retry_after=retry)
        exc.headers = headers
        raise exc

    async def readiness(self, timeout: float) -> tuple[bool, str | None]:
        """(model calls can be served, what is wrong) for ``/readyz``, asking the counters within
        ``timeout``: unreachable counters refuse limited calls failing closed, and fall back to
        local counters failing open (served, degraded)."""
        try:
            async with asyncio.timeout(timeout):
                await self._backend.ping()
            return True, None
        except (BackendUnavailable, asyncio.TimeoutError):
            pass
        if self._fallback is not None:
            return True, "limits backend unreachable: limits.on_backend_failure is open, so each replica limits on its own counters"
        if not self.active:  # no rule in force: no call needs the counters
            return True, "limits backend unreachable: no limit is in force, so no call needs it"
        return False, "limits backend unreachable: limits.on_backend_failure is closed, so limited model calls are refused"

    def observe(self, identity: str, tokens: float) -> None:
        """Feed the anomaly guard what an identity was served."""
        if self.anomaly is not None:
            self.anomaly.observe(identity, tokens)

    def settle(self, reservation: Reservation, input_tokens: float, output_tokens: float, spend: float) -> None:
        """Return the difference between reserved and used: at once in memory, off the request path on Redis."""
        held = reservation.amounts
        backend = reservation.backend
        once = reservation.once
        if once is not None and (backend is self._memory or backend is self._fallback):
            held = backend.charges.get(once) or held  # type: ignore[union-attr]  # the last run's, if another ran since
            backend.charge_now(once, (1.0, input_tokens, output_tokens, 0.0, spend))  # type: ignore[union-attr]
        deltas = (0.0, input_tokens - held[INPUT], output_tokens - held[OUTPUT], 0.0, spend - held[SPEND])
        if backend is self._memory or backend is self._fallback:
            backend.settle_now(reservation.request_id, reservation.plan, deltas)  # type: ignore[union-attr]
            return
        if once is not None:
            deltas = (input_tokens, output_tokens, spend)  # against what the store holds when it settles
        task = asyncio.get_running_loop().create_task(self._settle(reservation, deltas))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, r: Reservation, deltas: tuple[float, ...]) -> None:
        try:
            if r.once is not None:  # deltas: what was used; the counters hold the key's last charge
                used = deltas
                held = await r.backend.charged(r.once) or list(r.amounts)
                await r.backend.charge(r.once, (1.0, used[0], used[1], 0.0, used[2]))
                deltas = (0.0, used[0] - held[INPUT], used[1] - held[OUTPUT], 0.0, used[2] - held[SPEND])
            await r.backend.settle(r.request_id, r.plan, deltas)
        except BackendUnavailable as exc:
            self._on_event("settle_failed", str(exc))
            log.warning("could not settle a reservation (%s); leases expire on their own", exc)

    async def drain(self) -> None:
        """Wait for settlements in flight (shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        await self._backend.close()
