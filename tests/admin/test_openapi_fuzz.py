"""The control plane publishes its contract as OpenAPI 3.1 at /admin/openapi.json, generated
from the endpoint table; a property-based fuzz of every endpoint in it (schemathesis) finds no
5xx and no answer outside the contract (errors in the OpenAI envelope)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode

from sluice.admin.api import AdminApi
from support import fuzz_within_contract, start_gateway


@pytest.fixture(scope="module")
def control(sim, tmp_path_factory):
    """A gateway of its own: the fuzz creates, changes and revokes things."""
    g = start_gateway(
        tmp_path_factory.mktemp("fuzz"),
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-prod", "upstream": "sim", "environment": "prod"}],
        identities=[{"name": "app", "owner": "a@example.com", "models": ["sim-small"]}],
    )
    yield g
    g.stop()


def test_the_document_is_openapi_3_1_and_needs_a_control_key(control):
    assert httpx.get(control.admin_url + "/admin/openapi.json").status_code == 401
    doc = control.admin("GET", "/admin/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    create = doc["paths"]["/admin/identities"]["post"]
    assert create["x-required-scopes"] == ["identities:write"]
    body = doc["components"]["schemas"][create["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]]
    assert set(body["required"]) == {"name", "owner"}
    usage = {p["name"]: p["schema"] for p in doc["paths"]["/admin/usage"]["get"]["parameters"]}
    assert usage["limit"]["type"] == "integer"


def test_every_documented_operation_is_served(control):
    doc = control.admin("GET", "/admin/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method in ops:
            r = control.admin(method.upper(), path.replace("{", "x").replace("}", ""))
            documented = ("application/json", *ops[method]["responses"]["2XX"]["content"])  # the dashboard: text/html
            assert r.headers.get("content-type", "").startswith(documented), (method, path)
            if r.headers["content-type"].startswith("application/json"):
                assert r.json().get("error", {}).get("code") not in ("unknown_url", "method_not_allowed"), (method, path)


@pytest.fixture(scope="module")
def contract(control):
    return schemathesis.openapi.from_url(control.admin_url + "/admin/openapi.json",
                                         headers={"Authorization": f"Bearer {control.admin_key}"})


# The operations come from the endpoint table itself (the same one the document is made from).
OPERATIONS = [(m, p) for m, p, _, _ in AdminApi.__new__(AdminApi).endpoints()]


# About 25 valid and 25 invalid examples for each of the ~26 operations keep the whole run well under a minute
# on a loaded 2-core machine; derandomize keeps a failure reproducible.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_input_to_a_control_endpoint_gets_a_5xx_or_an_answer_outside_the_contract(contract, control, method, path,
                                                                                    mode):
    fuzz_within_contract(contract[path][method], control.admin_url, {"Authorization": f"Bearer {control.admin_key}"},
                         mode=mode)
