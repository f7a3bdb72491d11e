"""TLS on the listeners (issue 28 item 1): the data and control planes terminate TLS 1.2/1.3 with ALPN
http/1.1 and resumable sessions, and take a new certificate on SIGHUP or when its files change, without
dropping a connection; a pair that cannot serve is refused with one log line and the old one kept.

Every certificate comes from a CA made here (trustme); the gateway is a real process.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support import start_gateway

BODY = {"model": "sim-small", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


class Certs:
    """A CA, and the certificate and key files a gateway's listeners serve (replaced the way a deploy would)."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file, self.key_file = tmp / "cert.pem", tmp / "key.pem"
        self.serial = self.install(self.issue())

    def issue(self, **kw) -> trustme.LeafCert:
        return self.ca.issue_cert("127.0.0.1", "localhost", **kw)

    def install(self, leaf: trustme.LeafCert, key_pem: bytes | None = None, cert_pem: bytes | None = None) -> int:
        """Rename new files over the served ones, the key first; the new leaf's serial."""
        for path, data in ((self.key_file, key_pem or leaf.private_key_pem.bytes()),
                           (self.cert_file, cert_pem or b"".join(p.bytes() for p in leaf.cert_chain_pems))):
            tmp = path.with_suffix(".new")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return serial_of(leaf.cert_chain_pems[0].bytes())

    def tls(self, **kw) -> dict:
        return {"cert_file": str(self.cert_file), "key_file": str(self.key_file), "watch_interval_s": 0.3, **kw}

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    """The serial a new connection is shown."""
    with handshake(port, ctx) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number  # type: ignore[arg-type]


def ask(s: ssl.SSLSocket, port: int) -> bytes:
    """One keep-alive GET /healthz on this very connection; the answer's head."""
    s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        piece = s.recv(4096)
        assert piece, f"the connection was closed: {got!r}"
        got += piece
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(4096)
    return head


def wait_log(gw, text: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while gw.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times:\n{gw.log()[-3000:]}"
        time.sleep(0.05)


class Load:
    """Calls at concurrency 16 until stopped, each thread on a new connection every 8 requests."""

    def __init__(self, gw, ctx: ssl.SSLContext, threads: int = 16) -> None:
        self.gw, self.ctx = gw, ctx
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.gw.keys['app']}"}
        while not self._stop.is_set():
            try:
                with httpx.Client(verify=self.ctx, timeout=10) as c:
                    for _ in range(8):
                        r = c.post(self.gw.v1 + "/chat/completions", json=BODY, headers=headers)
                        if r.status_code == 200:
                            self.ok += 1
                        else:
                            self.failed.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                self.failed.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # the new certificate under load too
        self._stop.set()
        for t in self._threads:
            t.join(30)


@pytest.fixture(scope="module")
def tls_gw(sim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    certs = Certs(tmp)
    gw = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                       models=[{"name": "sim-small", "upstream": "sim"}],
                       identities=[{"name": "app", "owner": "o", "models": ["*"]}],
                       extra={"data_plane": {"tls": certs.tls()}, "control_plane": {"tls": certs.tls()}},
                       verify=certs.client())
    yield gw, certs
    gw.stop()


