"""``sluice identities``, ``sluice teams`` and ``sluice usage``: control-plane reads and changes."""

from __future__ import annotations

import datetime as dt
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .client import admin_call, admin_text, print_json

identities = typer.Typer(help="Service identities: the inventory, and changes to it.", invoke_without_command=True)
teams = typer.Typer(no_args_is_help=True, help="Teams of identities.")
out = Console()


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d") if ts else "-"


@identities.callback()
def inventory(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv"),
    include_disabled: bool = typer.Option(False, "--include-disabled"),
) -> None:
    """Every identity with owner, environment, roles, scopes, credentials, last use and review flags."""
    if ctx.invoked_subcommand is not None:
        return
    query = "?include_disabled=true" if include_disabled else ""
    if fmt == "csv":
        sep = "&" if query else "?"
        print(admin_text("GET", f"/admin/identities/inventory{query}{sep}format=csv"), end="")
        return
    rows = admin_call("GET", f"/admin/identities/inventory{query}")["data"]
    if fmt == "json":
        print_json(rows)
        return
    if fmt != "table":
        raise typer.BadParameter("--format must be table, json or csv")
    t = Table("name", "owner", "team", "env", "roles", "models", "credentials", "last used", "flags",
              title=f"{len(rows)} identities")
    for r in rows:
        live = [c for c in r["credentials"] if c["active"]]
        creds = ", ".join(f"{c['display']} {c['age_days']:.0f}d exp {_when(c['expires_at'])}" for c in live) or "none"
        t.add_row(r["name"], r["owner"], r["team"] or "-", r["environment"], ",".join(r["roles"]),
                  ",".join(r["models"]) or "-", creds, _when(r["last_used_at"]),
                  ", ".join(r["flags"]) or "ok", style="dim" if r["disabled"] else None)
    out.print(t)


@identities.command()
def create(
    name: str, owner: str = typer.Option(...), env: str = typer.Option("dev"),
    model: list[str] = typer.Option([], help="Model scope (repeat; 'prefix*' and '*' allowed)."),
    team: Optional[str] = typer.Option(None),  # noqa: UP007 - typer needs Optional
    role: list[str] = typer.Option([], help="Role (repeat); default invoker."),
) -> None:
    """Create an identity."""
    body = {"name": name, "owner": owner, "environment": env, "models": model, "team": team}
    if role:
        body["roles"] = role
    print_json(admin_call("POST", "/admin/identities", body))


@identities.command()
def disable(identity_id: str) -> None:
    """Disable an identity and revoke all its keys."""
    print_json(admin_call("DELETE", f"/admin/identities/{identity_id}"))


@identities.command()
def roles(identity_id: str, role: list[str] = typer.Option(..., help="The roles it should hold (repeat).")) -> None:
    """Set an identity's roles (only roles you hold; never your own)."""
    print_json(admin_call("PUT", f"/admin/identities/{identity_id}/roles", {"roles": role}))


@identities.command()
def offboard(owner: str, reassign_to: Optional[str] = typer.Option(None, help="New owner; without it everything is disabled.")) -> None:  # noqa: UP007
    """Revoke or reassign everything an owner owns, in one recorded step."""
    result = admin_call("POST", f"/admin/owners/{owner}/offboard", {"reassign_to": reassign_to})
    out.print(f"{result['action']} {len(result['identities'])} identities and {len(result['teams'])} teams of {owner}")
    print_json(result)


@teams.command("list")
def list_teams() -> None:
    """List teams."""
    print_json(admin_call("GET", "/admin/teams")["data"])


@teams.command("create")
def create_team(name: str, owner: str = typer.Option(...)) -> None:
    """Create a team."""
    print_json(admin_call("POST", "/admin/teams", {"name": name, "owner": owner}))


def usage(
    since: float = typer.Option(0.0, help="UNIX time to start from."),
    until: Optional[float] = typer.Option(None, help="UNIX time to stop before."),
    by: Optional[str] = typer.Option(None, "--by", help="identity, team, model, route, API or day (with exact costs)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv"),
) -> None:
    """Usage summary per identity and model; with --by, per one dimension with costs and a total."""
    if by is None and fmt == "table":
        rows = admin_call("GET", f"/admin/usage/summary?since={since}")["data"]
        t = Table("identity", "model", "requests", "errors", "tokens in", "tokens out")
        for r in rows:
            t.add_row(str(r["identity_id"]), str(r["model"]), str(r["requests"]), str(r["errors"]),
                      str(r["prompt_tokens"]), str(r["completion_tokens"]))
        out.print(t)
        return
    query = f"/admin/usage/summary?since={since}&by={by or 'identity'}" + (f"&until={until}" if until is not None else "")
    if fmt == "csv":
        print(admin_text("GET", query + "&format=csv"), end="")
        return
    report = admin_call("GET", query)
    if fmt == "json":
        print_json(report)
        return
    t = Table(by or "identity", "requests", "errors", "tokens in", "cached", "tokens out", "cost")
    for r in report["data"] + [{**report["totals"], "key": "TOTAL"}]:
        t.add_row(str(r["key"]), str(r["requests"]), str(r["errors"]), str(r["prompt_tokens"]),
                  str(r["cached_tokens"]), str(r["completion_tokens"]), r["cost"])
    out.print(t)
