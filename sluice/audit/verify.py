"""Recompute the log from its entries and name the first one that was altered, deleted, inserted or
reordered; check signed checkpoints against the recomputed tree (a truncated tail, a rewrite, a
checkpoint signed by another key). Pure: the caller reads the rows (database or export file)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import entry, merkle
from .note import NoteError, Verifier, open_checkpoint


@dataclass(frozen=True)
class Row:
    """One stored entry: its sequence number and recorded tree head (None when read from an export)."""

    seq: int | None
    data: bytes
    root: str | None = None


@dataclass(frozen=True)
class Problem:
    seq: int | None  # the entry it names; None when it names no entry (a bad checkpoint)
    kind: str  # altered | deleted | inserted | reordered | truncated | checkpoint | unaudited
    message: str


@dataclass
class Report:
    size: int = 0
    root: bytes = merkle.EMPTY_ROOT
    checkpoints: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: math.inf if p.seq is None else p.seq, default=None)

    def as_dict(self) -> dict:
        first = self.first
        return {"ok": self.ok, "size": self.size, "root": self.root.hex(), "checkpoints_checked": self.checkpoints,
                "first": None if first is None else vars(first), "problems": [vars(p) for p in self.problems[:50]]}


def _embedded(rows: Sequence[Row]) -> list[int | None]:
    out: list[int | None] = []
    for r in rows:
        try:
            out.append(entry.decode(r.data)["seq"])
        except ValueError:
            out.append(None)
    return out


def _misplaced(pos: int, seqs: list[int | None]) -> Problem:
    """Why the entry at ``pos`` carries another sequence number: what happened to the log there."""
    here = seqs[pos]
    later = seqs[pos + 1] if pos + 1 < len(seqs) else None
    if here is not None and here > pos and pos in seqs[pos + 1:] and seqs.count(here) == 1:
        return Problem(pos, "reordered", f"entry {pos} was reordered: its place holds entry {here}, and entry {pos} is later")
    if here is not None and here < pos:
        return Problem(pos - 1, "inserted", f"entry {pos - 1} was inserted: the entry after it carries sequence {here}")
    if later == pos:
        return Problem(pos, "inserted", f"entry {pos} was inserted: the entry after it is the original entry {pos}")
    if here == pos + 1:
        return Problem(pos, "deleted", f"entry {pos} was deleted and the later entries renumbered")
    return Problem(pos, "altered", f"entry {pos} was altered: it carries sequence {here}")


def verify(rows: Sequence[Row], *, verifier: Verifier | None = None, notes: Sequence[str] = (),
           origin: str | None = None, changes: dict[str, tuple[str, str, str]] | None = None,
           head_size: int | None = None) -> Report:
    """Check ``rows`` (in stored order) and any signed checkpoint ``notes``.

    ``changes`` (change id -> (actor, action, target)) cross-checks the change log: every change has
    exactly one entry and every entry cites a real change; ``head_size`` is the size the append head
    records, which exposes a deleted tail even without a checkpoint.
    """
    report = Report()
    seqs = _embedded(rows)
    frontier: list[bytes] = []
    roots: list[bytes] = []
    structural = altered = False
    cited: set[str] = set()
    for pos, row in enumerate(rows):
        if not structural:
            if row.seq is not None and row.seq != pos:
                report.problems.append(Problem(pos, "deleted", f"entry {pos} was deleted: the log jumps to {row.seq}"))
                structural = True
            elif seqs[pos] is None:
                report.problems.append(Problem(pos, "altered", f"entry {pos} was altered: it is not a canonical entry"))
                structural = True
            elif seqs[pos] != pos:
                report.problems.append(_misplaced(pos, seqs))
                structural = True
        merkle.append(frontier, pos, merkle.leaf_hash(row.data))
        roots.append(merkle.frontier_root(frontier))
        if not altered and not structural and row.root is not None and row.root != roots[-1].hex():
            report.problems.append(Problem(pos, "altered", f"entry {pos} was altered: it no longer hashes to the tree head"
                                                            " recorded when it was written"))
            altered = True
        if changes is not None and seqs[pos] is not None:
            e = entry.decode(row.data)
            cid = e["change_id"]
            if cid is None:
                continue
            if cid in cited:
                report.problems.append(Problem(pos, "inserted", f"entry {pos} repeats change {cid}"))
            cited.add(cid)
            got = changes.get(cid)
            if got is None:
                report.problems.append(Problem(pos, "inserted", f"entry {pos} cites change {cid}, which is not in the change log"))
            elif got != (e["actor"], e["action"], e["target"]):
                report.problems.append(Problem(pos, "altered", f"entry {pos} and its change {cid} disagree"))
    n = len(rows)
    report.size, report.root = n, (roots[-1] if roots else merkle.EMPTY_ROOT)
    if changes is not None:
        for cid, (_, action, target) in changes.items():
            if cid not in cited:
                report.problems.append(Problem(None, "unaudited", f"change {cid} ({action} {target}) has no audit entry"))
    if head_size is not None and head_size > n:
        report.problems.append(Problem(n, "truncated", f"the log holds {n} entries but its head records {head_size}:"
                                                         f" entries {n}..{head_size - 1} were deleted"))
    for note in notes:
        report.checkpoints += 1
        if verifier is None:
            report.problems.append(Problem(None, "checkpoint", "a checkpoint was given without a public key to check it"))
            continue
        try:
            cp = open_checkpoint(note, verifier)
        except NoteError as exc:
            report.problems.append(Problem(None, "checkpoint", f"checkpoint rejected: {exc}"))
            continue
        if origin is not None and cp.origin != origin:
            report.problems.append(Problem(None, "checkpoint", f"checkpoint is for origin {cp.origin!r}, not {origin!r}"))
        elif cp.size > n:
            report.problems.append(Problem(n, "truncated", f"a signed checkpoint covers {cp.size} entries but the log holds"
                                                             f" {n}: entries {n}..{cp.size - 1} were deleted"))
        elif cp.size > 0 and roots[cp.size - 1] != cp.root:
            report.problems.append(Problem(cp.size - 1, "altered", f"the entries below {cp.size} differ from the signed"
                                                                     " checkpoint of that size: the log was rewritten"))
        elif cp.size == 0 and cp.root != merkle.EMPTY_ROOT:
            report.problems.append(Problem(None, "checkpoint", "an empty checkpoint with a non-empty root"))
    return report
