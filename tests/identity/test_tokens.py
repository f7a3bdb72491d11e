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
    # A 5 s lifetime, not 2: the first use must land inside it even on a loaded machine; the
    # wait is then measured from the token's own exp claim, so it is exact however long it took.
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"tokens": {"default_ttl_s": 5, "max_ttl_s": 5}})
    try:
        token = exchange(g, g.keys["a"]).json()["access_token"]
        assert g.post("/v1/chat/completions", token, json=CHAT).status_code == 200
        time.sleep(max(claims(token)["exp"] - time.time() + 0.3, 0))
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
    (entry,) = [e for e in _rotations(gw) if e["target"] == kid(new)]  # one change: the keys and who rotated them
    assert entry["actor"].startswith("config-admin") and kid(old) in entry["detail"]["retired"]
    assert entry["request_id"] == r.headers["x-request-id"]


async def _keyrings(url: str, n: int):
    from sluice.audit import MerkleJournal
    from sluice.core.config import Tokens
    from sluice.identity import Keyring, Sealer
    from sluice.store.sql import SqlStore

    stores = [SqlStore(url) for _ in range(n)]
    for s in stores:
        s.journal = MerkleJournal()
        await s.open()
    return stores, [Keyring(s, Sealer(b"a-pepper-of-at-least-16-chars"), Tokens()) for s in stores]


async def test_a_signing_key_rotation_whose_record_cannot_be_written_changes_no_key(store_url):
    from sqlalchemy import text

    from sluice.identity import Actor
    from sluice.store import StoreUnavailable

    (store,), (keyring,) = await _keyrings(store_url, 1)
    try:
        await keyring.load()
        before = await store.list_signing_keys()
        async with store.engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_head"))  # no entry can be written now
        with pytest.raises(StoreUnavailable):
            await keyring.rotate(Actor("alice"))
        assert await store.list_signing_keys() == before  # neither the new key nor the old one's retirement
    finally:
        await store.close()


async def test_keyrings_finding_no_current_key_together_make_one_recorded_key(store_url):
    import asyncio

    stores, keyrings = await _keyrings(store_url, 3)  # replicas, or the workers of one process, starting together
    try:
        await asyncio.gather(*(k.load() for k in keyrings))
        made = await stores[0].list_signing_keys()
        assert len(made) == 1
        assert {k.current.kid for k in keyrings} == {made[0].kid}
        changes = [c for c in await stores[0].list_changes() if c.action == "signing-key.rotate"]
        assert [(c.actor, c.target) for c in changes] == [("auto-rotation", made[0].kid)]
    finally:
        for s in stores:
            await s.close()


def test_signing_keys_rest_sealed_under_the_pepper_and_open_only_with_it(gw):
    import sqlite3

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from sluice.identity.tokens import Sealer
    from support import PEPPER

    db = sqlite3.connect(gw.tmp / "sluice.db")
    rows = db.execute("select kid, private_sealed, public_jwk from signing_keys").fetchall()
    db.close()
    assert rows
    for kid, sealed, public in rows:
        with pytest.raises(InvalidTag):
            Sealer(b"not-the-pepper").open(sealed)
        private = load_pem_private_key(Sealer(PEPPER.encode()).open(sealed), password=None)
        numbers = private.public_key().public_numbers()
        jwk = json.loads(public)
        assert "d" not in jwk and jwk["kid"] == kid
        assert int.from_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="), "big") == numbers.x  # the published half of it


