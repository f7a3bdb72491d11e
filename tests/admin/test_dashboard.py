"""The dashboard in headless Chromium (Debian's package, driven by Playwright): a browser at the bare
URL is sent to the sign-in form, an auditor signs in with a control key, and the page after a seeded
run shows charts with data points in every panel that has data (minutes without requests a gap in
the latency lines, not a zero; the charts starting with the first minute anything ran), p95 beside
p99, money as plain decimals, and the recent changes by name, never an id; an invoker's key is
refused, at the form and on the page."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time

import httpx
import openai
import pytest

from sluice.core.types import UsageRecord
from sluice.store.sql import SqlStore
from support import start_gateway

CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM) and not os.environ.get("CI"),
                                reason="chromium is installed by `make install`")


EARLIER = 185  # seconds before this run: a request an earlier run recorded, three minutes back


def _earlier_run(db, ts: float) -> None:
    """A usage record as an earlier run of the gateway left it in the shared store (batch, 42 ms), written as the
    ledger writes one: the raw row and its rollups, which the page reads."""
    async def write() -> None:
        store = SqlStore(f"sqlite:///{db}")
        await store.open()
        try:
            await store.write_usage([UsageRecord(
                request_id="earlier-run", ts=ts, identity_id="cfg-batch", key_id=None, endpoint="chat.completions",
                model="sim-small", upstream="sim", status=200, prompt_tokens=3, completion_tokens=2, latency_ms=42.0,
                usage_source="upstream", team="data", cost_nanos=13000)])
        finally:
            await store.close()

    asyncio.run(write())


@pytest.fixture(scope="module")
def seeded(sim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    spec = dict(
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"},
                {"name": "scarce", "upstream": "sim", "upstream_model": "sim-small"}],
        identities=[{"name": "web", "owner": "o", "team": "shop", "models": ["*"]},
                    {"name": "batch", "owner": "o", "team": "data", "models": ["*"]}],
        extra={"teams": [{"name": "shop", "owner": "o"}, {"name": "data", "owner": "o"}],
               "prices": {"sim-small": {"input": 1, "output": 2}, "scarce": {"input": 5, "output": 10}},
               "limits": {"rules": [{"name": "scarce-rpm", "match": {"model": "scarce"}, "requests_per_minute": 1}]}})
    first = start_gateway(tmp, **spec)  # makes the store; its own run records nothing
    first.stop()
    g = start_gateway(tmp, **spec)
    g.earlier = time.time() - EARLIER
    _earlier_run(tmp / "sluice.db", g.earlier)
    for who, n in (("web", 6), ("batch", 3)):
        c = openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0)
        for _ in range(n):
            c.chat.completions.create(model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    body = {"model": "scarce", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}
    assert [g.post("/v1/chat/completions", g.keys["web"], json=body).status_code for _ in range(2)] == [200, 429]
    assert g.post("/v1/chat/completions", g.keys["web"], json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}).status_code == 404

    g.changed = []  # (action, target) of each control-plane change made here, in order
    g.changed_from = time.time()

    def control_key(name: str, roles: list[str]) -> str:
        ident = g.admin("POST", "/admin/identities", json={"name": name, "owner": "sec@example.com", "roles": roles}).json()
        plane = "control" if roles != ["invoker"] else "data"
        key = g.admin("POST", f"/admin/identities/{ident['id']}/keys", json={"plane": plane}).json()
        g.changed += [("identity.create", name), ("key.issue", f"{key['display']} of {name}")]
        return key["key"]

    keys = {"auditor": control_key("eve-auditor", ["auditor"]), "invoker": control_key("ivan-invoker", ["invoker"]),
            "key-admin": control_key("kim-keys", ["key-admin"])}
    g.changed_until = time.time()
    yield g, keys
    g.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _sign_in(browser, g, key: str):
    """From the dashboard's bare URL, as a person would: sent to the form, then the page."""
    ctx = browser.new_context(viewport={"width": 1300, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(g.admin_url + "/admin/dashboard")
    assert page.url == g.admin_url + "/admin/dashboard/login", page.url
    page.fill("input[name=key]", key)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return ctx, page, errors


def test_an_auditor_sees_charts_with_data_after_a_seeded_run(seeded, browser, tmp_path):
    g, keys = seeded
    ctx, page, errors = _sign_in(browser, g, keys["auditor"])
    try:
        assert page.url.endswith("/admin/dashboard")
        cookie = next(c for c in ctx.cookies() if c["name"] == "sluice_dashboard")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin/dashboard"
        # the charts start with the first minute anything ran (the earlier run's), not an hour of zeros
        rate = page.locator("svg[aria-label='Request rate (req/s)'] circle.pt")
        xs = rate.evaluate_all("els => els.map(e => e.dataset.x)")
        assert xs[0] == time.strftime("%H:%M", time.gmtime(g.earlier)) and 4 <= len(xs) <= 6, xs
        ys = dict(zip(xs, map(float, rate.evaluate_all("els => els.map(e => e.dataset.y)"))))
        assert abs(ys[xs[0]] - 1 / 60) < 1e-5 and ys[xs[1]] == ys[xs[2]] == 0 and max(ys.values()) > 0, ys
        # a minute without requests has no latency: no point there, and the line breaks
        lat = page.locator("svg[aria-label='Latency percentiles (ms)'] circle.pt")
        points = lat.evaluate_all("els => els.map(e => [e.dataset.series, e.dataset.x, Number(e.dataset.y)])")
        busy = sorted(x for x, y in ys.items() if y > 0)
        for series in ("p50", "p95", "p99"):
            assert sorted(x for s, x, _ in points if s == series) == busy, points
        assert [y for s, x, y in points if x == xs[0]] == [42.0, 42.0, 42.0]
        # the rate is a value every minute (zero is a rate): one unbroken line
        assert page.locator("svg[aria-label='Request rate (req/s)'] polyline").count() == 1
        # p95 beside p99
        stats = dict(page.locator(".stat").evaluate_all("els => els.map(e => [e.lastChild.textContent, e.firstChild.textContent])"))
        assert re.fullmatch(r"\d+ ms", stats["p95 latency"]) and re.fullmatch(r"\d+ ms", stats["p99 latency"]), stats
        assert re.fullmatch(r"\d+(\.\d+)?", stats["spend (USD)"]) and "E" not in stats["spend (USD)"], stats
        def bars(title: str) -> dict[str, float]:
            loc = page.locator(f"svg[aria-label='{title}'] rect.bar")
            return {d["label"]: float(d["value"]) for d in loc.evaluate_all("els => els.map(e => e.dataset)")}
        spend = bars("Spend by team (USD)")
        assert set(spend) == {"shop", "data"} and spend["shop"] > spend["data"] > 0
        assert set(bars("Tokens by model")) == {"sim-small", "scarce"}
        top = bars("Requests by identity")
        assert top["web"] == 9 and top["batch"] == 4  # web: 6 + 2 scarce + 1 unknown model; batch: 3 + the earlier run's
        assert bars("By reason") and max(bars("By reason").values()) == 1
        limited = page.locator("svg[aria-label='429s per minute'] circle.pt")
        assert sum(float(y) for y in limited.evaluate_all("els => els.map(e => e.dataset.y)")) == 1
        assert page.locator("table.health td.s-closed").count() >= 1
        # the newest changes first: the six this run made, each row exactly (when, who, what, target by name)
        rows = page.locator("table.changes tr").evaluate_all("els => els.map(e => Array.from(e.cells).map(c => c.innerText))")
        assert rows[0] == ["when", "who", "what", "target"]
        made = [["config-admin-0", action, target] for action, target in reversed(g.changed)]
        assert [r[1:] for r in rows[1:7]] == made, rows
        seconds = {time.strftime("%m-%d %H:%M:%S", time.gmtime(t)) for t in range(int(g.changed_from), int(g.changed_until) + 1)}
        assert all(r[0] in seconds for r in rows[1:7]), rows
        # every chart drew something, and no label anywhere on the page is an id
        for chart in page.locator("svg.chart").evaluate_all("els => els.map(e => [e.ariaLabel, Number(e.dataset.points)])"):
            assert chart[1] > 0, chart
        labels = page.locator("svg text, svg title, td, th, .stat, figcaption, .legend .key, header").evaluate_all(
            "els => els.map(e => e.textContent)")
        ids = [t for t in labels if re.search(r"\b(?:id|key)-[0-9a-f]{16}\b|\bcfg-", t)]
        assert len(labels) > 50 and not ids, ids
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        print(f"dashboard screenshot: {shot}")
        assert errors == []
    finally:
        ctx.close()


def test_an_invoker_key_is_refused_at_the_form_and_on_the_page(seeded, browser):
    g, keys = seeded
    ctx, page, _ = _sign_in(browser, g, keys["invoker"])
    try:
        assert page.url.endswith("/admin/dashboard/login")
        assert "not a valid control-plane key" in page.inner_text("[role=alert]")
        assert not [c for c in ctx.cookies() if c["name"] == "sluice_dashboard"]
        page.goto(g.admin_url + "/admin/dashboard")  # no cookie was set: back to the form, no data shown
        assert page.url.endswith("/admin/dashboard/login") and "circle" not in page.content()
    finally:
        ctx.close()
    # a data key in the cookie itself, and a control key without usage:read, are refused too
    cookie = {"Cookie": f"sluice_dashboard={keys['invoker']}"}
    r = httpx.get(g.admin_url + "/admin/dashboard", headers=cookie)
    assert r.status_code == 401 and r.json()["error"]["code"] == "wrong_plane"
    r = httpx.get(g.admin_url + "/admin/dashboard", headers={"Cookie": f"sluice_dashboard={keys['key-admin']}"})
    assert r.status_code == 403
    r = httpx.post(g.admin_url + "/admin/dashboard/login", data={"key": keys["key-admin"]})
    assert r.status_code == 403 and "may not read the dashboard" in r.text and "set-cookie" not in r.headers


def test_the_cookie_opens_only_the_dashboard_page(seeded):
    g, keys = seeded
    jar = {"Cookie": f"sluice_dashboard={keys['auditor']}"}
    assert httpx.get(g.admin_url + "/admin/dashboard", headers=jar).status_code == 200
    for path in ("/admin/usage", "/admin/changes", "/admin/identities"):
        assert httpx.get(g.admin_url + path, headers=jar).status_code == 401, path
    page = httpx.get(g.admin_url + "/admin/dashboard", headers=jar)
    assert "script" not in page.text.lower() and "default-src 'none'" in page.headers["content-security-policy"]


def test_a_browser_without_a_key_is_sent_to_the_form_and_an_api_client_gets_json(seeded):
    g, keys = seeded

    def failed_logins() -> list[dict]:
        got = g.admin("GET", "/admin/audit/entries", params={"since": "0", "limit": 100000}).json()["data"]
        return [e for e in got if e["action"] == "login.failed" and e["target"] == "/admin/dashboard"]

    before = len(failed_logins())
    html = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    r = httpx.get(g.admin_url + "/admin/dashboard", headers=html)
    assert r.status_code == 303 and r.headers["location"] == "/admin/dashboard/login"
    assert len(failed_logins()) == before  # no key was tried
    # a cookie the control plane refuses: the form again, saying why, and the refusal audited
    r = httpx.get(g.admin_url + "/admin/dashboard", headers={**html, "Cookie": f"sluice_dashboard={keys['invoker']}"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/dashboard/login?signed_out=1"
    form = httpx.get(g.admin_url + r.headers["location"])
    assert form.status_code == 200 and "no longer valid" in form.text
    assert len(failed_logins()) == before + 1
    # no Accept: text/html (an API client, curl): the usual JSON 401
    r = httpx.get(g.admin_url + "/admin/dashboard")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.get(g.admin_url + "/admin/usage", headers=html)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
