"""Workload identity federation: a workload with only a token from a trusted issuer calls a
model through sluice; every malformed, expired, misdirected or forged token is refused."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from local_issuer import LocalIssuer
from support import start_gateway

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
K8S, SPIFFE, CI = "https://k8s.test", "https://spiffe.test", "https://ci.test"
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def fed(sim, tmp_path_factory):
    issuer = LocalIssuer()
    tmp = tmp_path_factory.mktemp("fed")
    jwks_file = tmp / "ci-jwks.json"
    jwks_file.write_text(json.dumps(issuer.jwks))
    g = start_gateway(
        tmp,
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}],
        identities=[
            {"name": "checkout", "owner": "payments@example.com", "models": ["sim-small"], "keys": []},
            {"name": "ml-worker", "owner": "ml@example.com", "models": ["sim-*"], "keys": []},
            {"name": "ci-deployer", "owner": "platform@example.com", "models": ["sim-embed"], "keys": []},
        ],
        extra={"federation": [
            {"name": "k8s", "issuer": K8S, "audience": "sluice", "jwks_url": issuer.url + "/jwks",
             "algorithms": ["RS256"],
             "rules": [{"match": {"sub": "system:serviceaccount:payments:checkout"}, "identity": "checkout"}]},
            {"name": "spiffe", "issuer": SPIFFE, "audience": "sluice", "jwks_url": issuer.url + "/jwks",
             "algorithms": ["ES256"],
             "rules": [{"match": {"sub": "spiffe://example.org/ns/ml/sa/*"}, "identity": "ml-worker"}]},
            {"name": "ci", "issuer": CI, "audience": "https://sluice.example", "jwks_file": str(jwks_file),
             "rules": [{"match": {"repository": "acme/app", "ref": "refs/heads/main"}, "identity": "ci-deployer"}]},
        ]},
    )
    g.started = time.monotonic()  # the key sets were fetched at start: a forced re-fetch waits 10 s after it
    yield g, issuer
    g.stop()
    issuer.stop()


def exchange(g, token: str) -> httpx.Response:
    return httpx.post(g.v1 + "/token", data={"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT})


def test_kubernetes_service_account_calls_a_model_without_a_sluice_key(fed):
    g, issuer = fed
    sa = issuer.mint(issuer.claims(K8S, "sluice", "system:serviceaccount:payments:checkout"))
    r = exchange(g, sa)
    assert r.status_code == 200, r.text
    client = openai.OpenAI(base_url=g.v1, api_key=r.json()["access_token"])
    assert client.chat.completions.create(**CHAT).choices[0].message.content


def test_spiffe_svid_maps_by_path_pattern(fed):
    g, issuer = fed
    svid = issuer.mint(issuer.claims(SPIFFE, "sluice", "spiffe://example.org/ns/ml/sa/trainer"), alg="ES256")
    token = exchange(g, svid).json()["access_token"]
    assert g.post("/v1/embeddings", token, json={"model": "sim-embed", "input": "x"}).status_code == 200


def test_ci_oidc_token_maps_by_repository_and_branch(fed):
    g, issuer = fed
    main = issuer.mint(issuer.claims(CI, "https://sluice.example", "repo:acme/app:ref:refs/heads/main",
                                     repository="acme/app", ref="refs/heads/main"))
    token = exchange(g, main).json()["access_token"]
    assert g.post("/v1/embeddings", token, json={"model": "sim-embed", "input": "x"}).status_code == 200
    assert g.post("/v1/chat/completions", token, json=CHAT).status_code == 404  # ci-deployer has no chat model
    branch = issuer.mint(issuer.claims(CI, "https://sluice.example", "repo:acme/app:ref:refs/heads/feature",
                                       repository="acme/app", ref="refs/heads/feature"))
    r = exchange(g, branch)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unmapped_workload"


def _bad_cases(issuer: LocalIssuer) -> dict[str, tuple[str, str]]:
    good = issuer.claims(K8S, "sluice", "system:serviceaccount:payments:checkout")
    return {
        "wrong audience": (issuer.mint({**good, "aud": "someone-else"}), "aud"),
        "expired": (issuer.mint({**good, "exp": good["iat"] - 120, "iat": good["iat"] - 400, "nbf": good["iat"] - 400}), "exp"),
        "not yet valid": (issuer.mint({**good, "nbf": good["iat"] + 600}), "not yet valid"),
        "forged signature": (issuer.forged(good), "signature"),
        "alg none": (issuer.unsigned(good), "none"),
        "hs256 with the public key": (issuer.hs256_with_public_key(good), "HS256"),
        "rs256 where only es256 is trusted": (issuer.mint(issuer.claims(SPIFFE, "sluice", "spiffe://example.org/ns/ml/sa/x")), "RS256"),
        "wrong issuer": (issuer.mint({**good, "iss": "https://evil.test"}), "issuer"),
        "unmapped subject": (issuer.mint({**good, "sub": "system:serviceaccount:payments:other"}), "mapped"),
        "no expiry": (issuer.mint({k: v for k, v in good.items() if k != "exp"}), "exp"),
        "garbage": ("eyJhbGciOi.not-a-token.x", ""),
    }


CASE_NAMES = ["wrong audience", "expired", "not yet valid", "forged signature", "alg none", "hs256 with the public key",
              "rs256 where only es256 is trusted", "wrong issuer", "unmapped subject", "no expiry", "garbage"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_workload_tokens_are_refused_with_401_and_a_clear_message(fed, case):
    g, issuer = fed
    token, hint = _bad_cases(issuer)[case]
    r = exchange(g, token)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["message"]
    assert "access_token" not in r.text
    if hint:
        assert hint.lower() in err["message"].lower() or hint.lower() in (err["code"] or ""), err


def test_a_workload_token_is_not_itself_a_data_plane_credential(fed):
    g, issuer = fed
    sa = issuer.mint(issuer.claims(K8S, "sluice", "system:serviceaccount:payments:checkout"))
    r = g.post("/v1/chat/completions", sa, json=CHAT)
    assert r.status_code == 401


def test_key_set_is_fetched_over_http_and_cached(fed):
    g, issuer = fed
    assert issuer.fetches >= 1  # fetched at start, before any exchange of this test
    before = issuer.fetches
    for _ in range(5):
        r = exchange(g, issuer.mint(issuer.claims(K8S, "sluice", "system:serviceaccount:payments:checkout")))
        assert r.status_code == 200 and r.json()["access_token"], r.text
    assert issuer.fetches == before  # every one verified from the cached set


def test_an_unknown_kid_refetches_the_key_set_once_and_no_more(fed):
    g, issuer = fed
    time.sleep(max(g.started + 10.5 - time.monotonic(), 0))  # past the 10 s floor between forced re-fetches
    issuer.rotate_ec("ec-2")
    before = issuer.fetches
    svid = issuer.mint(issuer.claims(SPIFFE, "sluice", "spiffe://example.org/ns/ml/sa/trainer"), alg="ES256")
    r = exchange(g, svid)  # signed by a key the cached set does not hold yet
    assert r.status_code == 200 and r.json()["access_token"], r.text
    assert issuer.fetches - before == 1
    for n in range(5):  # unknown kids in a burst do not hammer the issuer
        bad = issuer.stranger(issuer.claims(SPIFFE, "sluice", "spiffe://example.org/ns/ml/sa/trainer"), f"nope-{n}")
        assert exchange(g, bad).status_code == 401
    assert issuer.fetches - before == 1
