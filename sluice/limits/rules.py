"""Limit rules compiled from config: which counters a subject's requests touch."""

from __future__ import annotations

import datetime as dt
import fnmatch
import time

from ..core.config import LimitRule
from .checks import CONCURRENCY, INPUT, OUTPUT, REQUESTS, SPEND, Check
from .plan import Plan

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


def _window_ends(now: dt.datetime) -> tuple[str, float, str, float]:
    day_end = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    nxt = (now.replace(day=1) + dt.timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y%m%d"), (day_end - now).total_seconds(), now.strftime("%Y%m"), (nxt - now).total_seconds()


class RuleSet:
    """The configured rules; ``plan`` gives the checks a subject's requests touch.

    A subject's plan is worked out once and cached (with the backend's compiled form of it);
    the calendar windows once a second.
    """

    def __init__(self, rules: list[LimitRule], prefix: str, lease_s: float) -> None:
        self.rules = rules
        self._prefix = prefix
        self._plans: dict[tuple[str, str | None, str, str, int | None], Plan | None] = {}
        self._second = -1
        self._day = self._month = ""
        # seconds each kind of window lasts from now: what the backends expire counters by
        self.ttl: dict[str, float] = {"minute": _MINUTE, "lease": lease_s, "day": 0.0, "month": 0.0}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _applies(self, rule: LimitRule, s: Subject) -> bool:
        return all(fnmatch.fnmatchcase(s.get(dim), pattern) for dim, pattern in rule.match.items())

    def plan(self, identity: str, team: str | None, model: str, route: str, safe_rpm: int | None = None) -> Plan | None:
        """The checks of this subject (None: it touches none); ``safe_rpm`` adds the anomaly throttle."""
        now = time.time()
        if int(now) != self._second:
            self._tick(now)
        key = (identity, team, model, route, safe_rpm)
        try:
            return self._plans[key]
        except KeyError:
            pass
        if len(self._plans) >= 50_000:  # bounded: subjects come from identities and models
            self._plans.clear()
        checks = self._build(Subject(identity, team, model, route), safe_rpm)
        plan = self._plans[key] = Plan(checks) if checks else None
        return plan

    def _tick(self, now: float) -> None:
        self._second = int(now)
        day, self.ttl["day"], month, self.ttl["month"] = _window_ends(dt.datetime.fromtimestamp(now, dt.timezone.utc))
        if (day, month) != (self._day, self._month):
            self._day, self._month = day, month
            self._plans.clear()  # spend keys name the day and month

    def _build(self, s: Subject, safe_rpm: int | None) -> list[Check]:
        out: list[Check] = []
        for rule in self.rules:
            if rule.match and not self._applies(rule, s):
                continue
            scope = ":".join(f"{d}={s.get(d)}" for d in rule.per) or "all"
            base = f"{self._prefix}{rule.name}:{scope}"
            who = f"{rule.name} ({scope})"
            per_minute = [("rpm", rule.requests_per_minute, "requests per minute", REQUESTS, "requests"),
                          ("itpm", rule.input_tokens_per_minute, "input tokens per minute", INPUT, "tokens"),
                          ("otpm", rule.output_tokens_per_minute, "output tokens per minute", OUTPUT, "tokens")]
            for suffix, limit, what, measure, header in per_minute:
                if limit:
                    out.append(Check(f"{base}:{suffix}", "bucket", float(limit), limit / _MINUTE, "minute",
                                     f"{who}: {what}", measure, header))  # type: ignore[arg-type]
            if rule.concurrent_requests:
                out.append(Check(f"{base}:conc", "lease", float(rule.concurrent_requests), 0.0, "lease",
                                 f"{who}: concurrent requests", CONCURRENCY))
            if rule.spend_per_day:
                out.append(Check(f"{base}:spend:d{self._day}", "counter", rule.spend_per_day, 0.0, "day",
                                 f"{who}: spend per day", SPEND))
            if rule.spend_per_month:
                out.append(Check(f"{base}:spend:m{self._month}", "counter", rule.spend_per_month, 0.0, "month",
                                 f"{who}: spend per month", SPEND))
        if safe_rpm is not None:  # held by the anomaly guard
            # a burst of at most one second's worth: held to the rate, not to a fresh minute of it
            out.append(Check(f"{self._prefix}throttle:identity={s.identity}", "bucket", max(1.0, safe_rpm / _MINUTE),
                             safe_rpm / _MINUTE, "minute", f"anomaly throttle (identity={s.identity}): requests per minute",
                             REQUESTS, "requests"))
        return out
