"""Usage and cost for chargeback: the ledger summed by identity, key, team, model, route, API or day,
as JSON or CSV, of everything or of one key. Costs are integer nano-units summed by the store, so every
total is exactly the sum of the records it covers; ``cost`` is the same number as a plain decimal
string. Each group has a ``name`` a person reads: the identity's name, the key's display form, or
``(no team)`` for the requests without one."""

from __future__ import annotations

import csv
import io
from typing import Literal

import msgspec

from ..core.errors import InvalidRequest
from ..core.exchange import Reply
from ..core.types import UsageGroup
from ..store import Store

By = Literal["identity", "key", "team", "model", "route", "api", "day"]
_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos")


class UsageReportQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Query of the usage summary: records in ``[since, until)`` (of one key's requests with ``key``, a key
    id); ``by`` one dimension (else per identity and model, the older shape); JSON or CSV."""

    since: float = 0.0
    until: float | None = None
    by: By | None = None
    key: str | None = None
    format: Literal["json", "csv"] = "json"


def parse(query: dict[str, str]) -> UsageReportQuery:
    try:
        q = msgspec.convert(dict(query), UsageReportQuery, strict=False)
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("`$.", 1)[-1].rstrip("`") if "`$." in str(exc) else None
        raise InvalidRequest(f"bad query: {str(exc).split(' - at ')[0]}", param=field) from None
    for name in ("since", "until"):
        v = getattr(q, name)
        if v is not None and not (-1e12 < v < 1e12):  # nan, inf and absurd times order nothing
            raise InvalidRequest(f"{name} must be a Unix time", param=name)
    return q


def cost_text(nanos: int) -> str:
    """Nano-units as a plain decimal, exact, without trailing zeros: 13000 -> '0.000013', 0 -> '0' (never '0E-9')."""
    whole, frac = divmod(abs(nanos), 1_000_000_000)
    text = str(whole) + (f".{frac:09d}".rstrip("0") if frac else "")
    return "-" + text if nanos < 0 else text


async def names(store: Store, by: str) -> dict[str | None, str]:
    """What a person reads for each group key: an identity's name, a key's display form; ``(no team)`` for none."""
    got: dict[str | None, str] = {None: f"(no {by})"}
    if by == "identity":
        got.update((i.id, i.name) for i in await store.list_identities(include_disabled=True))
    elif by == "key":
        got.update((k.id, k.display) for k in await store.list_keys())
    return got


def _row(g: UsageGroup, name: str) -> dict:
    d = msgspec.structs.asdict(g)
    d["name"] = name
    d["cost"] = cost_text(g.cost_nanos)
    return d


def totals(groups: list[UsageGroup]) -> dict:
    t = {f: sum(getattr(g, f) for g in groups) for f in _FIELDS}
    t["cost"] = cost_text(t["cost_nanos"])
    return t


async def report(store: Store, q: UsageReportQuery) -> Reply:
    """The aggregation as an HTTP answer: JSON with totals, or CSV with a totals line last."""
    by = q.by or "identity"
    groups = await store.aggregate_usage(by, since=q.since, until=q.until, key_id=q.key)
    label = await names(store, by)
    if q.format == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        named = by in ("identity", "key")  # ids beside the names a person reads; other keys are names already
        w.writerow([by, *(["name"] if named else []), *_FIELDS, "cost"])
        for g in groups:
            first = [g.key, label.get(g.key, g.key)] if named and g.key is not None else [label.get(g.key, g.key)] * (1 + named)
            w.writerow([*map(_cell, first), *(getattr(g, f) for f in _FIELDS), cost_text(g.cost_nanos)])
        t = totals(groups)
        w.writerow(["TOTAL", *([""] if named else []), *(t[f] for f in _FIELDS), t["cost"]])
        return Reply(200, out.getvalue().encode(), "text/csv; charset=utf-8")
    return Reply.json({"object": "list", "by": q.by, "key": q.key, "since": q.since, "until": q.until,
                       "data": [_row(g, label.get(g.key) or str(g.key)) for g in groups], "totals": totals(groups)})


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    """A key a spreadsheet shows as text (OWASP CSV injection): team and route names are operators' text."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value
