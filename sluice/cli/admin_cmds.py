"""``sluice identities`` and ``sluice usage``: control-plane reads and changes."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from .client import admin_call, print_json

identities = typer.Typer(no_args_is_help=True, help="Service identities.")
out = Console()


@identities.command("list")
def list_(as_json: bool = typer.Option(False, "--json")) -> None:
    """List identities with owner, environment and model scopes."""
    data = admin_call("GET", "/admin/identities")["data"]
    if as_json:
        print_json(data)
        return
    t = Table("id", "name", "owner", "env", "models", "source")
    for i in data:
        t.add_row(i["id"], i["name"], i["owner"], i["environment"], ",".join(i["models"]), i["source"])
    out.print(t)


@identities.command()
def create(
    name: str, owner: str = typer.Option(...), env: str = typer.Option("dev"),
    model: list[str] = typer.Option([], help="Model scope (repeat; 'prefix*' and '*' allowed)."),
) -> None:
    """Create an identity."""
    print_json(admin_call("POST", "/admin/identities", {"name": name, "owner": owner, "environment": env, "models": model}))


@identities.command()
def disable(identity_id: str) -> None:
    """Disable an identity and revoke all its keys."""
    print_json(admin_call("DELETE", f"/admin/identities/{identity_id}"))


def usage(since: float = typer.Option(0.0, help="UNIX time to start from.")) -> None:
    """Usage summary per identity and model."""
    rows = admin_call("GET", f"/admin/usage/summary?since={since}")["data"]
    t = Table("identity", "model", "requests", "errors", "tokens in", "tokens out")
    for r in rows:
        t.add_row(str(r["identity_id"]), str(r["model"]), str(r["requests"]), str(r["errors"]),
                  str(r["prompt_tokens"]), str(r["completion_tokens"]))
    out.print(t)
