"""The listeners' TLS, as the composition root wires it: each plane's live context (watched for new files)
and, with mTLS, what a connection's client certificate maps to on a data-plane listener."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from .core import config as cfgmod
from .core.listener_config import tls_refused
from .http.tls import Refused, ServerTls, at_setting, check_plane
from .identity import CertificateIdentities, Federation


def server_tls(gw: Any, plane: str, listener: cfgmod.Listener, index: int | None = None) -> ssl.SSLContext | None:
    """The plane's live TLS context (None: plain HTTP), watched for new files; a pair that cannot serve stops the
    start. ``index``: a data-plane listener's place, for the setting an error names (``data_plane[1].tls``).
    ``gw``: the gateway, which keeps the context (reloaded on SIGHUP) and its watcher task."""
    if listener.tls is None:
        return None
    try:
        tls = ServerTls(plane, listener.tls)
        check_plane(plane, listener.tls)
    except Refused as exc:
        if index is None:
            raise at_setting(plane, exc) from None
        raise tls_refused(gw.config, index, exc) from None
    gw.tls.append(tls)
    gw._tasks.append(asyncio.get_running_loop().create_task(tls.watch(), name=f"tls-watch-{plane}"))
    return tls.context


def peer_certs(listener: cfgmod.Listener, federation: Federation, live: list[ServerTls]
               ) -> Callable[[ssl.SSLObject | None], object] | None:
    """mTLS on a data-plane listener: what a connection's client certificate maps to (``identity.certs``),
    by the listener's ``client_certs`` rules, then those of the federation issuers it names (each one the config
    declares: ``core.listener_config.check_listeners`` refuses a config naming another)."""
    cc = listener.tls.client_certs if listener.tls is not None else None
    if cc is None:
        return None
    rules = list(cc.rules)
    for name in cc.federation:
        rules += federation.rules_of(name) or ()
    tls = next(t for t in live if t.cfg is listener.tls)
    mapping = CertificateIdentities(rules) if rules else None  # none: a certificate only admits its caller

    def read(conn: ssl.SSLObject | None) -> object:
        der = tls.peer(conn)
        return None if der is None or mapping is None else mapping.read(der)

    return read
