"""TLS termination on a listener: one live ``SSLContext`` whose certificate is replaced without a restart.

The listener's server socket keeps the same context for its whole life. A reload (SIGHUP, or the
files' mtime, inode or size changing) reads both files once, checks the pair in a fresh context
(the chain parses, the leaf has not expired, the key matches, its password works) and only then
loads the same bytes into the live one. OpenSSL copies the certificate and key into each
connection when it is accepted, so open connections keep theirs and new handshakes get the new
pair; a refused pair leaves the live context untouched, with one log line naming the file and why.

The context speaks TLS 1.2 and 1.3, offers ALPN ``http/1.1``, and resumes sessions: OpenSSL's
session tickets stay on (their keys live in the context, so they survive a reload; each process
of ``--workers N`` has its own, so a ticket resumes on the worker that issued it).

With ``client_certs`` (mTLS) the context also asks callers for a certificate and verifies it against
the configured CA bundles in the handshake (``require``: none is a failed handshake; ``accept``: none is
served, a key then authenticates). A CA store cannot be emptied in place, so a reload with client
certificates builds a whole new context and the live one's SNI callback (OpenSSL calls it for every
ClientHello, with a server name or without) moves each new handshake onto it; tickets stay with the
live context, so sessions still resume. A session resumed from before a change of the CAs is checked
again against the CAs of now (``peer``): one whose CA was removed is refused as its full handshake would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..core.errors import ConfigError
from ..core.tls_config import ClientCerts, ListenerTls

log = logging.getLogger("sluice.tls")

ALPN = ["http/1.1"]


class Refused(Exception):
    """A certificate pair that cannot serve; the message names the file and why (never key material)."""


class Untrusted(Exception):
    """A resumed session's client certificate that no CA configured now vouches for."""


def at_setting(plane: str, exc: Refused) -> ConfigError:
    """A refusal at start (``serve``, ``config check``): the same words, naming the setting."""
    return ConfigError(f"{exc} - at `$.{plane}_plane.tls`")


def check_plane(plane: str, cfg: ListenerTls) -> None:
    """The control plane takes client certificates as a gate only (its keys still authenticate):
    rules there would map nothing, so they are refused rather than silently ignored."""
    cc = cfg.client_certs
    if plane == "control" and cc is not None and (cc.rules or cc.federation):
        raise Refused("the control plane maps no client certificate to an identity (control-plane keys"
                      " authenticate there): remove client_certs.rules and client_certs.federation")


