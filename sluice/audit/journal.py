"""The write side of the audit log: entries appended inside the transaction of their change.

Appends are serialised on the head row (``UPDATE`` takes its row lock on Postgres, the write lock
on SQLite), so two replicas appending at once wait for each other and never fork the tree; the head
holds the size and the compact range, so an append costs O(log n) hashes and no reads of the log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import update

from ..core import scope
from ..core.types import ChangeEvent
from ..store import schema as t
from . import entry, merkle


def _detail_state(event: ChangeEvent) -> tuple[Any, Any]:
    """(before, after) of a change recorded without its rows: what its detail says, if anything."""
    d = event.detail
    return d.get("before", d.get("from")), d.get("after", d.get("to"))


class MerkleJournal:
    """Implements ``store.Journal``: canonical entries, leaf hashes, and the tree head after each."""

    async def lock(self, conn: Any) -> None:
        head = t.audit_head
        await conn.execute(update(head).where(head.c.id == 1).values(size=head.c.size))

    async def append(self, conn: Any, events: Sequence[ChangeEvent], *, state: tuple[Any, Any] | None,
                     linked: bool = True) -> None:
        if not events:
            return
        head = t.audit_head
        # the UPDATE takes the lock (row lock on Postgres, write lock on SQLite) and reads the head in one statement
        row = (await conn.execute(update(head).where(head.c.id == 1).values(size=head.c.size)
                                  .returning(head.c.size, head.c.frontier))).one()
        size = int(row.size)
        frontier = [bytes.fromhex(h) for h in json.loads(row.frontier)]
        request_id, source = scope.request.get()
        rows = []
        for event in events:
            before, after = state if state is not None else _detail_state(event)
            if event.source_ip is None and source is not None:
                event.source_ip = source
            data = entry.build(size, event, before=entry.digest(before), after=entry.digest(after),
                               request_id=request_id, change_id=event.id if linked else None)
            merkle.append(frontier, size, merkle.leaf_hash(data))
            rows.append({"seq": size, "entry": data.decode(), "root": merkle.frontier_root(frontier).hex(),
                         "ts": event.ts})
            size += 1
        await conn.execute(t.audit_log.insert(), rows)
        await conn.execute(update(head).where(head.c.id == 1)
                           .values(size=size, frontier=json.dumps([h.hex() for h in frontier])))
