"""Short-lived tokens (RFC 8693 token exchange): minted from a key, accepted like keys,
dead with their key, bound to scopes and environment."""

from __future__ import annotations

import base64
import json
import time

import httpx
import openai
import pytest

from support import start_gateway

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def exchange(g, key: str, **extra) -> httpx.Response:
    return httpx.post(g.v1 + "/token", data={"grant_type": GRANT, "subject_token": key,
                                             "subject_token_type": ACCESS, **extra})


def claims(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_a_key_is_exchanged_for_a_short_lived_token_that_the_sdk_uses(gw):
    r = exchange(gw, gw.keys["app"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["issued_token_type"] == ACCESS
    assert body["expires_in"] == 900 and r.headers["Cache-Control"] == "no-store"
    c = claims(body["access_token"])
    assert c["iss"] == "sluice" and c["aud"] == "sluice" and c["env"] == "dev"
    assert c["exp"] - c["iat"] == 900
    client = openai.OpenAI(base_url=gw.v1, api_key=body["access_token"])
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    assert {m.id for m in client.models.list()} == {"sim-small", "sim-embed"}


def test_jwks_publishes_the_signing_key(gw):
    token = exchange(gw, gw.keys["app"]).json()["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    jwks = httpx.get(gw.url + "/.well-known/jwks.json").json()
    kids = {k["kid"] for k in jwks["keys"]}
    assert header["alg"] == "ES256" and header["kid"] in kids
    assert all("d" not in k for k in jwks["keys"])  # never the private half


def test_scope_narrows_the_token_to_fewer_models(gw):
    r = exchange(gw, gw.keys["app"], scope="sim-embed")
    token = r.json()["access_token"]
    assert r.json()["scope"] == "sim-embed"
    assert gw.post("/v1/chat/completions", token, json=CHAT).status_code == 404
    assert gw.post("/v1/embeddings", token, json={"model": "sim-embed", "input": "x"}).status_code == 200


def test_scope_beyond_the_identity_is_refused(gw):
    r = exchange(gw, gw.keys["app"], scope="sim-small sim-secret")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_scope"


@pytest.mark.parametrize("form,code", [
    ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
    ({"grant_type": GRANT, "subject_token_type": ACCESS}, "invalid_request"),
    ({"grant_type": GRANT, "subject_token": "x", "subject_token_type": "urn:bogus"}, "invalid_request"),
    ({"grant_type": GRANT, "subject_token": "slk_dev_nope", "subject_token_type": ACCESS, "audience": "elsewhere"}, "invalid_target"),
])
def test_malformed_exchange_requests_get_oauth_error_codes(gw, form, code):
    r = httpx.post(gw.v1 + "/token", data=form)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_a_bad_key_gets_no_token(gw):
    r = exchange(gw, "slk_dev_" + "x" * 36)
    assert r.status_code == 401 and "access_token" not in r.text


def test_a_token_cannot_be_exchanged_for_another(gw):
    token = exchange(gw, gw.keys["app"]).json()["access_token"]
    assert exchange(gw, token).status_code == 401


def test_a_tampered_token_is_refused(gw):
    token = exchange(gw, gw.keys["app"]).json()["access_token"]
    head, payload, sig = token.split(".")
    c = claims(token)
    c["sub"] = "cfg-prod-app"
    forged = head + "." + base64.urlsafe_b64encode(json.dumps(c).encode()).rstrip(b"=").decode() + "." + sig
    r = gw.post("/v1/chat/completions", forged, json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


def test_tokens_are_refused_on_the_control_plane(gw):
    token = exchange(gw, gw.keys["app"]).json()["access_token"]
    r = httpx.get(gw.admin_url + "/admin/identities", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "wrong_plane"


def identity_with_token(g, models: list[str]) -> tuple[dict, dict, str]:
    """A new identity, a key of it, and a token minted from that key (already used once, so cached)."""
    ident = g.admin("POST", "/admin/identities", json={"name": f"tok-{time.time_ns() % 10**9}", "owner": "o",
                                                       "models": models}).json()
    key = g.admin("POST", f"/admin/identities/{ident['id']}/keys", json={}).json()
    token = exchange(g, key["key"]).json()["access_token"]
    assert g.post("/v1/chat/completions", token, json=CHAT).status_code == 200
    return ident, key, token


def test_revoking_the_key_kills_its_tokens_on_the_very_next_request(gw):
    _, key, token = identity_with_token(gw, ["sim-small"])
    gw.admin("POST", f"/admin/keys/{key['id']}/revoke")
    r = gw.post("/v1/chat/completions", token, json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"


def test_disabling_the_identity_kills_its_tokens(gw):
    ident, _, token = identity_with_token(gw, ["sim-small"])
    gw.admin("DELETE", f"/admin/identities/{ident['id']}")
    assert gw.post("/v1/chat/completions", token, json=CHAT).status_code == 401


def test_narrowing_an_identity_applies_to_tokens_already_issued(gw):
    ident, _, token = identity_with_token(gw, ["sim-small", "sim-embed"])
    assert gw.admin("PATCH", f"/admin/identities/{ident['id']}", json={"models": ["sim-embed"]}).status_code == 200
    assert gw.post("/v1/chat/completions", token, json=CHAT).status_code == 404


def test_prod_token_is_bound_to_prod(gw):
    token = exchange(gw, gw.keys["prod-app"]).json()["access_token"]
    assert claims(token)["env"] == "prod"
    assert gw.post("/v1/chat/completions", token, json={**CHAT, "model": "sim-prod"}).status_code == 200


def test_tokens_expire(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"tokens": {"default_ttl_s": 2, "max_ttl_s": 2}})
    try:
        token = exchange(g, g.keys["a"]).json()["access_token"]
        assert g.post("/v1/chat/completions", token, json=CHAT).status_code == 200
        time.sleep(2.3)
        r = g.post("/v1/chat/completions", token, json=CHAT)
        assert r.status_code == 401 and r.json()["error"]["code"] in ("expired_token", "invalid_token")
    finally:
        g.stop()


def test_signing_key_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(gw):
    old = exchange(gw, gw.keys["app"]).json()["access_token"]
    r = gw.admin("POST", "/admin/signing-keys/rotate")
    assert r.status_code == 200
    new = exchange(gw, gw.keys["app"]).json()["access_token"]
    kid = lambda t: json.loads(base64.urlsafe_b64decode(t.split(".")[0] + "=="))["kid"]  # noqa: E731
    assert kid(new) == r.json()["kid"] != kid(old)
    assert gw.post("/v1/chat/completions", old, json=CHAT).status_code == 200
    assert gw.post("/v1/chat/completions", new, json=CHAT).status_code == 200
    assert {kid(old), kid(new)} <= {k["kid"] for k in httpx.get(gw.url + "/.well-known/jwks.json").json()["keys"]}


def test_signing_keys_rest_sealed_in_the_store(gw):
    import sqlite3

    db = sqlite3.connect(gw.tmp / "sluice.db")
    rows = db.execute("select private_sealed, public_jwk from signing_keys").fetchall()
    db.close()
    assert rows
    for sealed, public in rows:
        assert "PRIVATE KEY" not in sealed and '"d"' not in public
