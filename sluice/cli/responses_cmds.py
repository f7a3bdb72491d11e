"""``sluice responses``: stored responses (the Responses API's agent memory) past their retention are purged."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .store_jobs import on_store

app = typer.Typer(no_args_is_help=True, help="Stored responses of the Responses API (per identity, with retention).")


@app.command()
def purge(config: Path = typer.Option(..., "--config", "-c", help="The gateway's config file (for its store).")) -> None:
    """Delete stored responses past `responses.retention_days` (run it from cron); prints how many went.
    Expired responses are already invisible to every caller: this frees their space."""
    from ..store.response_records import ResponseRecords

    Console().print(f"purged {on_store(config, lambda store: ResponseRecords(store).purge())} stored responses")
