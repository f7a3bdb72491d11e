"""A listener's TLS settings: its certificate chain and key, and how often their files are checked.

Only server certificates for now; client-certificate options (CA bundles, required or optional,
issue 28 item 2) will join this section, so every listener keeps one ``tls:`` block.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .strict import Strict


class ListenerTls(Strict):
    """``data_plane.tls`` / ``control_plane.tls``: terminate TLS 1.2 and 1.3 on this listener."""

    cert_file: str  # PEM: the leaf first, then its intermediates
    key_file: str  # PEM private key of the leaf
    key_password_env: str | None = None  # the name of the variable holding the key's password, if encrypted
    # seconds between two checks of the files' mtime, inode and size (a change reloads them); 0: SIGHUP only
    watch_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