def test_the_openai_sdk_calls_the_data_plane_over_https_with_a_custom_ca(tls_gw):
    gw, certs = tls_gw
    assert gw.url.startswith("https://")
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"], http_client=httpx.Client(verify=certs.client()))
    got = client.chat.completions.create(model="sim-small", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert got.choices[0].message.content
    stream = client.chat.completions.create(model="sim-small", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) and chunks[-1].usage.completion_tokens
    untrusted = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"], max_retries=0)
    with pytest.raises(openai.APIConnectionError):  # the system's trust store does not know the test CA
        untrusted.models.list()


def test_plain_http_to_the_tls_port_fails_at_once_and_the_listener_keeps_serving(tls_gw):
    gw, certs = tls_gw
    t0 = time.monotonic()
    with pytest.raises(httpx.TransportError):
        httpx.get(gw.url.replace("https://", "http://") + "/healthz", timeout=10)
    assert time.monotonic() - t0 < 5.0  # closed, not left to a timeout
    assert httpx.get(gw.url + "/healthz", verify=certs.client()).status_code == 200
    assert "Traceback" not in gw.log()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_3_and_1_2_are_spoken_with_alpn_http_1_1_and_1_1_is_refused(tls_gw):
    gw, certs = tls_gw
    ctx = certs.client()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with handshake(gw.port, ctx) as s:
        assert (s.version(), s.selected_alpn_protocol()) == ("TLSv1.3", "http/1.1")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(gw.port, ctx) as s:
        assert (s.version(), s.selected_alpn_protocol()) == ("TLSv1.2", "http/1.1")
    old = certs.client()
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(gw.port, old).close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_second_connection_resumes_the_first_ones_session(tls_gw, version):
    gw, certs = tls_gw
    ctx = certs.client()
    ctx.maximum_version = version
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nConnection: close\r\n\r\n".encode()
    with handshake(gw.port, ctx) as s:
        s.sendall(request)
        while s.recv(4096):  # read to the end: a TLS 1.3 ticket arrives after the handshake
            pass
        session = s.session
    assert session is not None and session.has_ticket  # session tickets are on: no server-side cache needed
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as again:
        assert again.session_reused


def test_openssl_s_client_shows_tls_1_3_and_resumption(tls_gw, tmp_path):
    gw, certs = tls_gw
    sess = tmp_path / "session.pem"
    request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-CAfile", str(certs.ca_file), "-ign_eof"]
    first = subprocess.run(base + ["-sess_out", str(sess)], input=request, capture_output=True, text=True, timeout=30)
    assert "New, TLSv1.3" in first.stdout and '"status":"ok"' in first.stdout.replace(" ", ""), first.stdout[-2000:]
    second = subprocess.run(base + ["-sess_in", str(sess)], input=request, capture_output=True, text=True, timeout=30)
    assert "Reused, TLSv1.3" in second.stdout, second.stdout[-2000:]


def _rotate_under_load(gw, certs: Certs, trigger) -> None:
    ctx = certs.client()
    before = certs.serial
    assert served_serial(gw.port, ctx) == before
    reloads = gw.log().count("tls: data plane reloaded")
    with handshake(gw.port, ctx) as kept, Load(gw, ctx) as load:
        assert b" 200 OK" in ask(kept, gw.port)
        certs.serial = certs.install(certs.issue())
        trigger()
        wait_log(gw, "tls: data plane reloaded", reloads + 1)
        # new handshakes get the new certificate; a connection made before keeps working on its own
        assert served_serial(gw.port, ctx) == certs.serial != before
        assert b" 200 OK" in ask(kept, gw.port)
    assert load.ok > 100 and not load.failed, (load.ok, load.failed[:5])


def test_sighup_rotates_the_certificate_under_load_with_no_failed_request(tls_gw):
    gw, certs = tls_gw
    _rotate_under_load(gw, certs, lambda: gw.proc.popen.send_signal(signal.SIGHUP))


def test_replacing_the_files_rotates_the_certificate_under_load_with_no_failed_request(tls_gw):
    gw, certs = tls_gw
    _rotate_under_load(gw, certs, lambda: None)  # the watcher notices the renamed files


@pytest.mark.parametrize("bad", ["mismatched key", "garbage", "expired"])
def test_a_bad_new_certificate_is_refused_with_one_line_and_the_old_one_still_served(tls_gw, bad):
    gw, certs = tls_gw
    ctx = certs.client()
    good = certs.serial
    good_pems = certs.cert_file.read_bytes(), certs.key_file.read_bytes()
    refusals = gw.log().count("tls: data plane refused")
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    leaf = certs.issue(not_before=past - datetime.timedelta(days=30), not_after=past) if bad == "expired" else certs.issue()
    other_key = certs.issue().private_key_pem.bytes() if bad == "mismatched key" else None
    certs.install(leaf, key_pem=other_key, cert_pem=b"not a certificate\n" if bad == "garbage" else None)
    wait_log(gw, "tls: data plane refused", refusals + 1)  # by the watcher
    gw.proc.popen.send_signal(signal.SIGHUP)
    wait_log(gw, "tls: data plane refused", refusals + 2)
    line = [x for x in gw.log().splitlines() if "tls: data plane refused" in x][-1]
    why = {"mismatched key": f"the key {certs.key_file} does not match the certificate {certs.cert_file}",
           "garbage": f"the certificate {certs.cert_file} holds no PEM certificate",
           "expired": f"the certificate {certs.cert_file} (serial {serial_of(leaf.cert_chain_pems[0].bytes()):x}) expired"}[bad]
    assert why in line and f"still serving serial {good:x}" in line, line
    assert served_serial(gw.port, ctx) == good
    assert gw.post("/v1/chat/completions", gw.keys["app"], json=BODY).status_code == 200
    assert "PRIVATE KEY" not in gw.log() and "Traceback" not in gw.log()
    certs.install(leaf, key_pem=good_pems[1], cert_pem=good_pems[0])  # back to the good pair for the next test
    wait_log(gw, "tls: data plane reloaded", gw.log().count("tls: data plane reloaded") + 1)


def test_the_cli_reaches_an_https_control_plane_with_sluice_admin_ca(tls_gw):
    gw, certs = tls_gw
    assert gw.admin_url.startswith("https://")
    env = {**os.environ, "SLUICE_ADMIN_URL": gw.admin_url, "SLUICE_ADMIN_KEY": gw.admin_key}
    cmd = [sys.executable, "-m", "sluice", "teams", "list"]
    trusted = subprocess.run(cmd, env={**env, "SLUICE_ADMIN_CA": str(certs.ca_file)}, capture_output=True, text=True,
                             timeout=60)
    assert trusted.returncode == 0, trusted.stderr
    untrusted = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert untrusted.returncode == 1 and "SLUICE_ADMIN_CA" in untrusted.stderr, untrusted.stderr
    assert "Traceback" not in untrusted.stderr


def _encrypted(leaf: trustme.LeafCert, password: bytes) -> bytes:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(password))


