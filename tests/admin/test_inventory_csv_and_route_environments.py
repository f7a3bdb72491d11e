"""The inventory's CSV export cannot carry a spreadsheet formula (OWASP CSV injection), and a
route change cannot move a model across environments: an upstream's environment is that of
the models the config file routes to it (one environment, or shared when mixed)."""

from __future__ import annotations

import csv
import io

import pytest

from support import start_gateway

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
