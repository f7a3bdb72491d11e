"""Limit rules compiled from config: which counters a request touches, and how much each costs."""

from __future__ import annotations

import datetime as dt
import fnmatch

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


class RuleSet:
    """The configured rules; ``checks`` turns one request into its list of checks."""

    def __init__(self, rules: list[LimitRule], prefix: str, lease_s: float) -> None:
        self.rules = rules
        self._prefix = prefix
        self._lease_s = lease_s

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _applies(self, rule: LimitRule, s: Subject) -> bool:
        return all(fnmatch.fnmatchcase(s.get(dim), pattern) for dim, pattern in rule.match.items())

    def checks(self, s: Subject, cost: Cost) -> list[Check]:
        out: list[Check] = []
        day = None
        for rule in self.rules:
            if rule.match and not self._applies(rule, s):
                continue
            scope = ":".join(f"{d}={s.get(d)}" for d in rule.per) or "all"
            base = f"{self._prefix}{rule.name}:{scope}"
            who = f"{rule.name} ({scope})"
            if rule.requests_per_minute:
                lim = float(rule.requests_per_minute)
                out.append(Check(f"{base}:rpm", "bucket", lim, lim / _MINUTE, cost.requests, _MINUTE,
                                 f"{who}: requests per minute", "requests", "requests"))
            if rule.input_tokens_per_minute:
                lim = float(rule.input_tokens_per_minute)
                out.append(Check(f"{base}:itpm", "bucket", lim, lim / _MINUTE, cost.input, _MINUTE,
                                 f"{who}: input tokens per minute", "input", "tokens"))
            if rule.output_tokens_per_minute:
                lim = float(rule.output_tokens_per_minute)
                out.append(Check(f"{base}:otpm", "bucket", lim, lim / _MINUTE, cost.output, _MINUTE,
                                 f"{who}: output tokens per minute", "output", "tokens"))
            if rule.concurrent_requests:
                out.append(Check(f"{base}:conc", "lease", float(rule.concurrent_requests), 0.0, 1.0, self._lease_s,
                                 f"{who}: concurrent requests", "concurrency"))
            if rule.spend_per_day or rule.spend_per_month:
                day = day or _window_ends(dt.datetime.now(dt.timezone.utc))
                if rule.spend_per_day:
                    out.append(Check(f"{base}:spend:d{day[0]}", "counter", rule.spend_per_day, 0.0, cost.spend, day[1],
                                     f"{who}: spend per day", "spend"))
                if rule.spend_per_month:
                    out.append(Check(f"{base}:spend:m{day[2]}", "counter", rule.spend_per_month, 0.0, cost.spend, day[3],
                                     f"{who}: spend per month", "spend"))
        return out
