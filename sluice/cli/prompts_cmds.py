"""``sluice prompts``: captured prompts (masked) past their retention are purged."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .store_jobs import on_store

app = typer.Typer(no_args_is_help=True, help="Prompt capture (masked text, per route, with retention).")


@app.command()
def purge(config: Path = typer.Option(..., "--config", "-c", help="The gateway's config file (for its store).")) -> None:
    """Delete captured prompts past their retention period; prints how many went."""
    from ..store.guard_records import GuardRecords

    Console().print(f"purged {on_store(config, lambda store: GuardRecords(store).purge_captures())} captured prompts")
