"""``sluice cache``: purge the response cache's entries of an identity, a team, a model or a route (issue 27)."""

from __future__ import annotations

import typer

from .client import admin_call
from .output import OutputOption, line, print_json
from .refs import fail, identity_id

app = typer.Typer(no_args_is_help=True, help="The response cache.")


@app.command()
def purge(identity: str = typer.Option(None, help="An identity's name or id: the entries it made."),
          team: str = typer.Option(None, help="A team: the entries its identities made."),
          model: str = typer.Option(None, help="A model, as callers name it."),
          route: str = typer.Option(None, help="A route."),
          fmt: str = OutputOption()) -> None:
    """Purge cached answers, e.g. ``sluice cache purge --identity checkout-bot``; shared (Redis) entries go on every replica."""
    given = {k: v for k, v in {"identity": identity, "team": team, "model": model, "route": route}.items() if v}
    if len(given) != 1:
        raise fail("name exactly one of --identity, --team, --model or --route")
    if "identity" in given:
        given["identity"] = identity_id(given["identity"])
    got = admin_call("POST", "/admin/cache/purge", given)
    if fmt == "json":
        print_json(got)
    else:
        line(f"purged {got['purged']} cached answers of {got['kind']} {identity or got['value']}")
