"""TLS to upstreams: a self-signed upstream is refused unless its CA is configured, and served when it is."""

from __future__ import annotations

import pytest
import trustme

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


@pytest.fixture(scope="module")
def mtls_upstream(tmp_path_factory: pytest.TempPathFactory):
    """An upstream that serves only callers with a certificate of its client CA, and that certificate's files."""
    tmp = tmp_path_factory.mktemp("mtls-upstream")
    clients = trustme.CA()
    u = TLSUpstream(tmp, client_ca=clients)
    leaf = clients.issue_cert("sluice-gateway")
    u.client_cert, u.client_key = tmp / "client.crt", tmp / "client.key"
    u.client_cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    u.client_key.write_bytes(leaf.private_key_pem.bytes())
    yield u
    u.stop()


def _refused_closed(r, code: str) -> None:
    """A 502 in the OpenAI envelope that names neither the upstream's address nor TLS's details."""
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == code
    assert "127.0.0.1" not in r.text and "https://" not in r.text and "certificate" not in r.text.lower()


@pytest.mark.parametrize("client", ["native", "aiohttp"])
def test_sluice_presents_its_client_certificate_to_an_upstream_that_requires_one(mtls_upstream, tmp_path_factory, client):
    u = mtls_upstream
    base = {"base_url": u.url, "client": client, "connect_timeout": 3, "tls_ca_file": str(u.ca_file)}
    mtls = {"tls_cert_file": str(u.client_cert), "tls_key_file": str(u.client_key)}
    wrong_ca = tmp_path_factory.mktemp("wrong-ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))
    upstreams = [{**base, **mtls, "name": "with-cert"}, {**base, "name": "no-cert"},
                 {**base, **mtls, "name": "wrong-ca", "tls_ca_file": str(wrong_ca)}]
    g = start_gateway(tmp_path_factory.mktemp("gw"), upstreams=upstreams,
                      models=[{"name": u["name"], "upstream": u["name"], "upstream_model": "tls-model"} for u in upstreams],
                      identities=[{"name": "app", "owner": "team-a@example.com", "models": ["*"]}])
    try:
        calls = u.calls
        served = g.post("/v1/chat/completions", g.keys["app"], json={**CHAT, "model": "with-cert"})
        assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"] == "over tls"
        assert u.calls == calls + 1
        # TLS 1.3: the client's handshake is done before the upstream checks its (missing) certificate, so the
        # upstream's refusal arrives as the answer to the request: a disconnect
        _refused_closed(g.post("/v1/chat/completions", g.keys["app"], json={**CHAT, "model": "no-cert"}),
                        "upstream_disconnected")
        # an upstream whose certificate is not of the CA configured for it: refused before a byte is sent
        _refused_closed(g.post("/v1/chat/completions", g.keys["app"], json={**CHAT, "model": "wrong-ca"}),
                        "upstream_unreachable")
        assert u.calls == calls + 1
    finally:
        g.stop()


def test_an_upstream_client_certificate_that_cannot_be_used_stops_the_start_naming_the_upstream(mtls_upstream, tmp_path):
    u = mtls_upstream
    bad = {"name": "broken", "base_url": u.url, "tls_ca_file": str(u.ca_file), "tls_cert_file": str(u.client_cert),
           "tls_key_file": str(u.ca_file)}  # a certificate where the key should be
    with pytest.raises(RuntimeError) as failed:  # the process exited before it was ready; its log is the message
        start_gateway(tmp_path, upstreams=[bad], models=[{"name": "m", "upstream": "broken"}], identities=IDENTITIES)
    assert "upstream 'broken': its TLS files cannot be used" in str(failed.value)
