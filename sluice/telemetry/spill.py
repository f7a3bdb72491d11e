"""The usage spill file: records the store could not take yet, kept on local disk until it can.

Append-only JSON lines, one ``write`` and one ``fsync`` per batch, so a crash loses at most the
batch being appended (never one already acknowledged). Each process holds an exclusive lock on
the file it uses (``usage-0.jsonl``, ``usage-1.jsonl``, ... the first free one), so replicas or
workers sharing a directory never interleave, and a restarted process picks up what a dead one
left. Replaying twice is harmless: the usage table's request id is an idempotency key.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ..core.types import UsageRecord

log = logging.getLogger("sluice.usage")
_decode = msgspec.json.Decoder(UsageRecord).decode
_encode = msgspec.json.Encoder().encode


class SpillFile:
    """One locked, append-only file of usage records."""

    def __init__(self, directory: str | Path, max_slots: int = 256) -> None:
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        for slot in range(max_slots):
            path = root / f"usage-{slot}.jsonl"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.path, self._fd = path, fd
            self.count = sum(1 for _ in self._lines())
            return
        raise OSError(f"no free usage spill file in {root} (all {max_slots} are locked)")

    def append(self, records: Sequence[UsageRecord]) -> None:
        """Append a batch and make it durable before returning (blocking: call from a thread)."""
        if not records:
            return
        os.write(self._fd, b"".join(_encode(r) + b"\n" for r in records))
        os.fsync(self._fd)
        self.count += len(records)

    def _lines(self) -> list[bytes]:
        with open(self.path, "rb") as f:
            return [line for line in f.read().split(b"\n") if line.strip()]

    def read(self) -> list[UsageRecord]:
        """Every record in the file; a torn last line (a crash mid-append) is skipped and logged."""
        out = []
        for line in self._lines():
            try:
                out.append(_decode(line))
            except msgspec.DecodeError:
                log.error("usage spill file %s: skipped one unreadable line (%d bytes)", self.path.name, len(line))
        return out

    def clear(self) -> None:
        """Everything in the file was written to the store: start it empty."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.count = 0

    def close(self) -> None:
        os.close(self._fd)  # closing releases the lock
