"""``sluice identities``, ``sluice teams`` and ``sluice usage``: control-plane reads and changes (and
``sluice usage export``, a day's raw rows to files, against the store as the other maintenance jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlencode

import typer

from . import refs
from .client import admin_call, admin_text
from .output import Col, OutputOption, count, emit, day, fields, line, money, print_json, table, when
from .params import TimeOption

identities = typer.Typer(help="Service identities: the inventory, and changes to it.", invoke_without_command=True)
teams = typer.Typer(no_args_is_help=True, help="Teams of identities.")
usage_app = typer.Typer(help="Usage and cost: summaries, chargeback, and a day's raw rows exported.",
                        invoke_without_command=True)
_IDENTITY = typer.Argument(..., metavar="IDENTITY", help="Its name or id.")
_FORMAT = ("--format", "-f")


def _live(row: dict) -> list[dict]:
    return [c for c in row["credentials"] if c["active"]]


_INVENTORY = [
    Col("name", "name"), Col("owner", "owner"), Col("env", "environment"),
    Col("roles", "roles", wrap=True), Col("models", "models", wrap=True), Col("flags", lambda r: (["disabled"] if r["disabled"] else []) + r["flags"] or "ok", wrap=True),
    Col("team", "team", optional=True),
    Col("keys", lambda r: ", ".join(c["display"] for c in _live(r)), wrap=True, optional=True),
    Col("next expiry", lambda r: day(min((c["expires_at"] for c in _live(r) if c["expires_at"]), default=None)),
        optional=True),
    Col("last used", lambda r: day(r["last_used_at"]), optional=True),
]


@identities.callback()
def inventory(
    ctx: typer.Context,
    fmt: str = OutputOption("table", "json", "csv", aliases=_FORMAT),
    include_disabled: bool = typer.Option(False, "--include-disabled", help="Disabled identities too."),
) -> None:
    """Every identity with owner, environment, roles, scopes, credentials, last use and review flags."""
    if ctx.invoked_subcommand is not None:
        return
    query = {"include_disabled": "true"} if include_disabled else {}
    if fmt == "csv":
        print(admin_text("GET", "/admin/identities/inventory?" + urlencode({**query, "format": "csv"})), end="")
        return
    rows = admin_call("GET", "/admin/identities/inventory" + (f"?{urlencode(query)}" if query else ""))["data"]
    if fmt == "json":
        print_json(rows)
        return
    table(_INVENTORY, rows, title=count(len(rows), "identity", "identities"), empty="no identities")


def _identity(got: dict) -> None:
    fields([("name", got["name"]), ("id", got["id"]), ("owner", got["owner"]), ("team", got.get("team")),
            ("environment", got["environment"]), ("roles", got["roles"]), ("models", got["models"]),
            ("expires", when(got.get("expires_at"))), ("disabled", when(got.get("disabled_at"))),
            ("created", f"{when(got['created_at'])} by {got['created_by']}")])


@identities.command()
def create(
    name: str, owner: str = typer.Option(..., help="Who answers for it (an e-mail address)."),
    env: str = typer.Option("dev", metavar="dev|prod"),
    model: list[str] = typer.Option([], help="Model scope (repeat; 'prefix*' and '*' allowed)."),
    team: Optional[str] = typer.Option(None),  # noqa: UP007 - typer needs Optional
    role: list[str] = typer.Option([], help="Role (repeat); default invoker."),
    fmt: str = OutputOption(),
) -> None:
    """Create an identity."""
    body = {"name": name, "owner": owner, "environment": env, "models": model, "team": team}
    if role:
        body["roles"] = role
    got = admin_call("POST", "/admin/identities", body)
    emit(fmt, got, lambda: _identity(got))


@identities.command()
def show(ident: str = _IDENTITY, fmt: str = OutputOption()) -> None:
    """One identity."""
    got = refs.identity(ident)
    emit(fmt, got, lambda: _identity(got))


@identities.command()
def disable(ident: str = _IDENTITY, fmt: str = OutputOption()) -> None:
    """Disable an identity and revoke all its keys."""
    who = refs.identity(ident)
    got = admin_call("DELETE", f"/admin/identities/{who['id']}")
    emit(fmt, got, f"disabled {who['name']} ({who['id']}) and revoked its keys")


@identities.command()
def roles(ident: str = _IDENTITY, role: list[str] = typer.Option(..., help="The roles it should hold (repeat)."),
          fmt: str = OutputOption()) -> None:
    """Set an identity's roles (only roles you hold; never your own)."""
    who = refs.identity(ident)
    got = admin_call("PUT", f"/admin/identities/{who['id']}/roles", {"roles": role})
    emit(fmt, got, f"{got['name']} now holds: {', '.join(got['roles']) or 'no role'}")


