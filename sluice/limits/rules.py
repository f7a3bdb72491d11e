"""Limit rules compiled from config: which counters a request touches, and how much each costs."""

from __future__ import annotations

import datetime as dt
import fnmatch
import time

import msgspec

from ..core.config import LimitRule
from .checks import Check

_MINUTE = 60.0


class Subject:
    """What a request is counted by: who, which team, which model, which route."""

    __slots__ = ("identity", "team", "model", "route")

    def __init__(self, identity: str, team: str | None, model: str, route: str) -> None:
        self.identity = identity
        self.team = team or "-"
        self.model = model
        self.route = route

    def get(self, dim: str) -> str:
        return getattr(self, dim)


class Cost:
    """What a request reserves: one request, input tokens, output tokens, money."""

    __slots__ = ("requests", "input", "output", "spend")

    def __init__(self, requests: float, input: float, output: float, spend: float) -> None:  # noqa: A002
        self.requests, self.input, self.output, self.spend = requests, input, output, spend


def _window_ends(now: dt.datetime) -> tuple[str, float, str, float]:
    day_end = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    nxt = (now.replace(day=1) + dt.timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y%m%d"), (day_end - now).total_seconds(), now.strftime("%Y%m"), (nxt - now).total_seconds()


class _Spec(msgspec.Struct, frozen=True, gc=False):
    """The part of a check that depends only on who asks, not on what this request costs."""

    key: str
    kind: str
    limit: float
    rate: float
    window: str  # "minute", "lease", "day" or "month": where the check's ttl comes from
    label: str
    measure: str
    header: str


class RuleSet:
    """The configured rules; ``checks`` turns one request into its list of checks.

    What a subject touches is worked out once and cached; the calendar windows once a second.
    """

    def __init__(self, rules: list[LimitRule], prefix: str, lease_s: float) -> None:
        self.rules = rules
        self._prefix = prefix
        self._lease_s = lease_s
        self._specs: dict[tuple[str, str, str, str], list[_Spec]] = {}
        self._second = -1
        self._windows = ("", 0.0, "", 0.0)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _applies(self, rule: LimitRule, s: Subject) -> bool:
        return all(fnmatch.fnmatchcase(s.get(dim), pattern) for dim, pattern in rule.match.items())

    def checks(self, s: Subject, cost: Cost, safe_rpm: int | None = None) -> list[Check]:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            day_id, _, month_id, _ = self._windows
            self._windows = _window_ends(dt.datetime.fromtimestamp(now, dt.timezone.utc))
            if (day_id, month_id) != (self._windows[0], self._windows[2]):
                self._specs.clear()  # spend keys name the day and month
        subject = (s.identity, s.team, s.model, s.route)
        specs = self._specs.get(subject)
        if specs is None:
            specs = self._build(s)
            if len(self._specs) >= 50_000:  # bounded: subjects come from identities and models
                self._specs.clear()
            self._specs[subject] = specs
        ttl = {"minute": _MINUTE, "lease": self._lease_s, "day": self._windows[1], "month": self._windows[3]}
        amount = {"requests": cost.requests, "input": cost.input, "output": cost.output, "concurrency": 1.0,
                  "spend": cost.spend}
        out = [Check(p.key, p.kind, p.limit, p.rate, amount[p.measure], ttl[p.window], p.label, p.measure, p.header)  # type: ignore[arg-type]
               for p in specs]
        if safe_rpm is not None:  # held by the anomaly guard
            # a burst of at most one second's worth: held to the rate, not to a fresh minute of it
            out.append(Check(f"{self._prefix}throttle:identity={s.identity}", "bucket", max(1.0, safe_rpm / _MINUTE),
                             safe_rpm / _MINUTE,
                             1.0, _MINUTE, f"anomaly throttle (identity={s.identity}): requests per minute",
                             "requests", "requests"))
        return out

    def _build(self, s: Subject) -> list[_Spec]:
        out: list[_Spec] = []
        day_id, _, month_id, _ = self._windows
        for rule in self.rules:
            if rule.match and not self._applies(rule, s):
                continue
            scope = ":".join(f"{d}={s.get(d)}" for d in rule.per) or "all"
            base = f"{self._prefix}{rule.name}:{scope}"
            who = f"{rule.name} ({scope})"
            per_minute = [("rpm", rule.requests_per_minute, "requests per minute", "requests", "requests"),
                          ("itpm", rule.input_tokens_per_minute, "input tokens per minute", "input", "tokens"),
                          ("otpm", rule.output_tokens_per_minute, "output tokens per minute", "output", "tokens")]
            for suffix, limit, what, measure, header in per_minute:
                if limit:
                    out.append(_Spec(f"{base}:{suffix}", "bucket", float(limit), limit / _MINUTE, "minute",
                                     f"{who}: {what}", measure, header))
            if rule.concurrent_requests:
                out.append(_Spec(f"{base}:conc", "lease", float(rule.concurrent_requests), 0.0, "lease",
                                 f"{who}: concurrent requests", "concurrency", ""))
            if rule.spend_per_day:
                out.append(_Spec(f"{base}:spend:d{day_id}", "counter", rule.spend_per_day, 0.0, "day",
                                 f"{who}: spend per day", "spend", ""))
            if rule.spend_per_month:
                out.append(_Spec(f"{base}:spend:m{month_id}", "counter", rule.spend_per_month, 0.0, "month",
                                 f"{who}: spend per month", "spend", ""))
        return out
