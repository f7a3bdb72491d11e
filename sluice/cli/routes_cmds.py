"""``sluice routes``: the routing policy, weight shifts, approvals, rollback and decision lookups."""

from __future__ import annotations

import typer

from .client import admin_call, print_json

app = typer.Typer(no_args_is_help=True, help="Routes, the model registry and releases.")


@app.command("list")
def list_routes() -> None:
    """The routing policy: registry versions, routes with their weights, and its version."""
    print_json(admin_call("GET", "/admin/routing"))


@app.command()
def weights(route: str, target: list[str] = typer.Argument(..., help="model@version=WEIGHT, one per target.")) -> None:
    """Shift a route's traffic, e.g. ``sluice routes weights chat chat@v1=90 chat@v2=10``."""
    targets = []
    for t in target:
        name, sep, weight = t.rpartition("=")
        if not sep or not weight.isdigit():
            raise typer.BadParameter(f"{t!r}: write model@version=WEIGHT")
        targets.append({"target": name, "weight": int(weight)})
    print_json(admin_call("PUT", f"/admin/routing/routes/{route}/weights", {"targets": targets}))


@app.command()
def rollback(route: str) -> None:
    """Restore the weights a route had before its last change."""
    print_json(admin_call("POST", f"/admin/routing/routes/{route}/rollback"))


@app.command()
def approve(target: str, revoke: bool = typer.Option(False, "--revoke", help="Withdraw the approval.")) -> None:
    """Approve a registry version (``model@version``) to take traffic (operator role)."""
    model, sep, version = target.partition("@")
    if not sep:
        raise typer.BadParameter("write model@version")
    print_json(admin_call("PUT", f"/admin/registry/{model}/versions/{version}/approval", {"approved": not revoke}))


@app.command()
def why(request_id: str) -> None:
    """Why a recent request went where it went (asked of the replica that served it)."""
    print_json(admin_call("GET", f"/admin/routes/decisions/{request_id}"))
