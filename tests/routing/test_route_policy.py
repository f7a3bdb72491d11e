"""Policy routes: first match wins on caller, task, size, alias and compliance hints; weighted and
sticky targets; only approved registry versions take traffic; every answer names its route."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from support import Sim, start_gateway

VERSIONS = [
    {"version": "v1", "upstream": "a", "upstream_model": "sim-small", "approved": True, "region": "us",
     "context_window": 32768, "digest": "sha256:v1", "price": {"input": 1.0, "output": 2.0}},
    {"version": "v2", "upstream": "b", "upstream_model": "sim-small", "approved": True, "region": "us"},
    {"version": "eu", "upstream": "b", "upstream_model": "sim-small", "approved": True, "region": "eu", "tier": "gdpr"},
    {"version": "v3", "upstream": "a", "upstream_model": "sim-small"},  # registered, not approved
]
ROUTES = [
    {"name": "eu", "match": {"models": ["chat"], "region": ["eu"]}, "targets": [{"target": "chat@eu"}],
     "fallbacks": ["chat@v1"], "compliance": {"region": "eu"}},
    {"name": "summaries", "match": {"models": ["chat"], "task": ["summarize"]}, "targets": [{"target": "chat@v2"}]},
    {"name": "long", "match": {"models": ["chat"], "min_prompt_tokens": 1000}, "targets": [{"target": "chat@v2"}]},
    {"name": "research", "match": {"models": ["chat"], "teams": ["research"]}, "targets": [{"target": "chat@v2"}]},
    {"name": "tagged", "match": {"models": ["chat"], "tags": ["beta", "internal"]}, "targets": [{"target": "chat@v2"}]},
    {"name": "canary", "match": {"models": ["chat"]},
     "targets": [{"target": "chat@v1", "weight": 90}, {"target": "chat@v2", "weight": 10}]},
    {"name": "sticky", "match": {"models": ["sticky-chat"]}, "sticky": True,
     "targets": [{"target": "chat@v1", "weight": 50}, {"target": "chat@v2", "weight": 50}]},
    {"name": "next", "match": {"models": ["next-chat"]}, "targets": [{"target": "chat@v3"}]},
    {"name": "default", "targets": [{"target": "chat@v1"}]},
]
STICKY_CALLERS = [f"caller-{i}" for i in range(12)]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("route-policy")
    a, b = Sim(tmp, digest="sha256:v1"), Sim(tmp)  # chat@v1's digest, checked (routing.supply)
    g = start_gateway(
        tmp,
        upstreams=[{"name": "a", "base_url": a.url + "/v1", "digest_probe": {}}, {"name": "b", "base_url": b.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "a"}],
        identities=[{"name": "app", "owner": "o", "models": ["*"]},
                    {"name": "lab", "owner": "o", "models": ["*"], "team": "research"},
                    *({"name": n, "owner": "o", "models": ["sticky-chat"]} for n in STICKY_CALLERS)],
        extra={"teams": [{"name": "research", "owner": "o"}],
               "registry": [{"name": "chat", "versions": VERSIONS}], "routes": ROUTES},
    )
    yield g, a, b
    g.stop()
    a.stop()
    b.stop()


def chat(g, key: str, model: str = "chat", content: str = "hi", headers: dict | None = None, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 1, **extra}
    return g.post("/v1/chat/completions", key, json=body, headers=dict(headers or {}))


def route_of(r: httpx.Response) -> tuple[str, str]:
    name, target = r.headers["x-sluice-route"].split("; target=")
    return name, target


def test_first_matching_route_wins_on_task_size_team_tags_and_region(rig):
    g, _, _ = rig
    app, lab = g.keys["app"], g.keys["lab"]
    assert route_of(chat(g, app, headers={"x-sluice-task": "summarize"})) == ("summaries", "chat@v2")
    assert route_of(chat(g, app, metadata={"task": "summarize"})) == ("summaries", "chat@v2")
    assert route_of(chat(g, app, content="word " * 5000)) == ("long", "chat@v2")
    assert route_of(chat(g, lab)) == ("research", "chat@v2")
    assert route_of(chat(g, app, headers={"x-sluice-tags": "internal, beta"})) == ("tagged", "chat@v2")
    assert route_of(chat(g, app, headers={"x-sluice-tags": "beta"}))[0] == "canary"  # needs both tags
    # A region hint that matches an earlier route wins over the task hint of a later one.
    assert route_of(chat(g, app, headers={"x-sluice-region": "eu", "x-sluice-task": "summarize"})) == ("eu", "chat@eu")


def test_the_default_route_closes_the_table_and_a_models_entry_is_a_route_with_one_target(rig):
    g, _, _ = rig
    r = chat(g, g.keys["app"], model="anything-else")
    assert r.status_code == 200 and route_of(r) == ("default", "chat@v1")
    r = chat(g, g.keys["app"], model="sim-small")
    assert r.status_code == 200 and route_of(r) == ("sim-small", "sim-small@default")


def test_every_answer_carries_its_route_and_request_id_and_the_decision_explains_it(rig):
    g, _, _ = rig
    r = chat(g, g.keys["app"], headers={"x-sluice-task": "summarize"})
    rid = r.headers["x-request-id"]
    why = g.admin("GET", f"/admin/routes/decisions/{rid}").json()
    assert why["route"] == "summaries" and why["target"] == "chat@v2"
    assert why["candidates"] == [{"target": "chat@v2", "weight": 1, "share": 1.0, "upstream": "b", "breaker": "closed"}]
    assert why["attempts"][0]["target"] == "chat@v2" and why["attempts"][0]["outcome"] == "ok"
    assert g.admin("GET", "/admin/routes/decisions/req-unknown").status_code == 404


def test_a_ten_percent_canary_gets_ten_percent_of_three_thousand_requests(rig):
    g, _, _ = rig
    key = g.keys["app"]

    async def run() -> Counter:
        seen: Counter = Counter()
        sem = asyncio.Semaphore(16)
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            async def one() -> None:
                async with sem:
                    r = await client.post(g.v1 + "/chat/completions", json=body)
                    assert r.status_code == 200
                    seen[route_of(r)[1]] += 1
            await asyncio.gather(*(one() for _ in range(3000)))
        return seen

    seen = asyncio.run(run())
    share = seen["chat@v2"] / 3000
    # Binomial(3000, 0.1): one standard deviation is 0.55 percentage points; 2.5 points is 4.5 of them.
    assert abs(share - 0.10) < 0.025, seen
    assert seen["chat@v1"] + seen["chat@v2"] == 3000


def test_sticky_routing_gives_one_identity_one_target(rig):
    g, _, _ = rig
    per_caller = {}
    for name in STICKY_CALLERS:
        targets = {route_of(chat(g, g.keys[name], model="sticky-chat"))[1] for _ in range(15)}
        assert len(targets) == 1, (name, targets)
        per_caller[name] = targets.pop()
    # Twelve callers at 50/50 all landing on one side would happen once in 2,048 runs.
    assert set(per_caller.values()) == {"chat@v1", "chat@v2"}


def test_an_unapproved_version_takes_no_traffic_until_an_operator_approves_it(rig):
    g, _, _ = rig
    r = chat(g, g.keys["app"], model="next-chat")
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_target"
    assert r.headers["x-sluice-route"] == "next; target=-"
    op = g.admin("POST", "/admin/identities", json={"name": "ops", "owner": "o", "roles": ["operator"]}).json()
    op_key = g.admin("POST", f"/admin/identities/{op['id']}/keys", json={"plane": "control"}).json()["key"]
    ka = g.admin("POST", "/admin/identities", json={"name": "ka", "owner": "o", "roles": ["key-admin"]}).json()
    ka_key = g.admin("POST", f"/admin/identities/{ka['id']}/keys", json={"plane": "control"}).json()["key"]
    path = g.admin_url + "/admin/registry/chat/versions/v3/approval"
    assert httpx.put(path, json={"approved": True}, headers={"Authorization": f"Bearer {ka_key}"}).status_code == 403
    assert httpx.put(path, json={"approved": True}, headers={"Authorization": f"Bearer {op_key}"}).status_code == 200
    r = chat(g, g.keys["app"], model="next-chat")
    assert r.status_code == 200 and route_of(r) == ("next", "chat@v3")
    change = g.admin("GET", "/admin/changes?limit=5").json()["data"][0]
    assert change["action"] == "registry.approve" and change["target"] == "chat@v3" and change["actor"] == "ops"


def test_a_compliance_boundary_holds_even_when_its_only_target_fails(rig):
    g, _, b = rig
    b.faults(error_status=500)
    try:
        r = chat(g, g.keys["app"], headers={"x-sluice-region": "eu"})
        assert r.status_code == 502 and route_of(r) == ("eu", "chat@eu")
        why = g.admin("GET", f"/admin/routes/decisions/{r.headers['x-request-id']}").json()
        assert [a["target"] for a in why["attempts"]] == ["chat@eu"]  # the us fallback is never tried
        assert why["excluded"] == {"chat@v1": "outside the route's compliance boundary"}
    finally:
        b.clear_faults()


def test_a_route_naming_an_unknown_version_is_refused_at_start(tmp_path):
    from sluice.core import config
    from sluice.core.errors import ConfigError

    raw = {"upstreams": [{"name": "a", "base_url": "http://127.0.0.1:1/v1"}],
           "registry": [{"name": "chat", "versions": [{"version": "v1", "upstream": "a"}]}],
           "routes": [{"name": "r", "targets": [{"target": "chat@v9"}]}]}
    with pytest.raises(ConfigError, match=r"chat@v9.*\$\.routes\[0\]\.targets\[0\]"):
        config.parse(raw)
    raw["routes"] = [{"name": "all", "targets": [{"target": "chat@v1"}]},
                     {"name": "never", "match": {"models": ["x"]}, "targets": [{"target": "chat@v1"}]}]
    with pytest.raises(ConfigError, match="can never match"):
        config.parse(raw)
