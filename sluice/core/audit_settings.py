"""The ``audit:`` section of the config: the signing key, checkpoint interval and sinks."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .types import MAX_INT


class Audit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The tamper-evident audit log (see docs/audit.md).

    The signing key is ``PRIVATE+KEY+...`` text (``sluice audit keygen``), given inline (``${ENV}``)
    or as a file; a missing file is created on first start. Checkpoint sinks are kept apart from the
    store: an append-only file (e.g. ``chattr +a`` or a different volume) and/or a webhook.
    """

    origin: Annotated[str, msgspec.Meta(pattern=r"^[^\s+]{1,128}$")] = "sluice.local/audit"
    signing_key: str | None = None
    signing_key_file: str = ".sluice/audit.key"
    checkpoint_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0  # 0: only on demand
    checkpoint_file: str | None = None
    checkpoint_webhook: str | None = None
    webhook_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Failed control-plane logins written per minute per replica (beyond it they are counted and the
    # count goes into the next entry); the per-source auth-failure gate applies before this.
    failed_logins_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 60
