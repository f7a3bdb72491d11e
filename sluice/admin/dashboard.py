"""The control plane's dashboard: one server-rendered page with inline SVG charts over the usage
ledger (so every replica shows the same numbers), the routing targets' breakers and the change log.

A browser gets in through ``/admin/dashboard/login``: the control key typed into the form is
checked like any bearer key, then kept in an HttpOnly, SameSite=Strict cookie scoped to the
dashboard's path and honoured only for reading it. The page needs ``usage:read`` (operator,
auditor); the change-log panel shows only to a reader with ``audit:read``.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from html import escape
from urllib.parse import parse_qs

from ..core import clock, scope
from ..core.errors import GatewayError, Unauthenticated
from ..core.exchange import Exchange, Reply
from ..identity import Actor
from ..identity import roles as r
from ..store import Store
from ..store.usage_reads import UsageRollup
from .auth import COOKIE, DASHBOARD_PATH, AdminAuth
from .charts import bar_chart, line_chart

Health = Callable[[], list[tuple[str, str, str | None]]]
AuthFailure = Callable[[str | None, str, str | None], Awaitable[None]]  # (source, path, code): audit.logins
HTML = "text/html; charset=utf-8"
LOGIN_PATH = DASHBOARD_PATH + "/login"
_HEADERS = {
    # nothing to load from anywhere, no script at all, not framable
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
header{background:#0f172a;color:#f8fafc;padding:10px 20px;display:flex;gap:20px;align-items:baseline}
header h1{font-size:18px;margin:0}main{display:grid;grid-template-columns:repeat(auto-fill,minmax(580px,1fr));gap:14px;padding:14px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 12px}h2{font-size:15px;margin:0 0 6px}
figure{margin:0 0 8px}figcaption{font-weight:600;font-size:13px;color:#334155}svg{width:100%;height:auto}
svg text{font-size:11px;fill:#475569}.grid{stroke:#e2e8f0}.legend .key{margin-right:12px;font-size:12px}
.legend .key:before{content:"";display:inline-block;width:10px;height:10px;background:var(--c);margin-right:4px}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #f1f5f9}
.s-open{color:#b91c1c;font-weight:600}.s-half-open{color:#b45309}.s-closed{color:#15803d}.empty{color:#94a3b8}
.stats{display:flex;gap:24px}.stat b{display:block;font-size:20px}
"""


