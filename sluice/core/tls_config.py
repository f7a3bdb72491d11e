"""A listener's TLS settings: its certificate chain and key, how often their files are checked, and
whether callers show certificates of their own (mTLS, issue 28 item 2), so every listener keeps one
``tls:`` block."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .identity_config import FederationRule
from .strict import Strict


class ClientCerts(Strict, kw_only=True):
    """``tls.client_certs``: verify callers' certificates against these CAs in the handshake, and map a
    verified one (an X.509-SVID's SPIFFE ID, or its subject) to an identity by federation rules."""

    # require: a caller without a certificate of these CAs fails the handshake; accept: one without any
    # is served (a key then authenticates it), one with a certificate of another CA still fails
    mode: Literal["require", "accept"] = "require"
    ca_files: Annotated[list[str], msgspec.Meta(min_length=1)]  # PEM bundles, reloaded with the pair
    # claims of a certificate: sub (its SPIFFE ID, else its subject), subject (RFC 4514), cn, trust_domain
    rules: list[FederationRule] = msgspec.field(default_factory=list)
    # names of `federation` issuers whose rules also map certificates, after `rules` (one mapping for
    # JWT-SVIDs and X.509-SVIDs); with neither, a certificate only admits its caller to the listener
    federation: list[str] = msgspec.field(default_factory=list)


class ListenerTls(Strict):
    """``data_plane.tls`` / ``control_plane.tls``: terminate TLS 1.2 and 1.3 on this listener."""

    cert_file: str  # PEM: the leaf first, then its intermediates
    key_file: str  # PEM private key of the leaf
    key_password_env: str | None = None  # the name of the variable holding the key's password, if encrypted
    # seconds between two checks of the files' mtime, inode and size (a change reloads them); 0: SIGHUP only
    watch_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    client_certs: ClientCerts | None = None  # None: callers show no certificate
