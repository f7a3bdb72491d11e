"""Names for ids: every command that takes an identity or a key takes its name (or display form) as
well as its id, and a miss says what was looked for and how to list what there is."""

from __future__ import annotations

import typer
from rich.markup import escape

from .client import admin_call
from .output import err


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{escape(message)}[/red]", soft_wrap=not err.is_terminal)  # wrapped at words on a terminal
    return typer.Exit(code)


def identities() -> list[dict]:
    """Every identity, disabled ones too."""
    return admin_call("GET", "/admin/identities?include_disabled=true")["data"]


def identity(ref: str) -> dict:
    """The identity with id ``ref``, else the one named ``ref``."""
    if not ref.strip():
        raise fail("give an identity: its name or id (sluice identities lists them)")
    rows = identities()
    for field in ("id", "name"):
        for row in rows:
            if row[field] == ref:
                return row
    raise fail(f"no identity named {ref!r} (nor with that id); list them with: sluice identities")


def identity_id(ref: str) -> str:
    return identity(ref)["id"]


def names() -> dict[str, str]:
    """Identity id -> name, for tables that would otherwise show ids."""
    return {row["id"]: row["name"] for row in identities()}


def shown(ref: str) -> str:
    """``ref`` as it may be printed: anything longer than a display form that starts like a key (a whole key,
    or one with a typo: a secret all the same) as its display form, never its secret."""
    from ..identity import display

    ref = ref.strip()
    return display(ref) if ref.startswith(("slk_", "sla_")) and len(ref) > 20 and "…" not in ref and "..." not in ref else ref


def find_keys(ref: str) -> list[dict]:
    """The keys ``ref`` names (whole key, display form, or key id), each with its identity; sent in a body, never a URL."""
    return admin_call("POST", "/admin/keys/find", {"key": ref})["data"]


def key(ref: str) -> dict:
    """The one key ``ref`` names (its id, its display form, or the whole key), with its identity."""
    if not ref.strip():
        raise fail("give a key: its id, its display form (slk_dev_ab12…wxyz) or the whole key")
    found = find_keys(ref)
    if not found:
        raise fail(f"no key {shown(ref)!r} (looked for a key id, a display form like slk_dev_ab12…wxyz, or a whole key); "
                   "an identity's keys: sluice keys list IDENTITY")
    if len(found) > 1:
        ids = ", ".join(f"{f['key']['id']} ({(f['identity'] or {}).get('name', '?')})" for f in found)
        raise fail(f"{shown(ref)!r} names {len(found)} keys: {ids}; give the key id")
    return found[0]


def key_id(ref: str) -> str:
    return key(ref)["key"]["id"]
