"""``sluice responses``: stored responses (the Responses API's agent memory) past their retention are purged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from ..core import config as cfgmod

app = typer.Typer(no_args_is_help=True, help="Stored responses of the Responses API (per identity, with retention).")


@app.command()
def purge(config: Path = typer.Option(..., "--config", "-c", help="The gateway's config file (for its store).")) -> None:
    """Delete stored responses past `responses.retention_days` (run it from cron); prints how many went.
    Expired responses are already invisible to every caller: this frees their space."""
    c = cfgmod.load(config)

    async def run() -> int:
        from ..store import open_store
        from ..store.response_records import ResponseRecords

        store = open_store(c.store.url)
        await store.open()
        try:
            return await ResponseRecords(store).purge()  # type: ignore[arg-type]
        finally:
            await store.close()

    Console().print(f"purged {asyncio.run(run())} stored responses")
