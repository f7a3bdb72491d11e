"""``sluice registry``: the model registry's supply checks (issue 28)."""

from __future__ import annotations

import typer

from .client import admin_call
from .output import Col, OutputOption, print_json, table, when

app = typer.Typer(no_args_is_help=True, help="The model registry: what its versions' backends serve.")

_UNVERIFIED = ("mismatch", "unreachable", "pending", "no_probe")


def _short(digest: str | None) -> str | None:
    return digest if digest is None or len(digest) <= 26 else digest[:26] + "…"


@app.command()
def verify(cached: bool = typer.Option(False, "--cached", help="Show the last checks' verdicts without checking now."),
           fmt: str = OutputOption()) -> None:
    """Every version's digest on every replica of its upstream: approved, reported, state, checked at.
    Exits 1 when some replica of a version with a digest is not verified (it takes none of that version's traffic)."""
    got = admin_call("GET", "/admin/registry/verify" + ("" if cached else "?check=now"))
    rows = got.get("data", [])
    if fmt == "json":
        print_json(got)
    else:
        table([Col("version", "target"), Col("replica", "replica"), Col("state", "state"),
               Col("approved", lambda v: _short(v.get("approved"))), Col("reported", lambda v: _short(v.get("reported"))),
               Col("checked at", lambda v: when(v.get("checked_at")))],
              rows, title="model supply (only verified replicas take a version's traffic)", empty="no registry versions")
    if any(v["state"] in _UNVERIFIED for v in rows):
        raise typer.Exit(1)
