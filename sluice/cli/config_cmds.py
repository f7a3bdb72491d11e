"""``sluice config``: the JSON Schema for editors, and a check of a file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

import msgspec

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
    from ..guard.policy import from_file as guard_from_file  # (lazily: every other command would pay for it)

    try:
        c = cfgmod.load(path)
        guard_from_file(msgspec.to_builtins(c.guardrails), msgspec.to_builtins(c.tools))  # as `serve` compiles them
        _check_tls(c)
    except ConfigError as exc:
        Console(stderr=True).print(f"[red]invalid:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(f"[green]valid[/green]: {len(c.upstreams)} upstreams, {len(c.models)} models, {len(c.identities)} declared identities")
    for warning in _revoked_in_store(c):
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)


def _check_tls(c: cfgmod.Config) -> None:
    """Each listener's certificate pair as ``serve`` checks it (readable, not expired, key matching)."""
    from ..http.tls import Refused, at_setting, check as check_pair, check_plane

    from ..core.listener_config import tls_refused

    for i, listener in enumerate(c.listeners):
        if listener.tls is not None:
            try:
                check_pair(listener.tls)
            except Refused as exc:
                raise tls_refused(c, i, exc) from None
    if c.control_plane.tls is not None:
        try:
            check_pair(c.control_plane.tls)
            check_plane("control", c.control_plane.tls)
        except Refused as exc:
            raise at_setting("control", exc) from None


def _revoked_in_store(c: cfgmod.Config) -> list[str]:
    """Declared credentials the store has revoked or disabled: they stay so after a restart,
    which an operator editing the file should know. Best effort: no store, no warnings."""
    import asyncio

    if not c.identities:
        return []

    async def look() -> list[str]:
        from ..app import load_pepper
        from ..identity import CredentialRegistry, Hasher, IdentityService
        from ..store import StoreUnavailable, open_store

        if c.store.url.startswith("sqlite:///") and not Path(c.store.url[len("sqlite:///"):]).exists():
            return []  # no database yet: nothing was revoked, and checking must not create one
        if not c.security.pepper and not Path(c.security.pepper_file).exists():
            return []
        store = open_store(c.store.url)
        try:
            await store.open(migrate=False)  # a check reads; it never migrates or creates tables
            hasher = Hasher(load_pepper(c.security))
            return await IdentityService(store, CredentialRegistry(hasher), hasher, c.security).revoked_declared(c.identities)
        except (StoreUnavailable, OSError, ValueError) as exc:
            return [f"cannot read the store to look for revoked declared keys: {type(exc).__name__}"]
        finally:
            await store.close()

    return asyncio.run(look())
