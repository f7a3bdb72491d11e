"""``sluice keys``: offline checks and generation, and key operations on the control plane."""

from __future__ import annotations

import typer
from rich.console import Console

from .. import identity
from .client import admin_call, print_json

app = typer.Typer(no_args_is_help=True, help="API keys: check, generate, issue, rotate, revoke.")
out = Console()


@app.command()
def check(key: str) -> None:
    """Tell offline whether KEY is a well-formed sluice key (prefix and checksum)."""
    info = identity.inspect(key.strip())
    if info is None:
        out.print("[red]not a sluice key[/red] (wrong prefix, length or checksum)")
        raise typer.Exit(1)
    where = f", environment {info.environment}" if info.environment else ""
    out.print(f"[green]valid sluice {info.kind} key[/green]{where}: {identity.display(key.strip())}")


@app.command()
def generate(env: str = typer.Option("dev", help="dev or prod"), admin: bool = typer.Option(False, help="An admin key.")) -> None:
    """Print a new random key (for config files fed from a secret store)."""
    if env not in ("dev", "prod"):
        raise typer.BadParameter("env must be dev or prod")
    print(identity.generate(env, kind="admin" if admin else "data"))  # type: ignore[arg-type]


@app.command()
def issue(identity_id: str, ttl_days: float = typer.Option(None, help="Lifetime in days.")) -> None:
    """Issue a key for an identity; the secret is printed once."""
    print_json(admin_call("POST", f"/admin/identities/{identity_id}/keys", {"ttl_days": ttl_days} if ttl_days else {}))


@app.command()
def rotate(key_id: str, overlap_seconds: float = typer.Option(0.0, help="How long the old key keeps working.")) -> None:
    """Issue a successor key; the old one dies now or after the overlap."""
    print_json(admin_call("POST", f"/admin/keys/{key_id}/rotate", {"overlap_seconds": overlap_seconds}))


@app.command()
def revoke(key_id: str) -> None:
    """Revoke a key, effective on the next request."""
    print_json(admin_call("POST", f"/admin/keys/{key_id}/revoke", {}))


@app.command("list")
def list_(identity_id: str) -> None:
    """List an identity's keys (never their secrets)."""
    print_json(admin_call("GET", f"/admin/identities/{identity_id}/keys"))
