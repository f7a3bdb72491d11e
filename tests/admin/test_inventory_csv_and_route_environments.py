"""The inventory's CSV export cannot carry a spreadsheet formula (OWASP CSV injection), and no
policy version can move a model across environments, whatever made it (the retarget endpoint, a
change set, a rollback, a start): an upstream's environment is that of the models the config file
routes to it (one environment, or shared when mixed)."""

from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from support import Sim, start_gateway

FORMULAS = ["=HYPERLINK(\"http://x\")", "+1+1", "-1+1", "@SUM(A1)", "\tcmd", "\rcmd"]


@pytest.fixture(scope="module")
def g(sim, tmp_path_factory):
    up = sim.url + "/v1"
    g = start_gateway(
        tmp_path_factory.mktemp("csv-routes"),
        upstreams=[{"name": n, "base_url": up} for n in ("prod-a", "prod-b", "dev-a", "shared")],
        models=[{"name": "p1", "upstream": "prod-a", "upstream_model": "sim-small", "environment": "prod"},
                {"name": "p2", "upstream": "prod-b", "upstream_model": "sim-small", "environment": "prod"},
                {"name": "d1", "upstream": "dev-a", "upstream_model": "sim-small", "environment": "dev"},
                {"name": "s1", "upstream": "shared", "upstream_model": "sim-small"},
                {"name": "s2", "upstream": "shared", "upstream_model": "sim-small", "environment": "prod"}],
        identities=[{"name": "app", "owner": "a@example.com", "models": ["*"]}],
    )
    yield g
    g.stop()


def test_inventory_csv_neutralises_every_cell_that_could_start_a_formula(g):
    for i, text in enumerate(FORMULAS):
        r = g.admin("POST", "/admin/identities", json={"name": f"csv-{i}", "owner": text, "models": [text]})
        assert r.status_code == 201, r.text
    r = g.admin("GET", "/admin/identities/inventory?format=csv")
    rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
    planted = [row for row in rows if row["name"].startswith("csv-")]
    assert len(planted) == len(FORMULAS)
    for row in planted:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row
        assert row["owner"] == "'" + FORMULAS[int(row["name"][4:])]  # kept, readable, inert


def test_a_prod_model_moves_to_another_prod_upstream(g):
    r = g.admin("PUT", "/admin/routes/p1", json={"upstream": "prod-b"})
    assert r.status_code == 200, r.text
    assert g.admin("PUT", "/admin/routes/p1", json={"upstream": "prod-a"}).status_code == 200


@pytest.mark.parametrize(("model", "upstream"), [("p1", "dev-a"), ("p1", "shared"), ("d1", "prod-a"),
                                                 ("d1", "shared"), ("s1", "prod-a"), ("s2", "dev-a")])
def test_a_route_change_that_would_move_a_model_across_environments_is_a_409(g, model, upstream):
    before = {t["model"]: t for t in g.admin("GET", "/admin/routes").json()["data"]}[model]
    r = g.admin("PUT", f"/admin/routes/{model}", json={"upstream": upstream})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "environment_mismatch" and err["param"] == "upstream"
    after = {t["model"]: t for t in g.admin("GET", "/admin/routes").json()["data"]}[model]
    assert after == before


def _routing_with(g, target: str, **changes: object) -> dict:
    """The active routing section with one registry version's fields changed."""
    routing = g.admin("GET", "/admin/policy/versions/active?format=json").json()["document"]["routing"]
    for m in routing["registry"]:
        for v in m["versions"]:
            if f"{m['name']}@{v['version']}" == target:
                v.update(changes)
    return routing


