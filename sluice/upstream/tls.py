"""TLS to upstreams: verification always on; the trusted CAs are the system's or a configured file."""

from __future__ import annotations

import ssl


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only those in ``ca_file`` when given."""
    return ssl.create_default_context(cafile=ca_file)
