"""``/v1/files`` and ``/v1/batches`` as the ``openai`` SDK calls them. Every file and batch is its owner
identity's: another identity's id is answered exactly as an unknown one (404)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import msgspec

from ..core import clock
from ..core.errors import InvalidRequest, NotFound
from ..core.exchange import Exchange, Reply, StreamReply
from .records import LIVE, BatchRecords
from .upload import Upload, file_object
from .usage import summed
from .validate import ENDPOINTS, check_lines

Identify = Callable[[Exchange], Awaitable[Any]]  # the caller's principal as the data plane authenticates it, or 401
WINDOW_S = 24 * 3600.0
MAX_ERRORS_SHOWN = 1000  # ``errors.data`` of a batch failed at validation; the error file names every line


class CreateBatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/batches``."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


_create = msgspec.json.Decoder(CreateBatch)


def _page(items: list[dict[str, Any]], limit: int) -> Reply:
    more = len(items) > limit
    items = items[:limit]
    return Reply.json({"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                       "last_id": items[-1]["id"] if items else None, "has_more": more})


def _limit(ex: Exchange) -> int:
    raw = ex.query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("limit must be an integer from 1 to 100.", param="limit")
    return int(raw)


class Endpoints:
    """The handlers of both resources, over the store's rows."""

    def __init__(self, identify: Identify, records: BatchRecords, max_line_bytes: int,
                 wake: Callable[[], None] = lambda: None, stop: Callable[[str], None] = lambda _: None,
                 handlers: frozenset[str] = frozenset(ENDPOINTS), *, retention_s: float = 30 * 86_400.0) -> None:
        self._identify = identify
        self.retention_s = retention_s
        self.records = records
        self.max_line_bytes = max_line_bytes
        self._wake = wake
        self._stop = stop
        self._endpoints = handlers
        self.upload = Upload(self)

    async def owner(self, ex: Exchange, name: str) -> Any:
        return await self._identify(ex)

    def routes(self) -> list[tuple[str, str, object]]:
        return [("POST", "/v1/files", self.upload), ("GET", "/v1/files", self.list_files),
                ("GET", "/v1/files/{file_id}", self.get_file), ("DELETE", "/v1/files/{file_id}", self.delete_file),
                ("GET", "/v1/files/{file_id}/content", self.content),
                ("POST", "/v1/batches", self.create), ("GET", "/v1/batches", self.list_batches),
                ("GET", "/v1/batches/{batch_id}", self.get_batch),
                ("POST", "/v1/batches/{batch_id}/cancel", self.cancel)]

    # -- files ------------------------------------------------------------------------------

    async def _file(self, ex: Exchange) -> tuple[Any, dict[str, Any]]:
        p = await self.owner(ex, "files")
        fid = ex.params["file_id"]
        row = await self.records.file(fid, p.identity_id)
        if row is None:
            raise NotFound(f"No such File object: {fid[:128]}", param="file_id", code="not_found")
        return p, row

    async def get_file(self, ex: Exchange) -> Reply:
        return Reply.json(file_object((await self._file(ex))[1]))

    async def delete_file(self, ex: Exchange) -> Reply:
        p, row = await self._file(ex)
        await self.records.delete_file(row["id"], p.identity_id)
        return Reply.json({"id": row["id"], "object": "file", "deleted": True})

    async def content(self, ex: Exchange) -> StreamReply:
        _, row = await self._file(ex)
        chunks: AsyncGenerator[bytes, None] = self.records.content(row["id"])  # type: ignore[assignment]
        return StreamReply(chunks, content_type="application/octet-stream")

    async def list_files(self, ex: Exchange) -> Reply:
        p = await self.owner(ex, "files")
        limit = _limit(ex)
        rows = await self.records.files(p.identity_id, limit + 1, ex.query.get("after"), ex.query.get("purpose"))
        return _page([file_object(r) for r in rows], limit)

    # -- batches ----------------------------------------------------------------------------

    async def _batch_object(self, row: dict[str, Any]) -> dict[str, Any]:
        total, completed, failed = row["total"], row["completed"], row["failed"]
        if row["status"] in LIVE:  # counted from the lines while it runs
            n = await self.records.counts(row["id"])
            completed, failed = n.get("ok", 0), n.get("error", 0)
            usage = summed(await self.records.answers(row["id"])) if completed or failed else summed(())
        else:
            usage = msgspec.json.decode(row["usage"]) if row.get("usage") else summed(await self.records.answers(row["id"]))
        at = {f"{s}_at": (int(row[f"{s}_at"]) if row.get(f"{s}_at") is not None else None)
              for s in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")}
        return {"id": row["id"], "object": "batch", "endpoint": row["endpoint"],
                "errors": msgspec.json.decode(row["errors"]) if row.get("errors") else None,
                "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
                "status": row["status"], "output_file_id": row.get("output_file_id"), "error_file_id": row.get("error_file_id"),
                "created_at": int(row["created_at"]), "expires_at": int(row["expires_at"]), **at,
                "request_counts": {"total": total, "completed": completed, "failed": failed}, "usage": usage,
                "metadata": msgspec.json.decode(row["metadata"]) if row["metadata"] else None}

    async def _batch(self, ex: Exchange) -> dict[str, Any]:
        p = await self.owner(ex, "batches")
        bid = ex.params["batch_id"]
        row = await self.records.batch(bid, p.identity_id)
        if row is None:
            raise NotFound(f"No batch found with id '{bid[:128]}'.", param="batch_id", code="not_found")
        return row

    async def get_batch(self, ex: Exchange) -> Reply:
        return Reply.json(await self._batch_object(await self._batch(ex)))

    async def list_batches(self, ex: Exchange) -> Reply:
        p = await self.owner(ex, "batches")
        limit = _limit(ex)
        rows = await self.records.batches(p.identity_id, limit + 1, ex.query.get("after"))
        return _page([await self._batch_object(r) for r in rows], limit)

    async def cancel(self, ex: Exchange) -> Reply:
        row = await self._batch(ex)
        if await self.records.move(row["id"], ("validating", "in_progress"), "cancelling", cancelling_at=clock.now()):
            self._stop(row["id"])
            self._wake()
            row = await self.records.batch(row["id"]) or row
        return Reply.json(await self._batch_object(row))

    async def create(self, ex: Exchange) -> Reply:
        p = await self.owner(ex, "batches")
        try:
            req = _create.decode(ex.body)
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"Invalid batch request: {exc}", code="invalid_request") from None
        if req.endpoint not in self._endpoints:
            raise InvalidRequest(f"endpoint must be one of {', '.join(sorted(self._endpoints))}.", param="endpoint")
        if req.completion_window != "24h":
            raise InvalidRequest("completion_window must be '24h'.", param="completion_window")
        if req.metadata is not None and len(req.metadata) > 16:
            raise InvalidRequest("metadata holds at most 16 pairs.", param="metadata")
        f = await self.records.file(req.input_file_id, p.identity_id)
        if f is None:
            raise NotFound(f"No such File object: {req.input_file_id[:128]}", param="input_file_id", code="not_found")
        if f["purpose"] != "batch":
            raise InvalidRequest("The input file's purpose must be 'batch'.", param="input_file_id")
        data = b"".join([c async for c in self.records.content(f["id"])])
        rows, errors = check_lines(data, req.endpoint, p.scopes.allows)
        now = clock.now()
        bid = f"batch_{secrets.token_hex(16)}"
        row: dict[str, Any] = {
            "id": bid, "identity_id": p.identity_id, "identity_name": p.identity_name, "endpoint": req.endpoint,
            "input_file_id": f["id"], "completion_window": "24h", "created_at": now, "expires_at": now + WINDOW_S,
            "total": len(rows), "completed": 0, "failed": 0, "status": "validating",
            "metadata": msgspec.json.encode(req.metadata).decode() if req.metadata is not None else None}
        files = []
        if errors:  # the batch fails validation: nothing runs; the error file names every bad line
            err = b"".join(msgspec.json.encode({"line": e["line"], "error": {k: e[k] for k in ("code", "message", "param")}})
                           + b"\n" for e in errors)
            efid = f"file-error-{bid.removeprefix('batch_')}"
            files.append(({"id": efid, "identity_id": p.identity_id, "purpose": "batch_output",
                           "filename": f"{bid}_error.jsonl", "bytes": len(err), "created_at": now,
                           "expires_at": now + self.retention_s}, err))
            row.update(status="failed", failed_at=now, total=0, error_file_id=efid, errors=msgspec.json.encode(
                {"object": "list", "data": errors[:MAX_ERRORS_SHOWN]}).decode())
            rows = []
        for r in rows:
            r["batch_id"] = bid
        await self.records.create(row, rows, files)
        self._wake()
        return Reply.json(await self._batch_object(row))
