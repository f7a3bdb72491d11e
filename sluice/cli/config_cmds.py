"""``sluice config``: the JSON Schema for editors, and a check of a file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ..core import config as cfgmod
from ..core.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="Configuration schema and validation.")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file."""
    print(json.dumps(cfgmod.json_schema(), indent=2))


@app.command()
def check(path: Path) -> None:
    """Validate a config file; names the field and the reason on error."""
    try:
        c = cfgmod.load(path)
    except ConfigError as exc:
        Console(stderr=True).print(f"[red]invalid:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(f"[green]valid[/green]: {len(c.upstreams)} upstreams, {len(c.models)} models, {len(c.identities)} declared identities")
