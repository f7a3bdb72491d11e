"""Keys: unknown, expired, revoked and out-of-scope keys are refused with the right status."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import httpx
import openai
import pytest

from sluice.identity import generate

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def test_missing_key_is_401(gw):
    r = gw.post("/v1/chat/completions", None, json=CHAT)
    assert r.status_code == 401 and _error(r)["code"] == "missing_api_key"


@pytest.mark.parametrize("header", ["Bearer", "Bearer two words", "Basic abc", "bearer nope", "Token slk_dev_x"])
def test_malformed_authorization_is_401(gw, header):
    r = httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers={"Authorization": header})
    assert r.status_code == 401
    _error(r)


def test_unknown_but_well_formed_key_is_401(gw):
    r = gw.post("/v1/chat/completions", generate("dev"), json=CHAT)
    assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key"


def test_sdk_raises_authentication_error(gw):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.v1, api_key="slk_dev_wrong", max_retries=0).chat.completions.create(**CHAT)


def test_out_of_scope_model_looks_exactly_like_a_missing_one(gw):
    scoped_out = gw.post("/v1/chat/completions", gw.keys["app"], json={**CHAT, "model": "sim-secret"})
    missing = gw.post("/v1/chat/completions", gw.keys["app"], json={**CHAT, "model": "no-such-model"})
    assert scoped_out.status_code == missing.status_code == 404
    a, b = _error(scoped_out), _error(missing)
    assert a["code"] == b["code"] == "model_not_found"
    assert a["message"].replace("sim-secret", "X") == b["message"].replace("no-such-model", "X")
    # the owner of sim-secret does get it
    assert gw.post("/v1/chat/completions", gw.keys["other"], json={**CHAT, "model": "sim-secret"}).status_code == 200


def test_dev_identity_cannot_reach_a_prod_model(gw):
    assert gw.post("/v1/chat/completions", gw.keys["app"], json={**CHAT, "model": "sim-prod"}).status_code == 404
    assert gw.post("/v1/chat/completions", gw.keys["prod-app"], json={**CHAT, "model": "sim-prod"}).status_code == 200


def test_admin_key_is_refused_on_the_data_plane(gw):
    r = gw.post("/v1/chat/completions", gw.admin_key, json=CHAT)
    assert r.status_code == 401 and _error(r)["code"] == "wrong_plane"


def test_data_key_is_refused_on_the_control_plane(gw):
    r = httpx.get(gw.admin_url + "/admin/identities", headers={"Authorization": f"Bearer {gw.keys['app']}"})
    assert r.status_code == 401 and _error(r)["code"] == "wrong_plane"
    assert httpx.get(gw.admin_url + "/admin/identities").status_code == 401


@pytest.fixture()
def fresh_identity(gw):
    name = f"svc-{time.time_ns() % 10**9}"
    r = gw.admin("POST", "/admin/identities", json={"name": name, "owner": "o@example.com", "models": ["sim-small"]})
    assert r.status_code == 201, r.text
    return r.json()


def _issue(gw, identity_id: str, **body) -> dict:
    r = gw.admin("POST", f"/admin/identities/{identity_id}/keys", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    return r.json()


def test_issued_key_works_and_revoked_key_is_refused_on_the_very_next_request(gw, fresh_identity):
    k = _issue(gw, fresh_identity["id"])
    assert k["key"].startswith("slk_dev_")
    assert gw.post("/v1/chat/completions", k["key"], json=CHAT).status_code == 200
    assert gw.admin("POST", f"/admin/keys/{k['id']}/revoke").status_code == 200
    r = gw.post("/v1/chat/completions", k["key"], json=CHAT)
    assert r.status_code == 401


# The key lifetime and rotation overlap below are 4 s, not 1.5: the uses that must land inside
# them have to on a loaded machine too; each wait is measured from a time taken after the call
# that started the clock returned, so it always reaches past the deadline.
WINDOW_S = 4.0


def test_expired_key_is_refused(gw, fresh_identity):
    k = _issue(gw, fresh_identity["id"], ttl_days=WINDOW_S / 86400)
    issued = time.monotonic()
    assert gw.post("/v1/chat/completions", k["key"], json=CHAT).status_code == 200
    time.sleep(max(issued + WINDOW_S + 0.3 - time.monotonic(), 0))
    r = gw.post("/v1/chat/completions", k["key"], json=CHAT)
    assert r.status_code == 401 and _error(r)["code"] == "expired_api_key"


def test_rotation_with_overlap_keeps_the_old_key_alive_only_for_the_overlap(gw, fresh_identity):
    old = _issue(gw, fresh_identity["id"])
    r = gw.admin("POST", f"/admin/keys/{old['id']}/rotate", json={"overlap_seconds": WINDOW_S})
    rotated = time.monotonic()
    assert r.status_code == 201
    new = r.json()
    assert gw.post("/v1/chat/completions", old["key"], json=CHAT).status_code == 200
    assert gw.post("/v1/chat/completions", new["key"], json=CHAT).status_code == 200
    time.sleep(max(rotated + WINDOW_S + 0.3 - time.monotonic(), 0))
    assert gw.post("/v1/chat/completions", old["key"], json=CHAT).status_code == 401
    assert gw.post("/v1/chat/completions", new["key"], json=CHAT).status_code == 200


def test_rotation_without_overlap_kills_the_old_key_at_once(gw, fresh_identity):
    old = _issue(gw, fresh_identity["id"])
    new = gw.admin("POST", f"/admin/keys/{old['id']}/rotate", json={}).json()
    assert gw.post("/v1/chat/completions", old["key"], json=CHAT).status_code == 401
    assert gw.post("/v1/chat/completions", new["key"], json=CHAT).status_code == 200


def test_disabling_an_identity_revokes_all_its_keys(gw, fresh_identity):
    a, b = _issue(gw, fresh_identity["id"]), _issue(gw, fresh_identity["id"])
    assert gw.admin("DELETE", f"/admin/identities/{fresh_identity['id']}").status_code == 200
    assert gw.post("/v1/chat/completions", a["key"], json=CHAT).status_code == 401
    assert gw.post("/v1/chat/completions", b["key"], json=CHAT).status_code == 401
    keys = gw.admin("GET", f"/admin/identities/{fresh_identity['id']}/keys").json()["data"]
    assert sorted(k["id"] for k in keys) == sorted([a["id"], b["id"]])  # both listed, so the next line checks them
    assert all(not k["active"] and k["revoked_at"] for k in keys)


def test_key_listing_never_shows_a_secret_or_hash(gw, fresh_identity):
    k = _issue(gw, fresh_identity["id"])
    listed = gw.admin("GET", f"/admin/identities/{fresh_identity['id']}/keys").text
    assert k["key"] not in listed and "hash" not in listed
    assert k["key"][-4:] in listed  # the display form ends with the last four


def test_a_stored_key_cannot_be_read_back_from_the_database(gw, fresh_identity):
    k = _issue(gw, fresh_identity["id"])
    db = sqlite3.connect(gw.tmp / "sluice.db")
    dump = "\n".join(db.iterdump())
    db.close()
    for secret in [k["key"], *gw.keys.values(), gw.admin_key]:
        assert secret not in dump
        assert secret[9:39] not in dump  # not even the random part


def test_keys_check_tells_a_real_key_offline():
    key = generate("prod")
    ok = subprocess.run([sys.executable, "-m", "sluice", "keys", "check", key], capture_output=True, text=True)
    assert ok.returncode == 0 and "prod" in ok.stdout
    typo = key[:-1] + ("a" if key[-1] != "a" else "b")
    bad = subprocess.run([sys.executable, "-m", "sluice", "keys", "check", typo], capture_output=True, text=True)
    assert bad.returncode == 1 and "not a sluice key" in bad.stdout
