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
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..core.errors import ConfigError
from ..core.tls_config import ListenerTls

log = logging.getLogger("sluice.tls")

ALPN = ["http/1.1"]


class Refused(Exception):
    """A certificate pair that cannot serve; the message names the file and why (never key material)."""


def at_setting(plane: str, exc: Refused) -> ConfigError:
    """A refusal at start (``serve``, ``config check``): the same words, naming the setting."""
    return ConfigError(f"{exc} - at `$.{plane}_plane.tls`")


class Pair(NamedTuple):
    """One checked certificate chain and key, as read from their files."""

    cert_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate

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


def _signature(cfg: ListenerTls) -> tuple:
    """What the watcher compares: each file's device, inode, size and mtime (None while it is missing)."""
    out = []
    for path in (cfg.cert_file, cfg.key_file):
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
    pair = Pair(cert_pem, key_pem, leaf)
    _load(server_context(), pair, cfg)
    return pair


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


def _load(ctx: ssl.SSLContext, pair: Pair, cfg: ListenerTls) -> None:
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
        log.info("tls: %s plane serves %s (%s)", plane, cfg.cert_file, self.current.describe())

    def reload(self, why: str) -> bool:
        """Check the files again and, if they pass, serve them to new handshakes; else keep the current pair."""
        self._seen = _signature(self.cfg)
        try:
            pair = check(self.cfg)
            _load(self.context, pair, self.cfg)  # the same bytes as checked: this cannot fail halfway
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
