"""Usage and cost for chargeback: the ledger summed by identity, team, model, route, API or day, as
JSON or CSV. Costs are integer nano-units summed by the store, so every total is exactly the sum
of the records it covers; ``cost`` is the same number as a decimal string."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Literal

import msgspec

from ..core.errors import InvalidRequest
from ..core.exchange import Reply
from ..core.types import UsageGroup
from ..store import Store

By = Literal["identity", "team", "model", "route", "api", "day"]
_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos")


class UsageReportQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Query of the usage summary: records in ``[since, until)``; ``by`` one dimension (else per
    identity and model, the older shape); JSON or CSV."""

    since: float = 0.0
    until: float | None = None
    by: By | None = None
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
    """Nano-units as a decimal string with nine places: 1050 -> '0.000001050'."""
    return str((Decimal(nanos) / Decimal(1_000_000_000)).quantize(Decimal("0.000000001")))


def _row(g: UsageGroup) -> dict:
    d = msgspec.structs.asdict(g)
    d["cost"] = cost_text(g.cost_nanos)
    return d


def totals(groups: list[UsageGroup]) -> dict:
    t = {f: sum(getattr(g, f) for g in groups) for f in _FIELDS}
    t["cost"] = cost_text(t["cost_nanos"])
    return t


async def report(store: Store, q: UsageReportQuery) -> Reply:
    """The aggregation as an HTTP answer: JSON with totals, or CSV with a totals line last."""
    groups = await store.aggregate_usage(q.by or "identity", since=q.since, until=q.until)
    if q.format == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow([q.by or "identity", *_FIELDS, "cost"])
        for g in groups:
            w.writerow([_cell(g.key or ""), *(getattr(g, f) for f in _FIELDS), cost_text(g.cost_nanos)])
        t = totals(groups)
        w.writerow(["TOTAL", *(t[f] for f in _FIELDS), t["cost"]])
        return Reply(200, out.getvalue().encode(), "text/csv; charset=utf-8")
    return Reply.json({"object": "list", "by": q.by, "since": q.since, "until": q.until,
                       "data": [_row(g) for g in groups], "totals": totals(groups)})


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    """A key a spreadsheet shows as text (OWASP CSV injection): team and route names are operators' text."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value