@identities.command()
def offboard(owner: str,
             reassign_to: Optional[str] = typer.Option(None, help="New owner; without it everything is disabled."),  # noqa: UP007
             fmt: str = OutputOption()) -> None:
    """Revoke or reassign everything an owner owns, in one recorded step."""
    result = admin_call("POST", f"/admin/owners/{quote(owner, safe='@')}/offboard", {"reassign_to": reassign_to})
    if fmt == "json":
        print_json(result)
        return
    line(f"{result['action']} {count(len(result['identities']), 'identity', 'identities')} and "
         f"{count(len(result['teams']), 'team')} of {owner}"
         + (f" (now {reassign_to}'s)" if reassign_to else ""))
    known = refs.names()
    if result["identities"]:
        line("identities: " + ", ".join(known.get(i, i) for i in result["identities"]))
    if result["teams"]:
        line("teams: " + ", ".join(result["teams"]))


@teams.command("list")
def list_teams(fmt: str = OutputOption()) -> None:
    """List teams."""
    rows = admin_call("GET", "/admin/teams")["data"]
    if fmt == "json":
        print_json(rows)
        return
    table([Col("name", "name"), Col("owner", "owner"), Col("created", lambda t: when(t.get("created_at"))),
           Col("by", "created_by", optional=True)], rows, empty="no teams")


@teams.command("create")
def create_team(name: str, owner: str = typer.Option(...), fmt: str = OutputOption()) -> None:
    """Create a team."""
    got = admin_call("POST", "/admin/teams", {"name": name, "owner": owner})
    emit(fmt, got, f"created team {got['name']}, owner {got['owner']}")


def _count(field: str) -> Col:
    return Col({"requests": "requests", "errors": "errors", "prompt_tokens": "tokens in", "cached_tokens": "cached",
                "completion_tokens": "tokens out"}[field], lambda r: str(r[field]), right=True,
               optional=field in ("errors", "cached_tokens"))


@usage_app.callback()
def usage(
    ctx: typer.Context,
    since: Optional[float] = TimeOption(None, "--since", help="From this time (default: the first record)"),  # noqa: UP007
    until: Optional[float] = TimeOption(None, "--until", help="Up to this time (default: now)"),  # noqa: UP007
    by: Optional[str] = typer.Option(None, "--by", metavar="DIMENSION",  # noqa: UP007
                                     help="identity, key, team, model, route, api or day (with exact costs)"),
    key: Optional[str] = typer.Option(None, "--key", metavar="KEY",  # noqa: UP007
                                      help="Only this key's requests: its id, display form or the whole key."),
    fmt: str = OutputOption("table", "json", "csv", aliases=_FORMAT),
) -> None:
    """Usage per identity and model; with --by, per one dimension with costs and a total; --key: what one key did."""
    if ctx.invoked_subcommand is not None:
        return
    traced = refs.key(key) if key else None
    query: dict = {"since": since or 0}
    if until is not None:
        query["until"] = until
    if traced is not None:
        query["key"] = traced["key"]["id"]
        by = by or "model"
    elif until is not None:
        by = by or "identity"  # the per-identity-and-model view has no end time
    if by is not None:
        query["by"] = by
    if fmt == "csv":
        print(admin_text("GET", "/admin/usage/summary?" + urlencode({**query, "format": "csv"})), end="")
        return
    report = admin_call("GET", "/admin/usage/summary?" + urlencode(query))
    if fmt == "json":
        print_json(report)
        return
    span = f"since {when(since) if since else 'the first record'}" + (f" until {when(until)}" if until is not None else "")
    if by is None:
        table([Col("identity", "identity"), Col("model", "model"), *map(_count, ("requests", "errors", "prompt_tokens",
                                                                                  "completion_tokens"))],
              report["data"], title=f"usage per identity and model {span}", empty="no requests")
        return
    whose = f" of key {traced['key']['id']} ({traced['key']['display']}, {traced['identity']['name']})" if traced else ""
    rows = report["data"] + [{**report["totals"], "name": "TOTAL"}]
    table([Col(by, "name"), *map(_count, ("requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens")),
           Col("cost", lambda r: money(r["cost"]), right=True)],
          rows, title=f"usage per {by}{whose} {span}")


@usage_app.command("export")
def export(
    day: str = typer.Option(..., "--day", metavar="YYYY-MM-DD", help="The UTC day whose raw rows to export."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the files (default: ledger.export_dir)."),  # noqa: UP007
    config: Path = typer.Option(..., "--config", "-c", help="The gateway's config file (for its store)."),
    fmt: str = OutputOption(),
) -> None:
    """A day's raw usage rows as gzip JSON lines, with a manifest (rows, columns, SHA-256 of each file)."""
    from ..core import config as cfgmod
    from ..store.usage_export import export_day, parse_day
    from .store_jobs import on_store

    try:
        when_day = parse_day(day)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--day") from None
    target = out or cfgmod.load(config).ledger.export_dir
    if target is None:
        raise typer.BadParameter("no --out and no ledger.export_dir in the config", param_hint="--out")
    manifest = on_store(config, lambda store: export_day(store.engine, when_day, target, replace=True))
    if fmt == "json":
        print_json(manifest)
        return
    f = manifest["files"][0]
    line(f"exported {manifest['rows']} rows of {manifest['day']} to {Path(target) / f['path']} (sha256 {f['sha256']})")
