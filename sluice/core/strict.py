"""Shared pieces of the config sections: the strict base (an unknown key is an error) and common types."""

from __future__ import annotations

from typing import Annotated

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base for config sections: unknown keys are an error, not a silent typo."""
