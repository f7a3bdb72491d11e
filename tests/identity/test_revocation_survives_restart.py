"""A control-plane revocation or disable of a credential declared in the config file sticks
across restarts; re-enabling is explicit (an admin action, recorded), and ``sluice config
check`` warns about declared keys the store has revoked."""

from __future__ import annotations

import subprocess
import sys

import httpx

from sluice.identity import generate
from support import Gateway


def _config(sim) -> tuple[dict, dict[str, str]]:
    keys = {"app": generate("dev"), "other": generate("dev")}
    return {
        "upstreams": [{"name": "sim", "base_url": sim.url + "/v1"}],
        "models": [{"name": "sim-small", "upstream": "sim"}],
        "identities": [{"name": n, "owner": "o@example.com", "models": ["sim-small"], "keys": [k]} for n, k in keys.items()],
    }, keys


def _models(g: Gateway, key: str) -> int:
    return httpx.get(g.v1 + "/models", headers={"Authorization": f"Bearer {key}"}).status_code


def _check(g: Gateway) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(g.config_path)], cwd=g.tmp,
                          capture_output=True, text=True, timeout=60)


def test_a_revoked_declared_key_and_a_disabled_declared_identity_stay_so_after_a_restart(sim, tmp_path):
    config, keys = _config(sim)
    admin = generate("prod", kind="admin")
    g = Gateway(tmp_path, config, keys, admin)
    try:
        assert _models(g, keys["app"]) == 200 and _models(g, keys["other"]) == 200
        app_key = g.admin("GET", "/admin/identities/cfg-app/keys").json()["data"][0]
        assert g.admin("POST", f"/admin/keys/{app_key['id']}/revoke").status_code == 200
        assert g.admin("DELETE", "/admin/identities/cfg-other").status_code == 200
    finally:
        g.stop()
    check = _check(g)
    assert check.returncode == 0, check.stderr
    assert "a key of identity app" in check.stderr and "identity other is disabled" in check.stderr, check.stderr
    assert keys["app"] not in check.stdout + check.stderr

    g = Gateway(tmp_path, config, keys, admin)  # the same file, the same store
    try:
        assert _models(g, keys["app"]) == 401
        assert _models(g, keys["other"]) == 401
        assert g.admin("GET", "/admin/identities/cfg-other").json()["disabled_at"] is not None
        # the way back is explicit and recorded: enabling restores the keys the disable revoked
        r = g.admin("POST", "/admin/identities/cfg-other/enable")
        assert r.status_code == 200 and r.json()["disabled_at"] is None, r.text
        assert _models(g, keys["other"]) == 200
        assert _models(g, keys["app"]) == 401  # revoked on its own: a new key in the file is the way back
        changes = g.admin("GET", "/admin/changes?limit=20").json()["data"]
        assert any(c["action"] == "identity.enable" and c["target"] == "cfg-other" for c in changes)
    finally:
        g.stop()
    g = Gateway(tmp_path, config, keys, admin)
    try:
        assert _models(g, keys["other"]) == 200 and _models(g, keys["app"]) == 401
    finally:
        g.stop()