class Pair(NamedTuple):
    """One checked certificate chain and key, as read from their files."""

    cert_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate
    cas: tuple[bytes, list[x509.Certificate]] | None  # client CAs (mTLS): their PEM and certificates

    def describe(self) -> str:
        cn = self.leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        subject = str(cn[0].value) if cn else self.leaf.subject.rfc4514_string()
        return (f"serial {self.leaf.serial_number:x}, subject {subject}, "
                f"expires {self.leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def server_context() -> ssl.SSLContext:
    """A server context with no certificate yet: TLS 1.2-1.3, ALPN http/1.1, session tickets on."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    ctx.options &= ~ssl.OP_NO_TICKET  # OpenSSL's default; said here so that no one turns resumption off unseen
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _files(cfg: ListenerTls) -> list[str]:
    """Every file a reload reads: the pair, and the client CA bundles."""
    return [cfg.cert_file, cfg.key_file, *(cfg.client_certs.ca_files if cfg.client_certs is not None else ())]


def _signature(cfg: ListenerTls) -> tuple:
    """What the watcher compares: each file's device, inode, size and mtime (None while it is missing)."""
    out = []
    for path in _files(cfg):
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds ``data``: a memfd on Linux (never on disk), else a 0600 temp file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sluice-tls", os.MFD_CLOEXEC)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:  # a buffered write: all of it, however os.write splits it
                f.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="sluice-tls-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise Refused(f"cannot read the {what} {path}: {exc.strerror or type(exc).__name__}") from None


def _password(cfg: ListenerTls) -> bytes:
    """The key's password from its variable; empty when none is configured (so that OpenSSL never prompts)."""
    if cfg.key_password_env is None:
        return b""
    value = os.environ.get(cfg.key_password_env)
    if value is None:
        raise Refused(f"the key {cfg.key_file} needs its password from ${cfg.key_password_env}, which is not set")
    return value.encode()


def check(cfg: ListenerTls, now: datetime.datetime | None = None) -> Pair:
    """Read and check a pair in a fresh context; :class:`Refused` says why it cannot serve."""
    cert_pem = _read(cfg.cert_file, "certificate")
    key_pem = _read(cfg.key_file, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise Refused(f"the certificate {cfg.cert_file} holds no PEM certificate") from None
    leaf = chain[0]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise Refused(f"the certificate {cfg.cert_file} (serial {leaf.serial_number:x}) expired at "
                      f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    _check_key(cfg, key_pem)
    pair = Pair(cert_pem, key_pem, leaf, client_cas(cfg.client_certs))
    _load(server_context(), pair, cfg)
    return pair


def client_cas(cfg: ClientCerts | None) -> tuple[bytes, list[x509.Certificate]] | None:
    """The client CA bundles' PEM text and certificates (None without ``client_certs``); :class:`Refused` names
    a file that cannot be read or holds no certificate."""
    if cfg is None:
        return None
    pem, certs = b"", []
    for path in cfg.ca_files:
        data = _read(path, "client CA bundle")
        try:
            certs += x509.load_pem_x509_certificates(data)
        except ValueError:
            raise Refused(f"the client CA bundle {path} holds no PEM certificate") from None
        pem += data if data.endswith(b"\n") else data + b"\n"
    return pem, certs


def _check_key(cfg: ListenerTls, key_pem: bytes) -> None:
    """The key parses, with its password if it is encrypted (OpenSSL says only "PEM lib" for every way
    this fails; cryptography tells them apart)."""
    password = _password(cfg) or None
    encrypted = b"ENCRYPTED" in key_pem  # PKCS#8's "ENCRYPTED PRIVATE KEY", or the legacy "Proc-Type: 4,ENCRYPTED"
    if encrypted and password is None:
        raise Refused(f"the key {cfg.key_file} is encrypted: set key_password_env")
    try:
        serialization.load_pem_private_key(key_pem, password if encrypted else None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Refused(f"the key {cfg.key_file} could not be decrypted: check ${cfg.key_password_env}" if encrypted
                      else f"the key {cfg.key_file} holds no PEM private key") from None


def _load(ctx: ssl.SSLContext, pair: Pair, cfg: ListenerTls, cas: bool = True) -> None:
    if cas and pair.cas is not None and cfg.client_certs is not None:
        try:
            ctx.load_verify_locations(cadata=pair.cas[0].decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise Refused(f"a client CA bundle of {', '.join(cfg.client_certs.ca_files)} is not usable"
                          f" ({exc.reason or 'unreadable'})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.client_certs.mode == "require" else ssl.CERT_OPTIONAL
    password = _password(cfg)
    with _in_memory(pair.cert_pem) as cert, _in_memory(pair.key_pem) as key:
        try:
            ctx.load_cert_chain(cert, key, lambda: password)
        except ssl.SSLError as exc:
            # OpenSSL's reasons carry no key material; the memfd paths mean nothing to a reader, so name the files
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise Refused(f"the key {cfg.key_file} does not match the certificate {cfg.cert_file}") from None
            raise Refused(f"the key {cfg.key_file} is not a usable PEM private key for {cfg.cert_file}"
                          f" ({exc.reason or 'unreadable'})") from None


class ServerTls:
    """One listener's live context and the reloads of its pair. Construction raises :class:`Refused`."""

    def __init__(self, plane: str, cfg: ListenerTls) -> None:
        self.plane = plane
        self.cfg = cfg
        self.context = server_context()
        self._seen = _signature(cfg)
        self.current = check(cfg)
        _load(self.context, self.current, cfg)
        # mTLS: the context new handshakes move to (a reload's), and how many times the CAs changed
        self._serving = self.context
        self.ca_changes = 0
        if cfg.client_certs is not None:
            self.context.sni_callback = self._pick
        log.info("tls: %s plane serves %s (%s)", plane, cfg.cert_file, self.current.describe())

    def _pick(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._serving is not self.context:
            conn.context = self._serving  # its certificate and CAs; verify mode and tickets stay the live one's

    def peer(self, conn: ssl.SSLObject | None) -> bytes | None:
        """The DER of the client certificate the handshake verified, or None without one; :class:`Untrusted`
        for a session resumed from before the CAs changed whose CA is no longer configured."""
        der = conn.getpeercert(binary_form=True) if conn is not None else None
        if der and self.ca_changes and conn.session_reused and self.current.cas is not None:  # type: ignore[union-attr]
            if not _issued_under(x509.load_der_x509_certificate(der), self.current.cas[1], conn):  # type: ignore[arg-type]
                raise Untrusted()
        return der or None

    def reload(self, why: str) -> bool:
        """Check the files again and, if they pass, serve them to new handshakes; else keep the current pair."""
        self._seen = _signature(self.cfg)
        try:
            pair = check(self.cfg)
            # the same bytes as checked: this cannot fail halfway (client CAs go to the fresh context alone)
            _load(self.context, pair, self.cfg, cas=False)
            if pair.cas is not None:
                fresh = server_context()  # a CA store only grows: removed CAs leave only with a new context
                _load(fresh, pair, self.cfg)
                if self.current.cas is None or pair.cas[0] != self.current.cas[0]:
                    self.ca_changes += 1
                self._serving = fresh
        except Refused as exc:
            log.error("tls: %s plane refused its new certificate (%s), still serving %s: %s", self.plane, why,
                      self.current.describe(), exc)
            return False
        self.current = pair
        log.info("tls: %s plane reloaded %s (%s): %s", self.plane, self.cfg.cert_file, why, pair.describe())
        return True

    async def watch(self) -> None:
        """Reload when either file changes (a rename over it, a rewrite, a Kubernetes secret's symlink swap)
        and then stays unchanged for one interval: a deploy that replaces the key and then the certificate
        is read once both are in place, not refused half-way."""
        interval = self.cfg.watch_interval_s
        if interval <= 0:
            return
        last = self._seen
        while True:
            await asyncio.sleep(interval)
            now = _signature(self.cfg)
            if now != self._seen and now == last:
                self.reload("the files changed")
            last = now


def _issued_under(leaf: x509.Certificate, cas: list[x509.Certificate], conn: ssl.SSLObject) -> bool:
    """Whether ``leaf`` chains to one of ``cas`` through the chain the client sent (a resumed session
    keeps it), each link's signature checked and each certificate within its validity."""
    sent = _sent_chain(conn)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = leaf
    for _ in range(10):
        for ca in cas:
            if ca.subject == cert.issuer and _signed_by(cert, ca, now):
                return True
        nxt = next((c for c in sent if c.subject == cert.issuer and c != cert and _signed_by(cert, c, now)), None)
        if nxt is None:
            return False
        cert = nxt
    return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime) -> bool:
    if not issuer.not_valid_before_utc <= now < issuer.not_valid_after_utc:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _sent_chain(conn: ssl.SSLObject) -> list[x509.Certificate]:
    """The certificates the client sent (public from Python 3.13; the same method on ``_sslobj`` before)."""
    get = getattr(conn, "get_unverified_chain", None) or getattr(getattr(conn, "_sslobj", None),
                                                                 "get_unverified_chain", None)
    if get is None:
        return []
    out = []
    for c in get() or ():
        der = c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        out.append(x509.load_der_x509_certificate(der))
    return out
