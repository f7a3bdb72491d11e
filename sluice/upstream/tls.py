"""TLS to upstreams: verification always on; the trusted CAs are the system's or a configured file; and,
for an upstream that asks for one (mTLS), the client certificate sluice presents."""

from __future__ import annotations

import ssl

from ..core.errors import ConfigError
from ..core.routing_config import Upstream


def tls_context(ca_file: str | None, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only those in ``ca_file`` when given; with
    ``cert_file`` and ``key_file``, the certificate it shows a server that asks for one."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def upstream_context(cfg: Upstream) -> ssl.SSLContext:
    """An upstream's context; files that cannot be read or do not fit fail the start naming the upstream
    (never their contents)."""
    try:
        return tls_context(cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"upstream {cfg.name!r}: its TLS files cannot be used ({why}) - at `$.upstreams`") from None