def test_no_path_that_compiles_a_policy_moves_a_model_across_environments(sim, tmp_path):
    """The environment rule holds where every version compiles, not only on the retarget endpoint:
    a dev change set (applied at once, no approval) is refused as the endpoint is, and so is
    relabelling a version or adding one that would put one environment's callers on another's upstream."""
    prod_sim = Sim(tmp_path)
    up = sim.url + "/v1"
    g = start_gateway(
        tmp_path,
        upstreams=[{"name": "prod-a", "base_url": prod_sim.url + "/v1"}, {"name": "prod-b", "base_url": prod_sim.url + "/v1"},
                   {"name": "dev-a", "base_url": up}, {"name": "shared", "base_url": up}],
        models=[{"name": "p1", "upstream": "prod-a", "upstream_model": "sim-small", "environment": "prod"},
                {"name": "p2", "upstream": "prod-b", "upstream_model": "sim-small", "environment": "prod"},
                {"name": "d1", "upstream": "dev-a", "upstream_model": "sim-small", "environment": "dev"},
                {"name": "s1", "upstream": "shared", "upstream_model": "sim-small"}],
        identities=[{"name": "dev-app", "owner": "d@example.com", "environment": "dev", "models": ["*"]}],
    )

    def served_by_prod(model: str) -> int:
        before = prod_sim.stats()["chat_requests"]
        r = g.post("/v1/chat/completions", g.keys["dev-app"],
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        return prod_sim.stats()["chat_requests"] - before

    try:
        assert served_by_prod("d1") == 0
        version = g.admin("GET", "/admin/policy").json()["version"]
        moves = [_routing_with(g, "d1@default", upstream="prod-a"),  # the dev model onto a prod upstream
                 _routing_with(g, "s1@default", upstream="prod-b"),  # a shared model onto a prod upstream
                 _routing_with(g, "p1@default", upstream="dev-a"),  # a prod model onto a dev upstream
                 _routing_with(g, "p1@default", environment=None),  # every caller onto a prod upstream
                 _routing_with(g, "d1@default", environment="prod")]  # prod callers onto a dev upstream
        added = _routing_with(g, "none@none")
        added["registry"].append({"name": "d1x", "versions": [{"version": "v1", "upstream": "prod-a", "approved": True,
                                                               "upstream_model": "sim-small"}]})
        added["routes"].insert(0, {"name": "d1x", "match": {"models": ["d1"]}, "targets": [{"target": "d1x@v1"}]})
        for routing in moves + [added]:
            r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": routing}, "reason": "move"})
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "environment_mismatch" and err["param"] == "upstream", err
        assert g.admin("GET", "/admin/policy").json()["version"] == version
        assert served_by_prod("d1") == 0 and served_by_prod("s1") == 0
        # the rule is the same one the endpoint held: a prod model still moves among prod upstreams
        r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": _routing_with(g, "p1@default", upstream="prod-b")},
                                                           "reason": "move p1"})
        assert r.status_code == 201, r.text
    finally:
        g.stop()
        prod_sim.stop()


def test_a_stored_version_across_environments_is_neither_rolled_back_to_nor_served_at_start(sim, tmp_path):
    """A version the rule was not held to (stored before it was) compiles under it like any other:
    a rollback to it is refused, and a replica will not start serving it."""
    db = tmp_path / "sluice.db"
    up = sim.url + "/v1"
    spec = dict(upstreams=[{"name": "prod-a", "base_url": up}, {"name": "dev-a", "base_url": up}],
                models=[{"name": "p1", "upstream": "prod-a", "upstream_model": "sim-small", "environment": "prod"},
                        {"name": "d1", "upstream": "dev-a", "upstream_model": "sim-small", "environment": "dev"}],
                identities=[{"name": "dev-app", "owner": "d@example.com", "environment": "dev", "models": ["*"]}],
                extra={"store": {"url": f"sqlite:///{db}"}})
    g = start_gateway(tmp_path, **spec)
    assert g.admin("PUT", "/admin/limits", json={"rules": [{"name": "rpm", "requests_per_minute": 100}]}).status_code == 200
    g.stop()

    def cross(version: int) -> None:
        """Put d1 on the prod upstream in a stored version, as the change-set path could before."""
        with sqlite3.connect(db) as conn:
            (doc,) = conn.execute("SELECT document FROM policy_versions WHERE id = ?", (version,)).fetchone()
            conn.execute("UPDATE policy_versions SET document = ? WHERE id = ?",
                         (doc.replace('"upstream":"dev-a"', '"upstream":"prod-a"'), version))

    cross(1)
    g = start_gateway(tmp_path, **spec)
    try:
        for body in ({"version": 1, "reason": "back", "dry_run": True}, {"version": 1, "reason": "back"}):
            r = g.admin("POST", "/admin/policy/rollback", json=body)
            assert r.status_code == 409 and r.json()["error"]["code"] == "environment_mismatch", r.text
        assert g.admin("GET", "/admin/policy").json()["version"] == 2
    finally:
        g.stop()
    cross(2)
    with pytest.raises(RuntimeError) as refused:
        start_gateway(tmp_path, **spec)
    assert "the stored policy (version 2) cannot be served: d1@default" in str(refused.value)
    assert "Traceback" not in str(refused.value)
