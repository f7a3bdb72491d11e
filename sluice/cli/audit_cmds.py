"""``sluice audit``: keys, verification (against the database, or offline from three files),
proofs, export for a SIEM, and checkpoints on demand. Reads the store named in the config."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape

from .output import OutputOption, err, fields, print_json
from .output import out as people
from .params import TimeOption

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log: keygen, verify, prove, export, checkpoint.")
T = TypeVar("T")
_CONFIG = typer.Option(Path("sluice.yaml"), "--config", "-c", help="YAML config file.")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]{escape(message)}[/red]", soft_wrap=not err.is_terminal)
    return typer.Exit(code)


def _with_log(config: Path, job: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``job(audit_log)`` against the configured store (migrated to the newest schema first)."""
    from ..audit import AuditLog, MerkleJournal, load_signer
    from ..core import config as cfgmod
    from ..core.errors import ConfigError
    from ..store import StoreUnavailable, open_store

    try:
        c = cfgmod.load(config)
    except ConfigError as exc:
        raise _fail(f"config error: {exc}") from None

    async def run() -> T:
        store = open_store(c.store.url)
        store.journal = MerkleJournal()  # type: ignore[attr-defined]
        await store.open()
        try:
            try:
                signer = load_signer(c.audit, create=False)
            except FileNotFoundError:
                signer = None
            return await job(AuditLog(store, c.audit, signer))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from None


def _verifier(public_key: str | None) -> Any:
    from ..audit import NoteError, Verifier

    if public_key is None:
        return None
    text = Path(public_key).read_text() if Path(public_key).exists() else public_key
    try:
        return Verifier.parse(text)
    except NoteError as exc:
        raise _fail(f"public key: {exc}") from None


def _notes(paths: list[Path]) -> list[str]:
    from ..audit.note import split_notes

    out: list[str] = []
    for p in paths:
        try:
            out += split_notes(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _fail(f"cannot read checkpoint {p}: {exc.strerror}") from None
    return out


def _report(report: Any, fmt: str) -> None:
    if fmt == "json":
        print_json(report.as_dict())
    first = report.first
    if first is None:
        console = err if fmt == "json" else people
        console.print(f"[green]audit log verified[/green]: {report.size} entries, root {report.root.hex()},"
                      f" {report.checkpoints} checkpoint(s)", soft_wrap=not console.is_terminal)
        return
    where = f"entry {first.seq}" if first.seq is not None else "checkpoint"
    raise _fail(f"audit log FAILED at {where} ({first.kind}): {first.message}", 1)


@app.command()
def keygen(name: str = typer.Option("sluice.local/audit", help="Key name: the log's origin."),
           out: Path = typer.Option(..., help="Private key file to create (mode 0600; never overwritten).")) -> None:
    """Create a checkpoint signing key; print its public (verifier) key."""
    from ..audit import NoteError, Signer
    from ..audit.log import write_key

    try:
        signer = Signer.generate(name)
        write_key(out, signer)
    except (NoteError, FileExistsError) as exc:
        raise _fail(str(exc) if isinstance(exc, NoteError) else f"{out} exists; not overwritten") from None
    print(signer.verifier().text())


@app.command("public-key")
def public_key(config: Path = _CONFIG) -> None:
    """Print the configured signing key's public (verifier) key."""
    from ..audit import load_signer
    from ..core import config as cfgmod

    try:
        print(load_signer(cfgmod.load(config).audit, create=False).verifier().text())
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None


@app.command()
def verify(config: Path = _CONFIG,
           checkpoint: list[Path] = typer.Option([], help="A checkpoint file (or the checkpoint sink) to check too."),
           public_key: str = typer.Option(None, help="Verifier key (text or file); default: the configured key's."),
           offline: bool = typer.Option(False, help="Verify an export file without any database."),
           export: Path = typer.Option(None, help="With --offline: the JSON lines of `sluice audit export --since 0`."),
           origin: str = typer.Option(None, help="With --offline: the expected origin (default: the key's name)."),
           fmt: str = OutputOption()) -> None:
    """Recompute the log and its checkpoints; name the first entry altered, deleted, inserted or reordered."""
    from ..audit import Row
    from ..audit import verify as check

    verifier = _verifier(public_key)
    notes = _notes(checkpoint)
    if offline:
        if export is None or verifier is None or not notes:
            raise _fail("--offline needs --export, --checkpoint and --public-key")
        try:
            lines = [line for line in export.read_bytes().split(b"\n") if line]
        except OSError as exc:
            raise _fail(f"cannot read {export}: {exc.strerror}") from None
        _report(check([Row(None, line) for line in lines], verifier=verifier, notes=notes,
                      origin=origin or verifier.name), fmt)
        return
    _report(_with_log(config, lambda log: log.verify(notes, verifier)), fmt)


@app.command()
def prove(config: Path = _CONFIG, leaf: int = typer.Option(None, help="Inclusion proof of this entry."),
          size: int = typer.Option(None, help="Tree size (default: the whole log)."),
          consistency: tuple[int, int] = typer.Option((0, 0), metavar="OLD NEW", show_default=False,
                                                      help="A consistency proof between two sizes."),
          fmt: str = OutputOption()) -> None:
    """Print an RFC 6962 inclusion or consistency proof (-o json for a verifier)."""
    from ..core.errors import InvalidRequest

    if (leaf is None) == (consistency == (0, 0)):
        raise _fail("give exactly one of --leaf N and --consistency OLD NEW")
    try:
        if leaf is not None:
            proof = _with_log(config, lambda log: log.inclusion(leaf, size))
        else:
            proof = _with_log(config, lambda log: log.consistency(consistency[0], consistency[1]))
    except InvalidRequest as exc:
        raise _fail(exc.message) from None
    if fmt == "json":
        print_json(proof)
    else:
        fields([(k.replace("_", " "), v) for k, v in proof.items()])


@app.command()
def export(config: Path = _CONFIG, since: float = TimeOption(0.0, "--since", help="Entries from this time"),
           out: Path = typer.Option(None, help="File to write (default: stdout).")) -> None:
    """Entries since a time as JSON lines (the canonical entries, one per line) for a SIEM or `verify --offline`."""
    rows = _with_log(config, lambda log: log.rows(since=since))
    data = b"".join(r.data + b"\n" for r in rows)
    if out is None:
        sys.stdout.buffer.write(data)
    else:
        out.write_bytes(data)


@app.command()
def checkpoint(config: Path = _CONFIG) -> None:
    """Sign the current tree head now, keep it and push it to the configured sinks; print it."""
    from ..core.errors import InvalidRequest

    try:
        cp = _with_log(config, lambda log: log.checkpoint())
    except InvalidRequest as exc:
        raise _fail(exc.message) from None
    sys.stdout.write(cp.note)
