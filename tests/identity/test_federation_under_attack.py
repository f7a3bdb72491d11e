"""Federation under attack: a burst of tokens with an unknown key id, or an issuer that is
down or answers with a huge key set, costs the issuer at most one fetch; key sets travel
over https unless on loopback or explicitly allowed."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from local_issuer import LocalIssuer
from sluice.core import config as cfgmod
from sluice.core.errors import ConfigError
from support import start_gateway

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
GOOD, HUGE = "https://good.test", "https://huge.test"
SA = "system:serviceaccount:payments:checkout"


@pytest.fixture(scope="module")
def fed(sim, tmp_path_factory):
    good, huge = LocalIssuer(), LocalIssuer()
    huge.jwks = {**huge.jwks, "padding": "x" * (1024 * 1024)}  # a key set no issuer needs: refused whole
    rules = [{"match": {"sub": SA}, "identity": "checkout"}]
    g = start_gateway(
        tmp_path_factory.mktemp("fed-attack"),
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[{"name": "checkout", "owner": "payments@example.com", "models": ["sim-small"], "keys": []}],
        extra={"federation": [
            # refresh after 1 s, so the tests below meet a stale key set
            {"name": "good", "issuer": GOOD, "audience": "sluice", "jwks_url": good.url + "/jwks",
             "algorithms": ["RS256"], "jwks_refresh_s": 1, "rules": rules},
            {"name": "huge", "issuer": HUGE, "audience": "sluice", "jwks_url": huge.url + "/jwks",
             "algorithms": ["RS256"], "rules": rules},
        ], "identity": {"token_requests_per_minute": 100_000, "auth_failures_per_minute": 100_000}},
    )
    yield g, good, huge
    g.stop()
    good.stop()
    huge.stop()


def _stranger(iss: str) -> str:
    """Well-formed, signed by a key whose kid the issuer never published."""
    key = RSAKey.generate_key(2048, parameters={"kid": "unknown-kid"}, private=True)
    return jwt.encode({"alg": "RS256", "kid": "unknown-kid"}, LocalIssuer.claims(iss, "sluice", SA), key, algorithms=["RS256"])


async def _burst(url: str, tokens: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(url, data={"grant_type": GRANT, "subject_token": t,
                                                             "subject_token_type": JWT}) for t in tokens))


def test_fifty_concurrent_tokens_with_an_unknown_kid_cost_at_most_one_fetch(fed):
    g, good, _ = fed
    time.sleep(1.2)  # the key set is now due for refresh: every token would like to fetch it
    token = _stranger(GOOD)
    before = good.fetches
    replies = asyncio.run(_burst(g.v1 + "/token", [token] * 50))
    assert all(r.status_code == 401 for r in replies), {r.status_code for r in replies}
    assert good.fetches - before <= 1, good.fetches - before
    # and a genuine token still works after the burst
    ok = httpx.post(g.v1 + "/token", data={"grant_type": GRANT, "subject_token_type": JWT,
                                           "subject_token": good.mint(good.claims(GOOD, "sluice", SA))})
    assert ok.status_code == 200, ok.text


def test_an_oversized_key_set_is_refused_and_the_failure_is_cached(fed):
    g, _, huge = fed
    token = huge.mint(huge.claims(HUGE, "sluice", SA))
    before = huge.fetches
    replies = asyncio.run(_burst(g.v1 + "/token", [token] * 50))
    codes = {r.json()["error"]["code"] for r in replies}
    assert all(r.status_code == 401 for r in replies) and codes == {"issuer_unavailable"}, codes
    assert huge.fetches - before <= 1, huge.fetches - before
    assert "padding" not in replies[0].text and "127.0.0.1" not in replies[0].text


def _issuer(url: str, **extra) -> dict:
    return {"federation": [{"name": "x", "issuer": "https://x.test", "audience": "sluice", "jwks_url": url,
                            "rules": [{"match": {"sub": "a"}, "identity": "a"}], **extra}]}


@pytest.mark.parametrize("url", ["https://issuer.example/jwks", "http://127.0.0.1:9/jwks", "http://localhost/jwks",
                                 "http://[::1]:8/jwks"])
def test_a_jwks_url_over_https_or_on_loopback_is_accepted(url):
    assert cfgmod.parse(_issuer(url)).federation[0].jwks_url == url


def test_a_plain_http_jwks_url_off_loopback_is_refused_unless_explicitly_allowed():
    with pytest.raises(ConfigError, match="https"):
        cfgmod.parse(_issuer("http://issuer.example/jwks"))
    assert cfgmod.parse(_issuer("http://issuer.example/jwks", allow_insecure_http=True)).federation[0].allow_insecure_http
