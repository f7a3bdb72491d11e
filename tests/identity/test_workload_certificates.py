"""mTLS and workload identity (issue 28 item 2): a workload calls with its X.509-SVID and no key, mapped to
an identity by the federation rules that map JWT-SVIDs; an unmapped SPIFFE ID, another trust domain, an
expired certificate, one of another CA and a disabled identity are refused; the certificate's notAfter
bounds the credential; a key and a certificate must name the same identity.

The CA is made here with ``cryptography`` (``x509_ca``); the gateway is a real process.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import socket
import ssl
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml

from local_issuer import LocalIssuer
from sluice.identity import generate
from store.pg_databases import drop_pg_database, fresh_pg_database
from support import Gateway, free_port, start_gateway
from x509_ca import TestCA

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
SPIFFE_ISSUER = "https://spiffe.test"
CHECKOUT = "spiffe://example.org/ns/payments/sa/checkout"
TRAINER = "spiffe://example.org/ns/ml/sa/trainer"
CHAT = {"model": "sim-small", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def mtls(sim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtls")
    ca = TestCA(tmp)
    server = ca.issue(cn="sluice", ip="127.0.0.1")
    issuer = LocalIssuer()
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}],
        identities=[{"name": "checkout", "owner": "payments@example.com", "models": ["sim-small"]},
                    {"name": "ml-worker", "owner": "ml@example.com", "models": ["sim-*"]}],
        extra={
            # the JWT-SVID issuer whose rule maps ml's SPIFFE IDs; the listener borrows it for X.509-SVIDs
            "federation": [{"name": "spiffe", "issuer": SPIFFE_ISSUER, "audience": "sluice",
                            "jwks_url": issuer.url + "/jwks", "algorithms": ["ES256"],
                            "rules": [{"match": {"sub": "spiffe://example.org/ns/ml/sa/*"}, "identity": "ml-worker"}]}],
            "data_plane": {"tls": {
                "cert_file": str(server.cert_file), "key_file": str(server.key_file), "watch_interval_s": 0,
                "client_certs": {"mode": "accept", "ca_files": [str(ca.ca_file)], "federation": ["spiffe"],
                                 "rules": [{"match": {"sub": CHECKOUT}, "identity": "checkout"}]}}},
        },
        verify=ssl.create_default_context(cafile=str(ca.ca_file)))
    yield g, ca, issuer
    g.stop()
    issuer.stop()


def client_of(g, ca: TestCA, **kw) -> httpx.Client:
    """An https client presenting an SVID of ``ca`` (``kw`` for ``TestCA.issue``) and no key."""
    return httpx.Client(base_url=g.url, verify=ca.issue(**kw).client(ca.ca_file), timeout=30)


def test_a_mapped_spiffe_id_calls_a_model_with_its_certificate_and_no_key(mtls):
    g, ca, _ = mtls
    svid = ca.issue(spiffe_id=CHECKOUT)
    sdk = openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0,
                        http_client=httpx.Client(verify=svid.client(ca.ca_file)))
    no_key = {"Authorization": openai.omit}  # the SDK's way to send no Authorization header at all
    got = sdk.chat.completions.create(**CHAT, extra_headers=no_key)
    assert got.choices[0].message.content
    assert [m.id for m in sdk.models.list(extra_headers=no_key)] == ["sim-small"]  # checkout's scopes only
    with client_of(g, ca, spiffe_id=TRAINER) as c:  # mapped by the federation issuer's rule
        assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {"sim-small", "sim-embed"}
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_the_x509_svid_and_the_jwt_svid_of_one_spiffe_id_map_to_one_identity_by_one_rule(mtls):
    g, ca, issuer = mtls
    svid = issuer.mint(issuer.claims(SPIFFE_ISSUER, "sluice", TRAINER), alg="ES256")
    r = httpx.post(g.v1 + "/token", data={"grant_type": GRANT, "subject_token": svid, "subject_token_type": JWT},
                   verify=g.verify)
    token = r.json()["access_token"]
    with httpx.Client(base_url=g.url, verify=g.verify) as by_token, client_of(g, ca, spiffe_id=TRAINER) as by_cert:
        a = by_token.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).json()
        b = by_cert.get("/v1/models").json()
    assert a == b and {m["id"] for m in a["data"]} == {"sim-small", "sim-embed"}


def refusal(r: httpx.Response) -> dict:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


def test_an_unmapped_spiffe_id_and_another_trust_domain_are_refused_as_any_failed_authentication(mtls):
    g, ca, _ = mtls
    bad_key = refusal(g.post("/v1/chat/completions", "sk-not-a-key", json=CHAT))
    for spiffe_id in ("spiffe://example.org/ns/payments/sa/refunds",  # no rule
                      "spiffe://evil.example/ns/payments/sa/checkout",  # the path of a mapped one, another domain
                      "spiffe://evil.example/ns/ml/sa/trainer"):
        with client_of(g, ca, spiffe_id=spiffe_id) as c:
            err = refusal(c.post("/v1/chat/completions", json=CHAT))
        # the same envelope as a bad key's; which identity (if any) was near is not said
        assert err.keys() == bad_key.keys() and err["type"] == bad_key["type"]
        assert err["code"] == "invalid_client_certificate"
        assert "checkout" not in err["message"] and "evil" not in err["message"]
    with client_of(g, ca, cn="just-a-name") as c:  # no SPIFFE ID: its subject is matched, and no rule names it
        assert refusal(c.get("/v1/models"))["code"] == "invalid_client_certificate"


def test_an_expired_certificate_and_one_of_another_ca_fail_the_handshake(mtls, tmp_path):
    g, ca, _ = mtls
    now = datetime.datetime.now(UTC)
    expired = ca.issue(spiffe_id=CHECKOUT, not_before=now - datetime.timedelta(hours=2),
                       not_after=now - datetime.timedelta(minutes=1))
    stranger = TestCA(tmp_path, "other-ca").issue(spiffe_id=CHECKOUT)  # the very SPIFFE ID, another CA
    for leaf in (expired, stranger):
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        ctx.load_cert_chain(str(leaf.cert_file), str(leaf.key_file))
        with pytest.raises(httpx.TransportError), httpx.Client(base_url=g.url, verify=ctx) as c:
            c.post("/v1/chat/completions", json=CHAT)
    assert httpx.get(g.url + "/healthz", verify=g.verify).status_code == 200  # refused, and nothing else


def test_the_certificates_not_after_ends_its_credential_on_an_open_connection(mtls):
    g, ca, _ = mtls
    ends = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(seconds=4)
    with client_of(g, ca, spiffe_id=CHECKOUT, not_after=ends) as c:
        assert c.get("/v1/models").status_code == 200
        time.sleep(max(0.0, ends.timestamp() - time.time()) + 1.0)
        late = c.get("/v1/models")  # the same keep-alive connection, its handshake long done
    assert refusal(late)["code"] == "expired_client_certificate"


def test_disabling_the_identity_refuses_its_next_call_on_an_open_connection(mtls):
    g, ca, _ = mtls
    with client_of(g, ca, spiffe_id=TRAINER) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        ml = next(i["id"] for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == "ml-worker")
        assert g.admin("DELETE", f"/admin/identities/{ml}").status_code == 200
        try:
            assert refusal(c.post("/v1/chat/completions", json=CHAT))["code"] == "invalid_client_certificate"
        finally:
            assert g.admin("POST", f"/admin/identities/{ml}/enable").status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200  # enabled again: served again


def test_a_key_and_a_certificate_must_name_the_same_identity(mtls):
    g, ca, _ = mtls
    with client_of(g, ca, spiffe_id=CHECKOUT) as c:
        own = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {g.keys['checkout']}"})
        assert own.status_code == 200
        other = c.post("/v1/chat/completions", json={**CHAT, "model": "sim-embed"},
                       headers={"Authorization": f"Bearer {g.keys['ml-worker']}"})
        assert refusal(other)["code"] == "credential_mismatch"  # not ml-worker's wider scopes through checkout's cert
    with client_of(g, ca, spiffe_id="spiffe://example.org/ns/payments/sa/unmapped") as c:
        # a certificate no rule maps is the channel only: the key decides
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {g.keys['ml-worker']}"}).status_code == 200
    # accept mode: no certificate at all, a key as ever; and neither is the usual missing-key 401
    assert g.post("/v1/chat/completions", g.keys["checkout"], json=CHAT).status_code == 200
    assert refusal(g.post("/v1/chat/completions", None, json=CHAT))["code"] == "missing_api_key"


def _get(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> tuple[bytes, ssl.SSLSession, bool]:
    """One GET /v1/models on a new connection (resuming ``session`` if given): the answer's bytes (b"" if the
    connection was cut), the session, and whether it was resumed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
        reused = s.session_reused
        got = b""
        try:
            s.sendall("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            while chunk := s.recv(65536):  # to the end: a TLS 1.3 ticket arrives after the handshake
                got += chunk
        except (ssl.SSLError, OSError):
            pass
        return got, s.session, reused


def test_require_mode_and_a_reload_that_replaces_the_client_cas(sim, tmp_path):
    old, new = TestCA(tmp_path, "old-ca"), TestCA(tmp_path, "new-ca")
    server = old.issue(cn="sluice", ip="127.0.0.1")
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(old.ca_file.read_bytes())
    g = start_gateway(
        tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[{"name": "checkout", "owner": "payments@example.com", "models": ["sim-small"]}],
        extra={"data_plane": {"tls": {
            "cert_file": str(server.cert_file), "key_file": str(server.key_file), "watch_interval_s": 0,
            "client_certs": {"mode": "require", "ca_files": [str(bundle)],
                             "rules": [{"match": {"trust_domain": "example.org", "sub": "*/ns/payments/sa/*"},
                                        "identity": "checkout"}]}}}},
        verify=ssl.create_default_context(cafile=str(old.ca_file)))
    try:
        by_old, by_new = old.issue(spiffe_id=CHECKOUT).client(old.ca_file), new.issue(spiffe_id=CHECKOUT).client(old.ca_file)
        nobody = ssl.create_default_context(cafile=str(old.ca_file))
        assert _get(g.port, nobody)[0] == b""  # require: no certificate, no request
        got, session, _ = _get(g.port, by_old)
        assert b" 200 OK" in got and b"sim-small" in got
        assert _get(g.port, by_new)[0] == b""  # not yet trusted

        bundle.write_bytes(new.ca_file.read_bytes())  # the old CA is retired, the new one trusted
        g.proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "tls: data plane reloaded" not in g.log():
            assert time.monotonic() < deadline, g.log()[-2000:]
            time.sleep(0.05)
        assert b" 200 OK" in _get(g.port, by_new)[0]
        assert _get(g.port, by_old)[0] == b""
        # a session of the old CA's certificate, resumed after the reload, is refused as its full handshake is
        got, _, reused = _get(g.port, by_old, session)
        assert reused and got == b""
    finally:
        g.stop()


def test_a_disabled_identity_is_refused_on_another_replica_as_a_revoked_key_is(sim, tmp_path):
    """Two replicas on one Postgres: disabling on one refuses the certificate's next call on the other, by
    the path a key's revocation takes (the identity-state version); the time is printed (``-s``)."""
    url = asyncio.run(fresh_pg_database())
    ca = TestCA(tmp_path)
    server = ca.issue(cn="sluice", ip="127.0.0.1")
    admin_key = generate("prod", kind="admin")
    config = {
        "upstreams": [{"name": "sim", "base_url": sim.url + "/v1"}], "models": [{"name": "sim-small", "upstream": "sim"}],
        "store": {"url": url}, "logging": {"level": "warning"},
        "data_plane": {"tls": {"cert_file": str(server.cert_file), "key_file": str(server.key_file),
                               "watch_interval_s": 0,
                               "client_certs": {"ca_files": [str(ca.ca_file)],
                                                "rules": [{"match": {"sub": CHECKOUT}, "identity": "replicated"}]}}},
    }
    verify = ssl.create_default_context(cafile=str(ca.ca_file))
    gws: list[Gateway] = []
    try:
        for name in "ab":
            (tmp_path / name).mkdir()
            gws.append(Gateway(tmp_path / name, config, {}, admin_key, verify=verify))
        a, b = gws
        made = a.admin("POST", "/admin/identities", json={"name": "replicated", "owner": "o@example.com",
                                                            "models": ["sim-small"]})
        assert made.status_code == 201, made.text
        with client_of(b, ca, spiffe_id=CHECKOUT) as c:
            t0 = time.monotonic()
            while c.get("/v1/models").status_code != 200:  # b learns of the new identity as it would of a key
                assert time.monotonic() - t0 < 10
                time.sleep(0.05)
            assert a.admin("DELETE", f"/admin/identities/{made.json()['id']}").status_code == 200
            t0 = time.monotonic()
            while (r := c.get("/v1/models")).status_code == 200:
                assert time.monotonic() - t0 < 5, "replica b still serves the disabled identity's certificate"
                time.sleep(0.01)
            print(f"\nrefused on the other replica after {time.monotonic() - t0:.3f} s")
            assert refusal(r)["code"] == "invalid_client_certificate"
    finally:
        for g in gws:
            g.stop()
        asyncio.run(drop_pg_database(url))


def test_config_check_refuses_an_unreadable_client_ca_bundle_and_rules_on_the_control_plane(tmp_path):
    ca = TestCA(tmp_path)
    server = ca.issue(cn="sluice", ip="127.0.0.1")
    pair = {"cert_file": str(server.cert_file), "key_file": str(server.key_file)}
    not_pem = tmp_path / "not-a-bundle.pem"
    not_pem.write_text("no certificate here\n")
    cases = {
        "a bundle with no certificate": ({"data_plane": {"tls": {**pair, "client_certs": {"ca_files": [str(not_pem)]}}}},
                                         f"the client CA bundle {not_pem} holds no PEM certificate", "$.data_plane.tls"),
        "rules on the control plane": (
            {"control_plane": {"tls": {**pair, "client_certs": {"ca_files": [str(ca.ca_file)],
                                                                "rules": [{"match": {"sub": "*"}, "identity": "x"}]}}}},
            "the control plane maps no client certificate to an identity", "$.control_plane.tls"),
    }
    for case, (config, message, where) in cases.items():
        path = tmp_path / "sluice.yaml"
        path.write_text(yaml.safe_dump(config))
        bad = subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(path)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        said = " ".join(bad.stderr.split())
        assert bad.returncode == 2 and message in said and where in said, (case, bad.stderr)
        assert "Traceback" not in bad.stderr


def test_the_control_plane_takes_a_client_certificate_as_a_gate_in_front_of_its_keys(sim, tmp_path):
    """``control_plane.tls.client_certs`` in ``require`` mode: a connection without a certificate of the
    operators' CA never reaches the control plane, and one with it still needs a control-plane key."""
    ca = TestCA(tmp_path)
    server = ca.issue(cn="sluice", ip="127.0.0.1")
    operator = ca.issue(cn="operator").client(ca.ca_file)
    g = start_gateway(
        tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[{"name": "checkout", "owner": "payments@example.com", "models": ["sim-small"]}],
        extra={"control_plane": {"tls": {"cert_file": str(server.cert_file), "key_file": str(server.key_file),
                                         "watch_interval_s": 0,
                                         "client_certs": {"mode": "require", "ca_files": [str(ca.ca_file)]}}}},
        verify=operator)
    try:
        assert g.admin("GET", "/admin/identities").status_code == 200  # the certificate and a control-plane key
        bare = httpx.get(g.admin_url + "/admin/identities", verify=operator, timeout=10)
        assert bare.status_code == 401  # the certificate alone: a gate, not a credential
        auth = {"Authorization": f"Bearer {g.admin_key}"}
        (tmp_path / "other").mkdir()
        stranger = TestCA(tmp_path / "other", name="other-ca").issue(cn="operator").client(ca.ca_file)
        for who, ctx in (("no certificate", ssl.create_default_context(cafile=str(ca.ca_file))),
                         ("a certificate of another CA", stranger)):
            with pytest.raises(httpx.TransportError):  # refused in the handshake, the key never read
                httpx.get(g.admin_url + "/admin/identities", headers=auth, verify=ctx, timeout=10).raise_for_status()
        # the data plane, without client_certs, is untouched: its key is enough
        assert g.post("/v1/chat/completions", g.keys["checkout"], json=CHAT).status_code == 200
    finally:
        g.stop()


def test_a_listener_naming_an_unknown_federation_issuer_stops_the_start_and_the_check_at_its_own_setting(tmp_path):
    """``client_certs.federation`` on the second of two named listeners: ``serve`` and ``sluice config check``
    both refuse it, and the error names that listener's setting."""
    ca = TestCA(tmp_path)
    server = ca.issue(cn="sluice", ip="127.0.0.1")
    ports = [free_port(), free_port(), free_port()]
    tls = {"cert_file": str(server.cert_file), "key_file": str(server.key_file),
           "client_certs": {"ca_files": [str(ca.ca_file)], "federation": ["nobody"]}}
    config = {"data_plane": [{"name": "public", "port": ports[0]}, {"name": "internal", "port": ports[1], "tls": tls}],
              "control_plane": {"port": ports[2]}, "store": {"url": f"sqlite:///{tmp_path}/sluice.db"},
              "security": {"pepper": "p" * 32}, "upstreams": [], "models": []}
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in (["serve", "--config", str(path)], ["config", "check", str(path)]):
        bad = subprocess.run([sys.executable, "-m", "sluice", *command], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        said = " ".join(bad.stderr.split())
        assert bad.returncode != 0 and "no federation issuer is named 'nobody'" in said, (command, bad.stderr)
        assert "$.data_plane[1].tls.client_certs.federation[0]" in said, (command, bad.stderr)
        assert "Traceback" not in bad.stderr
