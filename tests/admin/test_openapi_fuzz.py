"""The control plane publishes its contract as OpenAPI 3.1 at /admin/openapi.json, generated
from the endpoint table; a property-based fuzz of every endpoint in it (schemathesis) finds no
5xx and no answer outside the contract (errors in the OpenAI envelope)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from sluice.admin.api import AdminApi
from support import start_gateway


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
    operation = contract[path][method]
    headers = {"Authorization": f"Bearer {control.admin_key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=control.admin_url, headers=headers, timeout=10)
        case.validate_response(response, checks=[not_a_server_error, content_type_conformance,
                                                 response_schema_conformance])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    fuzz()
