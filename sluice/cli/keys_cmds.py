"""``sluice keys``: offline checks and generation, and key operations on the control plane."""

from __future__ import annotations

import time

import typer

from . import refs
from .client import admin_call
from .output import Col, OutputOption, fields, line, out, print_json, table, when

app = typer.Typer(no_args_is_help=True, help="API keys: check, generate, issue, find, list, rotate, revoke.")
_IDENTITY = typer.Argument(..., metavar="IDENTITY", help="Its name or id.")
_KEY = typer.Argument(..., metavar="KEY", help="Its id, its display form (slk_dev_ab12…wxyz) or the whole key.")


@app.command()
def check(key: str) -> None:
    """Tell offline whether KEY is a well-formed sluice key (prefix and checksum)."""
    from .. import identity  # here, not at the top: the package costs a third of a second to import

    info = identity.inspect(key.strip())
    if info is None:
        out.print("[red]not a sluice key[/red] (wrong prefix, length or checksum)")
        raise typer.Exit(1)
    where = f", environment {info.environment}" if info.environment else ""
    out.print(f"[green]valid sluice {info.kind} key[/green]{where}: {identity.display(key.strip())}")


@app.command()
def generate(env: str = typer.Option("dev", metavar="dev|prod", help="dev or prod"),
             admin: bool = typer.Option(False, help="An admin key.")) -> None:
    """Print a new random key (for config files fed from a secret store)."""
    from .. import identity

    if env not in ("dev", "prod"):
        raise typer.BadParameter("env must be dev or prod")
    print(identity.generate(env, kind="admin" if admin else "data"))  # type: ignore[arg-type]


def state(k: dict, now: float | None = None) -> str:
    """active, revoked or expired."""
    if k.get("revoked_at") is not None:
        return "revoked"
    exp = k.get("expires_at")
    return "expired" if exp is not None and exp <= (now or time.time()) else "active"


def _issued(got: dict, who: dict, fmt: str) -> None:
    if fmt == "json":
        print_json(got)
        return
    fields([("key", got["key"]), ("id", got["id"]), ("identity", f"{who['name']} ({who['id']})"),
            ("plane", got["plane"]), ("expires", when(got.get("expires_at")))])
    line("The key is shown this once: store it now (sluice keeps only its HMAC).")


@app.command()
def issue(ident: str = _IDENTITY,
          ttl_days: float = typer.Option(None, metavar="DAYS", help="Lifetime in days."),
          plane: str = typer.Option("data", metavar="data|control",
                                    help="data: calls models (invoker); control: the control plane, for an identity "
                                         "with a control role (operator, key-admin, auditor, owner)."),
          fmt: str = OutputOption()) -> None:
    """Issue a key for an identity; the secret is printed once."""
    if plane not in ("data", "control"):
        raise typer.BadParameter("--plane is data or control")
    who = refs.identity(ident)
    if plane == "data" and "invoker" not in who["roles"]:
        raise refs.fail(f"{who['name']} has no invoker role, so it cannot hold a data-plane key; its roles are "
                        f"{', '.join(who['roles'])}: for a control-plane key, sluice keys issue {who['name']} --plane control")
    body: dict = {"plane": plane} | ({"ttl_days": ttl_days} if ttl_days else {})
    _issued(admin_call("POST", f"/admin/identities/{who['id']}/keys", body), who, fmt)


@app.command()
def rotate(key: str = _KEY,
           overlap_seconds: float = typer.Option(0.0, metavar="SECONDS", help="How long the old key keeps working."),
           fmt: str = OutputOption()) -> None:
    """Issue a successor key; the old one dies now or after the overlap."""
    found = refs.key(key)
    got = admin_call("POST", f"/admin/keys/{found['key']['id']}/rotate", {"overlap_seconds": overlap_seconds})
    _issued(got, found["identity"], fmt)
    if fmt != "json":
        ends = "now" if overlap_seconds <= 0 else f"at {when(time.time() + overlap_seconds)}"
        line(f"The old key {found['key']['id']} ({found['key']['display']}) stops working {ends}.")


@app.command()
def revoke(key: str = _KEY, fmt: str = OutputOption()) -> None:
    """Revoke a key, effective on the next request."""
    found = refs.key(key)
    got = admin_call("POST", f"/admin/keys/{found['key']['id']}/revoke", {})
    if fmt == "json":
        print_json(got)
        return
    line(f"revoked {got['id']} ({got['display']}) of {found['identity']['name']}: refused from the next request on")


_KEY_COLS = [Col("id", "id"), Col("key", "display"), Col("plane", "plane"), Col("state", state),
             Col("expires", lambda k: when(k.get("expires_at"))),
             Col("last used", lambda k: when(k.get("last_used_at")), optional=True),
             Col("created", lambda k: when(k.get("created_at")), optional=True)]


@app.command("list")
def list_(ident: str = _IDENTITY, fmt: str = OutputOption()) -> None:
    """List an identity's keys with their display forms and state (never their secrets)."""
    who = refs.identity(ident)
    got = admin_call("GET", f"/admin/identities/{who['id']}/keys")
    if fmt == "json":
        print_json(got)
        return
    table(_KEY_COLS, got["data"], title=f"keys of {who['name']} ({who['id']}), owner {who['owner']}", empty="no keys")


@app.command()
def find(key: str = typer.Argument(..., metavar="KEY_OR_DISPLAY",
                                   help="The whole key, its display form (slk_dev_ab12…wxyz or slk_dev_ab12...wxyz) "
                                        "or a key id."),
         fmt: str = OutputOption()) -> None:
    """Which identity, key and owner a leaked key belongs to. Never prints the secret."""
    found = refs.find_keys(key)
    if fmt == "json":
        print_json({"object": "list", "data": found})
        return
    if not found:
        raise refs.fail(f"no key matches {refs.shown(key)!r} (a whole key, a display form or a key id)")
    for f in found:
        k, who = f["key"], f["identity"] or {}
        fields([("identity", who.get("name")), ("identity id", who.get("id")), ("owner", who.get("owner")),
                ("team", who.get("team")), ("environment", who.get("environment")),
                ("key", f"{k['id']} ({k['display']})"), ("plane", k["plane"]), ("state", state(k)),
                ("expires", when(k.get("expires_at"))), ("last used", when(k.get("last_used_at")))])
