"""TLS to upstreams: a self-signed upstream is refused unless its CA is configured, and served when it is."""

from __future__ import annotations

import pytest

from support import start_gateway
from tls_upstream import TLSUpstream

CHAT = {"model": "tls-model", "messages": [{"role": "user", "content": "hi"}]}
IDENTITIES = [{"name": "app", "owner": "team-a@example.com", "models": ["tls-model"]}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory):
    u = TLSUpstream(tmp_path_factory.mktemp("tls"))
    yield u
    u.stop()


@pytest.mark.parametrize("client", ["native", "aiohttp"])
def test_a_self_signed_upstream_is_refused_unless_its_ca_is_configured_and_served_when_it_is(
        upstream, tmp_path_factory, client):
    common = {"name": "tls", "base_url": upstream.url, "client": client, "connect_timeout": 3}
    g = start_gateway(tmp_path_factory.mktemp("gw"), models=[{"name": "tls-model", "upstream": "tls"}],
                      identities=IDENTITIES,
                      upstreams=[common])
    try:
        refused = g.post("/v1/chat/completions", g.keys["app"], json=CHAT)
        assert refused.status_code == 502 and refused.json()["error"]["code"] == "upstream_unreachable"
        assert "127.0.0.1" not in refused.text and "certificate" not in refused.text.lower()
    finally:
        g.stop()
    g = start_gateway(tmp_path_factory.mktemp("gw"), models=[{"name": "tls-model", "upstream": "tls-trusted"}],
                      identities=IDENTITIES,
                      upstreams=[{**common, "name": "tls-trusted", "tls_ca_file": str(upstream.ca_file)}])
    try:
        served = g.post("/v1/chat/completions", g.keys["app"], json=CHAT)
        assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"] == "over tls"
    finally:
        g.stop()