@pytest.mark.parametrize("case", ["expired", "encrypted, no password", "wrong password"])
def test_a_gateway_does_not_start_on_a_pair_that_cannot_serve(sim, tmp_path, case):
    certs = Certs(tmp_path)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    tls, env = certs.tls(), {"TLS_KEY_PASS": "not-the-password"}
    if case == "expired":
        certs.install(certs.issue(not_before=past - datetime.timedelta(days=30), not_after=past))
    else:
        leaf = certs.issue()
        certs.install(leaf, key_pem=_encrypted(leaf, b"the-password"))
        if case == "wrong password":
            tls["key_password_env"] = "TLS_KEY_PASS"
    with pytest.raises(RuntimeError) as refused:
        start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[], identities=[],
                      extra={"data_plane": {"tls": tls}}, env=env, verify=certs.client())
    why = {"expired": f"the certificate {certs.cert_file} (serial ",
           "encrypted, no password": f"the key {certs.key_file} is encrypted: set key_password_env",
           "wrong password": f"the key {certs.key_file} could not be decrypted: check $TLS_KEY_PASS"}[case]
    message = str(refused.value)
    assert why in message and "$.data_plane.tls" in message, message
    assert case != "expired" or ") expired at " in message, message
    assert "Traceback" not in message and "not-the-password" not in message


def test_an_encrypted_key_serves_with_its_password_from_the_environment(sim, tmp_path):
    certs = Certs(tmp_path)
    leaf = certs.issue()
    certs.serial = certs.install(leaf, key_pem=_encrypted(leaf, b"the-password"))
    gw = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[], identities=[],
                       extra={"data_plane": {"tls": certs.tls(key_password_env="TLS_KEY_PASS")}},
                       env={"TLS_KEY_PASS": "the-password"}, verify=certs.client())
    try:
        assert served_serial(gw.port, certs.client()) == certs.serial
        assert "the-password" not in gw.log()
    finally:
        gw.stop()


def test_every_worker_reloads_on_a_sighup_to_the_supervisor(sim, tmp_path):
    certs = Certs(tmp_path)
    gw = start_gateway(tmp_path, args=["--workers", "2"], upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                       models=[{"name": "sim-small", "upstream": "sim"}],
                       identities=[{"name": "app", "owner": "o", "models": ["*"]}],
                       extra={"data_plane": {"tls": certs.tls(watch_interval_s=0)}}, verify=certs.client())
    try:
        wait_log(gw, "tls: data plane serves", 2, timeout=60)  # worker 1 starts after worker 0 is ready
        ctx = certs.client()
        certs.serial = certs.install(certs.issue())
        gw.proc.popen.send_signal(signal.SIGHUP)
        wait_log(gw, "tls: data plane reloaded", 2)
        # SO_REUSEPORT spreads new connections over both workers: every one shows the new certificate
        assert {served_serial(gw.port, ctx) for _ in range(24)} == {certs.serial}
        assert gw.post("/v1/chat/completions", gw.keys["app"], json=BODY).status_code == 200
    finally:
        gw.stop()


def test_config_check_checks_each_listeners_pair_as_serve_does(tmp_path):
    certs = Certs(tmp_path)
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump({"data_plane": {"port": 8443, "tls": certs.tls()},
                                    "control_plane": {"port": 8444, "tls": certs.tls()}}))
    cmd = [sys.executable, "-m", "sluice", "config", "check", str(path)]
    good = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert good.returncode == 0 and "valid" in good.stdout, good.stderr
    certs.install(certs.issue(), key_pem=certs.issue().private_key_pem.bytes())
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    said = " ".join(bad.stderr.split())
    assert bad.returncode == 2 and f"the key {certs.key_file} does not match" in said.replace("\n", ""), bad.stderr
    assert "$.data_plane.tls" in said and "Traceback" not in bad.stderr