def test_exchange_refuses_revoked_expired_and_control_keys_and_disabled_identities(gw):
    ident = gw.admin("POST", "/admin/identities", json={"name": f"ex-{time.time_ns() % 10**9}", "owner": "o",
                                                        "models": ["sim-small"]}).json()
    revoked = gw.admin("POST", f"/admin/identities/{ident['id']}/keys", json={}).json()
    gw.admin("POST", f"/admin/keys/{revoked['id']}/revoke")
    r = exchange(gw, revoked["key"])
    assert r.status_code == 401 and "access_token" not in r.text
    expiring = gw.admin("POST", f"/admin/identities/{ident['id']}/keys", json={"ttl_days": 1 / 86400}).json()
    time.sleep(1.2)
    r = exchange(gw, expiring["key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
    auditor = gw.admin("POST", "/admin/identities", json={"name": f"exa-{time.time_ns() % 10**9}", "owner": "o",
                                                          "roles": ["auditor"]}).json()
    control = gw.admin("POST", f"/admin/identities/{auditor['id']}/keys", json={"plane": "control"}).json()
    r = exchange(gw, control["key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "wrong_plane"
    assert exchange(gw, gw.admin_key).status_code == 401  # the break-glass keys are control keys too
    live = gw.admin("POST", f"/admin/identities/{ident['id']}/keys", json={}).json()
    assert exchange(gw, live["key"]).status_code == 200
    gw.admin("DELETE", f"/admin/identities/{ident['id']}")
    r = exchange(gw, live["key"])
    assert r.status_code == 401 and "access_token" not in r.text


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(head: dict, body: dict) -> str:
    return _b64(json.dumps({**head, "alg": "none"}).encode()) + "." + _b64(json.dumps(body).encode()) + "."


def _hs256_with_the_public_key(head: dict, body: dict, public_jwk: dict) -> str:
    import hashlib
    import hmac

    h = _b64(json.dumps({**head, "alg": "HS256"}).encode()) + "." + _b64(json.dumps(body).encode())
    return h + "." + _b64(hmac.new(json.dumps(public_jwk).encode(), h.encode(), hashlib.sha256).digest())


def _foreign_es256(head: dict, body: dict) -> str:
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import ECKey

    stranger = ECKey.generate_key("P-256", parameters={"kid": head["kid"]}, private=True)
    return jose_jwt.encode(head, body, stranger, algorithms=["ES256"])


@pytest.mark.parametrize("forge", ["alg none", "hs256 with the public key", "a foreign key claiming our kid"])
def test_our_own_tokens_refuse_alg_none_hs256_and_a_foreign_key(gw, forge):
    token = exchange(gw, gw.keys["app"]).json()["access_token"]
    head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    body = claims(token)
    body["jti"] = "forged"  # not a token the gateway has already seen and cached
    public = next(k for k in httpx.get(gw.url + "/.well-known/jwks.json").json()["keys"] if k["kid"] == head["kid"])
    forged = {"alg none": lambda: _unsigned(head, body),
              "hs256 with the public key": lambda: _hs256_with_the_public_key(head, body, public),
              "a foreign key claiming our kid": lambda: _foreign_es256(head, body)}[forge]()
    assert gw.post("/v1/chat/completions", token, json=CHAT).status_code == 200  # the genuine one works
    r = gw.post("/v1/chat/completions", forged, json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token", r.text


def test_a_default_token_lifetime_above_the_cap_is_refused_by_the_config_check(tmp_path):
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "sluice.yaml"
    cfg.write_text(yaml.safe_dump({"security": {"pepper": "p" * 32}, "tokens": {"default_ttl_s": 7200, "max_ttl_s": 3600}}))
    r = subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0 and "default_ttl_s" in r.stdout + r.stderr
    cfg.write_text(yaml.safe_dump({"security": {"pepper": "p" * 32}, "tokens": {"default_ttl_s": 600, "max_ttl_s": 3600}}))
    r = subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _rotations(g) -> list[dict]:
    got = g.admin("GET", "/admin/audit/entries", params={"since": "0", "limit": 100000})
    return [e for e in got.json()["data"] if e["action"] == "signing-key.rotate"]


def test_a_signing_key_past_its_rotation_time_is_replaced_by_a_recorded_automatic_rotation_and_a_retired_one_leaves_the_key_set(
        sim, tmp_path):
    """Time is moved by editing the stored key's rotation and expiry times between two starts
    (the minimum rotation period is 60 s); the rotation itself is the gateway's own."""
    import sqlite3

    def start():
        return start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                             models=[{"name": "sim-small", "upstream": "sim"}],
                             identities=[{"name": "a", "owner": "o", "models": ["*"], "keys": [key]}])

    from sluice.identity import generate
    key = generate("dev")
    g = start()
    first = httpx.get(g.url + "/.well-known/jwks.json").json()["keys"]
    made = _rotations(g)  # the first key: made because none was current
    assert [(e["actor"], e["target"], e["detail"]) for e in made] == [("auto-rotation", first[0]["kid"], {"retired": []})]
    assert g.stop() == 0
    db = sqlite3.connect(tmp_path / "sluice.db")
    now = time.time()
    with db:
        db.execute("update signing_keys set retire_at = ?, expires_at = ?", (now - 1, now + 3600))  # due, still published
    g = start()
    try:
        second = [k["kid"] for k in httpx.get(g.url + "/.well-known/jwks.json").json()["keys"]]
        token = exchange(g, key).json()["access_token"]
        kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
        assert kid != first[0]["kid"] and set(second) == {first[0]["kid"], kid}  # rotated; the old one still verifies
        rotated = _rotations(g)[len(made):]
        # the old key retired on its own schedule: this rotation retired none early
        assert [(e["actor"], e["target"], e["detail"]) for e in rotated] == [("auto-rotation", kid, {"retired": []})]
        assert rotated[0]["change_id"] and rotated[0]["before"] != rotated[0]["after"]
    finally:
        assert g.stop() == 0
    with db:
        db.execute("update signing_keys set expires_at = ? where kid = ?", (now - 1, first[0]["kid"]))  # past its last token
    db.close()
    g = start()
    try:
        third = [k["kid"] for k in httpx.get(g.url + "/.well-known/jwks.json").json()["keys"]]
        assert third == [kid]  # retired and gone from the key set; the current one carried over the restart
        assert g.post("/v1/chat/completions", token, json=CHAT).status_code == 200
    finally:
        g.stop()
