"""``sluice prompts``: captured prompts (masked) past their retention are purged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from ..core import config as cfgmod

app = typer.Typer(no_args_is_help=True, help="Prompt capture (masked text, per route, with retention).")


@app.command()
def purge(config: Path = typer.Option(..., "--config", "-c", help="The gateway's config file (for its store).")) -> None:
    """Delete captured prompts past their retention period; prints how many went."""
    c = cfgmod.load(config)

    async def run() -> int:
        from ..store import open_store
        from ..store.guard_records import GuardRecords

        store = open_store(c.store.url)
        await store.open()
        try:
            return await GuardRecords(store).purge_captures()  # type: ignore[arg-type]
        finally:
            await store.close()

    Console().print(f"purged {asyncio.run(run())} captured prompts")
