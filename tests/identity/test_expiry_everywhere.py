"""Expiry everywhere: an expired identity is refused on key authentication, on token minting
(from a key or a federated workload token) and on token use; a token never outlives its key
(expiry or rotation overlap) nor its identity."""

from __future__ import annotations

import time

import httpx
import pytest

from local_issuer import LocalIssuer
from sluice.identity import generate
from support import Gateway, start_gateway

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
KEY = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ISS = "https://k8s.test"
PAST = time.time() - 60


@pytest.fixture(scope="module")
def rig(sim, tmp_path_factory):
    issuer = LocalIssuer()
    g = start_gateway(
        tmp_path_factory.mktemp("expiry"),
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[
            {"name": "expired", "owner": "o@example.com", "models": ["sim-small"], "expires_at": PAST},
            {"name": "expired-fed", "owner": "o@example.com", "models": ["sim-small"], "expires_at": PAST, "keys": []},
            {"name": "short-fed", "owner": "o@example.com", "models": ["sim-small"], "keys": [],
             "expires_at": time.time() + 120},
        ],
        extra={"federation": [{
            "name": "k8s", "issuer": ISS, "audience": "sluice", "jwks_url": issuer.url + "/jwks", "algorithms": ["RS256"],
            "rules": [{"match": {"sub": "expired"}, "identity": "expired-fed"}, {"match": {"sub": "short"}, "identity": "short-fed"}],
        }]},
    )
    yield g, issuer
    g.stop()
    issuer.stop()


def _mint(g, subject: str, kind: str = KEY) -> httpx.Response:
    return httpx.post(g.v1 + "/token", data={"grant_type": GRANT, "subject_token": subject, "subject_token_type": kind})


def _models(g, credential: str) -> int:
    return httpx.get(g.v1 + "/models", headers={"Authorization": f"Bearer {credential}"}).status_code


def _identity_with_key(g, expires_in: float | None = None) -> tuple[dict, dict]:
    body = {"name": f"exp-{time.time_ns() % 10**12}", "owner": "o@example.com", "models": ["sim-small"]}
    if expires_in is not None:
        body["expires_at"] = time.time() + expires_in
    ident = g.admin("POST", "/admin/identities", json=body).json()
    return ident, g.admin("POST", f"/admin/identities/{ident['id']}/keys", json={}).json()


def test_the_key_of_an_expired_identity_is_refused(rig):
    g, _ = rig
    assert _models(g, g.keys["expired"]) == 401
    r = _mint(g, g.keys["expired"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"


def test_an_expired_identity_mapped_by_a_federation_rule_receives_no_token(rig):
    g, issuer = rig
    r = _mint(g, issuer.mint(issuer.claims(ISS, "sluice", "expired")), JWT)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    assert "access_token" not in r.text


def test_a_federated_token_expires_no_later_than_its_identity(rig):
    g, issuer = rig
    r = _mint(g, issuer.mint(issuer.claims(ISS, "sluice", "short")), JWT)
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] <= 120


def test_a_token_expires_no_later_than_its_identity(rig):
    g, _ = rig
    _, key = _identity_with_key(g, expires_in=60)
    r = _mint(g, key["key"])
    assert r.status_code == 200 and r.json()["expires_in"] <= 60, r.text


def test_a_token_dies_when_its_identity_expires(rig):
    g, _ = rig
    ident, key = _identity_with_key(g, expires_in=3)
    token = _mint(g, key["key"]).json()["access_token"]
    assert _models(g, token) == 200
    time.sleep(max(0.0, ident["expires_at"] - time.time()) + 0.2)
    assert _models(g, token) == 401
    assert _models(g, key["key"]) == 401


def test_a_token_expires_no_later_than_its_keys_rotation_overlap_and_dies_with_it(rig):
    g, _ = rig
    _, key = _identity_with_key(g)
    before = _mint(g, key["key"]).json()["access_token"]  # minted before the rotation: 15 min by default
    rot = g.admin("POST", f"/admin/keys/{key['id']}/rotate", json={"overlap_seconds": 3})
    assert rot.status_code == 201, rot.text
    during = _mint(g, key["key"])
    assert during.status_code == 200 and during.json()["expires_in"] <= 3, during.text
    assert _models(g, before) == 200
    time.sleep(3.5)
    assert _models(g, before) == 401 and _models(g, during.json()["access_token"]) == 401
    assert _models(g, rot.json()["key"]) == 200


@pytest.mark.parametrize("via", ["key", "federation"])
def test_a_token_dies_when_its_identity_is_given_an_earlier_expiry_after_it_was_minted(sim, tmp_path, via):
    """The token was minted (and its exp set) while the identity ran for an hour; the config
    then shortens the identity's life: the token dies with the identity, not at its own exp."""
    key, admin, issuer = generate("dev"), generate("prod", kind="admin"), LocalIssuer()

    def config(expires_at: float) -> dict:
        return {"upstreams": [{"name": "sim", "base_url": sim.url + "/v1"}], "models": [{"name": "sim-small", "upstream": "sim"}],
                "identities": [{"name": "app", "owner": "o@example.com", "models": ["sim-small"], "keys": [key],
                                "expires_at": expires_at}],
                "federation": [{"name": "k8s", "issuer": ISS, "audience": "sluice", "jwks_url": issuer.url + "/jwks",
                                "algorithms": ["RS256"], "rules": [{"match": {"sub": "app"}, "identity": "app"}]}]}

    try:
        g = Gateway(tmp_path, config(time.time() + 3600), {"app": key}, admin)
        try:
            r = _mint(g, key) if via == "key" else _mint(g, issuer.mint(issuer.claims(ISS, "sluice", "app")), JWT)
            assert r.status_code == 200 and r.json()["expires_in"] > 600, r.text
            token = r.json()["access_token"]
        finally:
            g.stop()
        for margin in (10, 30, 60):  # start-up takes seconds on a loaded machine: it must end before the identity
            ends = time.time() + margin
            g = Gateway(tmp_path, config(ends), {"app": key}, admin)
            if time.time() < ends - 2:
                break
            g.stop()
        try:
            r = httpx.get(g.v1 + "/models", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            time.sleep(max(0.0, ends - time.time()) + 0.3)
            assert _models(g, token) == 401
        finally:
            g.stop()
    finally:
        issuer.stop()
