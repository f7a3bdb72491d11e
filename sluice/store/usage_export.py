"""A day's raw usage rows as a file for a finance or SIEM system: gzip JSON lines, one object per row with
every column of ``usage``, and a manifest beside it (the day, row count, columns and each file's SHA-256).

Rows are read 1,000 at a time in ``(ts, seq)`` order, encoded a chunk at a time (msgspec) and compressed,
hashed and written on a thread. The file is written under a temporary name and renamed, the manifest last: a
manifest names only whole files. gzip's header carries no time, so the same rows give the same digest.

Retention runs the export in a child process (``export_apart``, this module as ``python -m``): reading,
encoding and compressing a day is CPU that, on a thread of the gateway's own process, held the GIL the event
loop needs (loop pauses of 20-40 ms measured on SQLite against 10-15 ms of the idle loop on the same loaded
machine); apart, the gateway only waits on a pipe.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import os
import sys
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy import and_, or_, select

from ..core import clock
from . import schema as t

DAY = 86_400
CHUNK = 1_000
_TYPES = {"String": "string", "Text": "string", "Float": "number", "Integer": "integer", "BigInteger": "integer",
          "Boolean": "boolean"}
COLUMNS = [{"name": str(c.name), "type": _TYPES.get(type(c.type).__name__, "integer")} for c in t.usage.c]  # seq: a variant


def day_text(day: int) -> str:
    """``YYYY-MM-DD`` of a day (whole days since the epoch)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def parse_day(text: str) -> int:
    """Whole days since the epoch of ``YYYY-MM-DD``; ValueError names the expected form."""
    try:
        return (dt.date.fromisoformat(text) - dt.date(1970, 1, 1)).days
    except ValueError:
        raise ValueError(f"a day is YYYY-MM-DD, not {text!r}") from None


class _Sink:
    """gzip over a file, hashing what reaches the file; used from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.digest = hashlib.sha256()
        self.size = 0
        self._gz = gzip.GzipFile(fileobj=self, mode="wb", mtime=0)

    def write(self, data: bytes) -> int:  # the file object gzip writes to
        self.digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def add(self, data: bytes) -> None:
        self._gz.write(data)

    def close(self) -> None:
        self._gz.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _free_stem(out: Path, day: int) -> str:
    """``usage-YYYY-MM-DD``, or with ``.2``, ``.3``... when an earlier export of that day is there (late rows of
    a day already exported and dropped get a file of their own rather than replacing the first)."""
    stem, n = f"usage-{day_text(day)}", 1
    while (out / f"{stem}.manifest.json").exists():
        n += 1
        stem = f"usage-{day_text(day)}.{n}"
    return stem


async def export_day(engine: Any, day: int, out_dir: str | Path, *, upto_seq: int | None = None,
                     replace: bool = False) -> dict:
    """Write ``day``'s rows (with ``upto_seq``, only those with ``seq`` up to it) to ``out_dir``; the manifest.

    ``replace``: write ``usage-YYYY-MM-DD`` even if an earlier export is there (the CLI); retention never does."""
    out = Path(out_dir)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    stem = f"usage-{day_text(day)}" if replace else await asyncio.to_thread(_free_stem, out, day)
    data, tmp = out / f"{stem}.jsonl.gz", out / f".{stem}.jsonl.gz.tmp"
    sink = await asyncio.to_thread(_Sink, tmp)
    u = t.usage.c
    names = [str(c.name) for c in t.usage.c]
    encode = msgspec.json.Encoder().encode
    lo, hi = day * DAY, (day + 1) * DAY
    rows, last, max_seq = 0, None, None
    try:
        while True:
            q = select(*t.usage.c).where(u.ts >= lo, u.ts < hi)
            if upto_seq is not None:
                q = q.where(u.seq <= upto_seq)
            if last is not None:  # keyset: after the last row written
                q = q.where(or_(u.ts > last[0], and_(u.ts == last[0], u.seq > last[1])))
            async with engine.connect() as conn:
                got = (await conn.execute(q.order_by(u.ts, u.seq).limit(CHUNK))).all()
            if not got:
                break
            chunk = b"".join(encode(dict(zip(names, r))) + b"\n" for r in got)
            await asyncio.to_thread(sink.add, chunk)
            rows += len(got)
            last = (got[-1].ts, got[-1].seq)
            max_seq = max(max_seq or 0, max(r.seq for r in got))
            await asyncio.sleep(0)
        await asyncio.to_thread(sink.close)
        await asyncio.to_thread(os.replace, tmp, data)
    except BaseException:
        await asyncio.to_thread(_discard, sink, tmp)
        raise
    manifest = {"day": day_text(day), "format": "jsonl.gz", "rows": rows, "max_seq": max_seq,
                "exported_at": clock.now(), "columns": COLUMNS,
                "files": [{"path": data.name, "rows": rows, "bytes": sink.size, "sha256": sink.digest.hexdigest()}]}
    await asyncio.to_thread(_write_manifest, out / f"{stem}.manifest.json", manifest)
    return manifest


def _discard(sink: _Sink, tmp: Path) -> None:
    try:
        sink.close()
    except (OSError, ValueError):
        pass
    tmp.unlink(missing_ok=True)


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    os.replace(tmp, path)



class ExportFailed(Exception):
    """The export's child process failed (its reason, one line, is in the message); ``done``: the manifests of
    the days it had written whole before."""

    def __init__(self, why: str, done: list[dict] | None = None) -> None:
        super().__init__(why)
        self.done = done or []


_URL_ENV = "SLUICE_EXPORT_STORE_URL"  # the store's URL reaches the child in its environment, never its argv


async def export_apart(url: str, days: list[int], out_dir: str | Path, *, upto_seq: int | None,
                       renew: Callable[[], Awaitable[None]], every: float = 30.0) -> list[dict]:
    """``export_day`` of each of ``days`` in one child process against the store at ``url``: their manifests.
    ``renew`` is awaited every ``every`` seconds while it runs (the caller's lease). Raises ``ExportFailed``
    (the days exported before the failure keep their files); a cancelled export kills the child."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.store.usage_export", str(out_dir), "" if upto_seq is None else str(upto_seq),
        *map(str, days), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, _URL_ENV: url})
    talk = asyncio.ensure_future(proc.communicate())
    try:
        while not (await asyncio.wait({talk}, timeout=every))[0]:
            await renew()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        talk.cancel()
        raise
    out, err = talk.result()
    manifests = [msgspec.json.decode(line) for line in out.splitlines()]  # one per day written, as it was
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines()
        raise ExportFailed(why[-1] if why else f"exit status {proc.returncode}", manifests)
    return manifests


def _child(argv: list[str]) -> int:
    """``python -m sluice.store.usage_export OUT_DIR UPTO_SEQ|'' DAY...``: each day's manifest on a line of
    stdout once its files are whole; a failure as one line on stderr."""
    from .sql import SqlStore

    out, upto = argv[0], int(argv[1]) if argv[1] else None
    os.nice(10)  # background work: on a busy machine the gateway (its ledger's writer, its requests) comes first

    async def run() -> None:
        store = SqlStore(os.environ[_URL_ENV])
        await store.open(migrate=False)
        try:
            for day in argv[2:]:
                sys.stdout.buffer.write(msgspec.json.encode(await export_day(store.engine, int(day), out, upto_seq=upto)) + b"\n")
                sys.stdout.flush()
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except Exception as exc:  # the parent logs this line; no traceback, no URL
        print(f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else type(exc).__name__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