class Dashboard:
    """Renders the page, and the login that lets a browser present a control key."""

    def __init__(self, store: Store, auth: AdminAuth, health: Health | None = None, *, window_minutes: int = 60,
                 currency: str = "USD", on_auth_failure: AuthFailure | None = None) -> None:
        self._store = store
        self._auth = auth
        self._on_auth_failure = on_auth_failure
        self._health = health or (lambda: [])
        self._window = window_minutes
        self._currency = currency
        self._started = clock.now()  # the charts begin here (or at the first record, if earlier)

    def public_routes(self) -> list[tuple[str, str, Callable]]:
        """The login form and its post: no key needed to see a form that asks for one."""
        return [("GET", LOGIN_PATH, self.login_form), ("POST", LOGIN_PATH, self.login)]

    async def login_form(self, ex: Exchange, message: str = "", status: int = 200) -> Reply:
        if not message and ex.query.get("signed_out") == "1":
            message = "Your sign-in is no longer valid; sign in again."
        note = f'<p class="s-open" role="alert">{escape(message)}</p>' if message else ""
        body = (f"<!doctype html><html><head><meta charset=utf-8><title>sluice: sign in</title><style>{_CSS}</style>"
                f"</head><body><header><h1>sluice</h1><span>control plane</span></header><main><section>"
                f"<h2>Sign in to the dashboard</h2>{note}"
                f'<form method="post" action="{LOGIN_PATH}"><label>Control-plane key '
                f'<input type="password" name="key" autocomplete="off" required size="48"></label> '
                f'<button type="submit">Sign in</button></form>'
                f"<p class=empty>Operators and auditors may read it; the key is kept in a cookie only this "
                f"page receives.</p></section></main></body></html>")
        return Reply(status, body.encode(), HTML, headers=dict(_HEADERS))

    async def login(self, ex: Exchange) -> Reply:
        """Check the key as the control plane would; on success set the cookie and go to the page."""
        try:
            key = (parse_qs((ex.body or b"")[:4096].decode("utf-8", "replace")).get("key") or [""])[0].strip()
        except ValueError:
            key = ""
        probe = Exchange("GET", DASHBOARD_PATH, {}, {}, {"Authorization": f"Bearer {key}"}, b"", ex.peer, ex.request_id)
        try:
            actor = self._auth(probe)
            actor.require(r.USAGE_READ)
        except GatewayError as exc:
            if isinstance(exc, Unauthenticated):
                await self._failed(ex, exc.code)
            why = "This key may not read the dashboard." if exc.status == 403 else "That is not a valid control-plane key."
            if exc.status == 429:
                why = "Too many failed attempts from this address; wait a minute."
            return await self.login_form(ex, why, status=exc.status)
        cookie = f"{COOKIE}={key}; Path={DASHBOARD_PATH}; HttpOnly; SameSite=Strict; Max-Age=43200"
        return Reply(303, b"", HTML, headers={**_HEADERS, "Location": DASHBOARD_PATH, "Set-Cookie": cookie,
                                              "x-sluice-actor": actor.name})

    @staticmethod
    def sign_in(ex: Exchange, exc: Unauthenticated) -> Reply | None:
        """A browser that asks for the page with no valid key is sent to the form (303), not given JSON:
        ``None`` for anything else (an API client, another path) so it gets the usual 401."""
        if ex.method != "GET" or ex.path != DASHBOARD_PATH or "text/html" not in ex.headers.get("Accept", ""):
            return None
        where = LOGIN_PATH if exc.code == "missing_api_key" else LOGIN_PATH + "?signed_out=1"
        return Reply(303, b"", HTML, headers={**_HEADERS, "Location": where})

    async def _failed(self, ex: Exchange, code: str | None) -> None:
        """A refused key is a failed control-plane login: audited as every other 401, within the same
        per-minute budget (``audit.logins``); the entry names the path and the reason, never the key."""
        if self._on_auth_failure is None:
            return
        current = scope.request.set((ex.request_id, ex.peer))  # the entry cites this request
        try:
            await self._on_auth_failure(ex.peer, LOGIN_PATH, code)
        finally:
            scope.request.reset(current)

    async def page(self, actor: Actor, ex: Exchange) -> Reply:
        now = clock.now()
        window_start = (int(now) // 60 - self._window + 1) * 60
        # the window's minute rollups per status class and error code: as many rows as minutes and classes,
        # however many requests they hold (percentiles from their histograms, store/rollups.py)
        minutes = await self._store.rollup_usage(("bucket", "status_class", "error_code"), since=window_start)
        by_team = await self._store.aggregate_usage("team", since=window_start)
        by_model = await self._store.aggregate_usage("model", since=window_start)
        by_identity = await self._store.aggregate_usage("identity", since=window_start)
        names = {i.id: i.name for i in await self._store.list_identities(include_disabled=True)}
        changes = await self._store.list_changes(limit=12) if r.AUDIT_READ in actor.grants else None
        keys = ({k.id: f"{k.display} of {names.get(k.identity_id, '(gone)')}" for k in await self._store.list_keys()}
                if changes else {})

        # minutes from when this server started (or the first record in the window, if another replica or
        # an earlier run wrote it): no stretch of zeros for a time nothing was listening
        first = min([self._started] + [m.key[0] for m in minutes[:1]])
        start = max(window_start, int(first) // 60 * 60)
        n = int(now) // 60 - start // 60 + 1
        labels = [time.strftime("%H:%M", time.gmtime(start + 60 * i)) for i in range(n)]
        per: list[list] = [[] for _ in range(n)]
        for m in minutes:
            i = (m.key[0] - start) // 60
            if 0 <= i < n:
                per[i].append(m)
        merged = [merge(b) for b in per]
        rate = [(m.requests if m else 0) / 60.0 for m in merged]
        # a minute with no request has no latency: a gap in the line, not a zero
        pct = {q: [m.latency_ms(q) if m else None for m in merged] for q in (50, 95, 99)}
        err5 = [sum(x.requests for x in b if x.key[1] == 500) for b in per]
        err4 = [sum(x.requests for x in b if x.key[1] == 400) for b in per]
        hits = [sum(x.requests for x in b if x.key[1] == 429) for b in per]
        limit_kinds = Counter()
        for m in minutes:
            if m.key[1] == 429:
                limit_kinds[m.key[2] or "429"] += m.requests
        total_cost = sum(g.cost_nanos for g in by_team)
        whole = merge(minutes)

        panels = [
            _section("Traffic", _stats([("requests", str(whole.requests if whole else 0)),
                                        ("errors", str(sum(err5) + sum(err4))), ("limit hits", str(sum(hits))),
                                        (f"spend ({self._currency})", money(total_cost)),
                                        ("p95 latency", _ms(whole, 95)), ("p99 latency", _ms(whole, 99))])
                     + line_chart("Request rate (req/s)", labels, {"req/s": rate})),
            _section("Latency", line_chart("Latency percentiles (ms)", labels,
                                           {"p50": pct[50], "p95": pct[95], "p99": pct[99]}, " ms")),
            _section("Errors", line_chart("Errors per minute", labels, {"5xx": err5, "4xx": err4})),
            _section("Tokens and spend by team", _spend_bars("Spend by team", by_team, self._currency)
                     + _token_bars("Tokens by team", by_team)),
            _section("Tokens and spend by model", _spend_bars("Spend by model", by_model, self._currency)
                     + _token_bars("Tokens by model", by_model)),
            _section("Top identities", bar_chart("Requests by identity", [
                (names.get(g.key or "", g.key or "(none)"), float(g.requests), f"{g.requests} req")
                for g in sorted(by_identity, key=lambda g: -g.requests)[:10]])),
            _section("Limit hits", line_chart("429s per minute", labels, {"limited": hits})
                     + bar_chart("By reason", [(k, float(v), str(v)) for k, v in limit_kinds.most_common(8)])),
            _section("Upstream health", self._health_table()),
        ]
        if changes is not None:
            panels.append(_section("Recent control-plane changes", _changes(changes, {**names, **keys})))
        since = time.strftime("%H:%M", time.gmtime(start))
        body = (f"<!doctype html><html><head><meta charset=utf-8><title>sluice dashboard</title>"
                f'<meta http-equiv="refresh" content="15"><style>{_CSS}</style></head><body>'
                f"<header><h1>sluice</h1><span>since {since} UTC (at most {self._window} min), refreshed every 15 s</span>"
                f"<span>signed in as {escape(actor.name)}</span></header><main>{''.join(panels)}</main></body></html>")
        return Reply(200, body.encode(), HTML, headers=dict(_HEADERS))

    def _health_table(self) -> str:
        rows = self._health()
        if not rows:
            return '<p class="empty">no routing targets</p>'
        cells = "".join(f"<tr><td>{escape(t)}</td><td>{escape(u)}</td>"
                        f'<td class="s-{escape(s or "closed")}">{escape(s or "closed")}</td></tr>' for t, u, s in rows)
        return f'<table class="health"><tr><th>target</th><th>upstream</th><th>breaker</th></tr>{cells}</table>'


def money(nanos: int) -> str:
    """Nano-units as a plain decimal, as short as it is exact: 13000 -> '0.000013', 0 -> '0'."""
    text = f"{Decimal(nanos) / 1_000_000_000:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def merge(rows: list[UsageRollup]) -> UsageRollup | None:
    """Rollups of several groups (or minutes) as one: their requests' sums and histograms together."""
    return functools.reduce(UsageRollup.plus, rows) if rows else None


def _ms(m: UsageRollup | None, q: int) -> str:
    got = m.latency_ms(q) if m else None
    return f"{got:.0f} ms" if got is not None else "—"


def _section(title: str, inner: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{inner}</section>"


def _stats(items: list[tuple[str, str]]) -> str:
    return '<div class="stats">' + "".join(f'<div class="stat"><b>{escape(v)}</b>{escape(k)}</div>'
                                           for k, v in items) + "</div>"


def _spend_bars(title: str, groups: list, currency: str) -> str:
    return bar_chart(f"{title} ({currency})", [(g.key or "(no team)", g.cost_nanos / 1e9, money(g.cost_nanos))
                                               for g in sorted(groups, key=lambda g: -g.cost_nanos)[:10] if g.cost_nanos])


def _token_bars(title: str, groups: list) -> str:
    return bar_chart(title, [(g.key or "(no team)", float(g.prompt_tokens + g.completion_tokens),
                              f"{g.prompt_tokens} in / {g.completion_tokens} out")
                             for g in sorted(groups, key=lambda g: -(g.prompt_tokens + g.completion_tokens))[:10]
                             if g.prompt_tokens + g.completion_tokens])


def _changes(changes: list, names: dict[str, str]) -> str:
    """The newest changes: when, who, what, and the target by its name (an identity's, a key's display
    form and owner), never its id."""
    if not changes:
        return '<p class="empty">no changes recorded</p>'
    rows = "".join(f"<tr><td>{time.strftime('%m-%d %H:%M:%S', time.gmtime(c.ts))}</td><td>{escape(c.actor)}</td>"
                   f"<td>{escape(c.action)}</td><td>{escape(names.get(c.target, c.target))}</td></tr>" for c in changes)
    return f'<table class="changes"><tr><th>when</th><th>who</th><th>what</th><th>target</th></tr>{rows}</table>'
