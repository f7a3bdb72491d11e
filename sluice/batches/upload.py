"""``POST /v1/files`` as the ``openai`` SDK sends ``files.create``: a ``multipart/form-data`` body with the
``purpose`` field (and ``expires_after``) and the ``file`` part, read as it arrives. The file is checked line by
line (``UploadCheck``) and written to the store a chunk at a time, so an upload of any size holds about one chunk
in memory; its row is written last, so until then it is no file, and a refusal drops the chunks it wrote."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from ..core import clock
from ..core.errors import InvalidRequest, UnsupportedMediaType
from ..core.exchange import Exchange, Reply
from .records import CHUNK, upload_id
from .validate import MAX_FILE_BYTES, UploadCheck

MAX_FIELD_BYTES = 64 * 1024  # a text field of the form (``purpose``, ``expires_after[...]``)
EXPIRES_MIN_S, EXPIRES_MAX_S = 3600, 30 * 86_400  # OpenAI's bounds of ``expires_after.seconds``


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created_at"]),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed",
            "expires_at": int(row["expires_at"]) if row.get("expires_at") is not None else None,
            "status_details": None}


class FormStream:
    """A multipart body fed piece by piece: its text fields as they end, and the ``file`` part's bytes as they
    come (``write`` returns them); 415 when the body is not multipart, 400 when it does not parse."""

    def __init__(self, content_type: str | None) -> None:
        kind, params = parse_options_header(content_type or "")
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise UnsupportedMediaType("Upload a file as multipart/form-data with the fields 'purpose' and 'file'.",
                                       code="unsupported_media_type")
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.has_file = False
        self._out: list[bytes] = []
        self._field, self._value, self._headers = b"", b"", {}  # type: ignore[var-annotated]
        self._part: str | None = None  # "file", "field:<name>", or None (a part dropped)
        self._text = bytearray()
        self._parser = MultipartParser(boundary, {  # type: ignore[arg-type]
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._hfield, "on_header_value": self._hvalue, "on_header_end": self._hend,
            "on_headers_finished": self._headers_done})

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _begin(self) -> None:
        self._headers, self._part, self._text = {}, None, bytearray()

    def _headers_done(self) -> None:
        _, disp = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp:
            if name == "file" and not self.has_file:
                self.has_file = True
                self.filename = disp[b"filename"].decode("utf-8", "replace")[:512] or "upload.jsonl"
                self._part = "file"
        elif name:
            self._part = "field:" + name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._out.append(data[start:end])
        elif self._part is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"The form field {self._part[6:64]!r} exceeds {MAX_FIELD_BYTES} bytes.",
                                     code="invalid_multipart")

    def _end(self) -> None:
        if self._part is not None and self._part != "file":
            self.fields[self._part[6:]] = self._text.decode("utf-8", "replace")

    def write(self, piece: bytes) -> list[bytes]:
        try:
            self._parser.write(piece)
        except InvalidRequest:
            raise
        except Exception:
            raise InvalidRequest("The multipart body does not parse.", code="invalid_multipart") from None
        out, self._out = self._out, []
        return out

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except Exception:
            raise InvalidRequest("The multipart body does not parse.", code="invalid_multipart") from None


def _purpose(form: FormStream) -> None:
    purpose = form.fields.get("purpose")
    if purpose != "batch":
        raise InvalidRequest(f"purpose must be 'batch' (got {str(purpose)[:64]!r}): this gateway keeps batch input "
                             "files only.", param="purpose", code="invalid_purpose")


def _expires_after(fields: dict[str, str], default_s: float) -> float:
    """Seconds from ``created_at`` to the file's expiry: OpenAI's ``expires_after``, else the default."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return default_s
    if anchor != "created_at":
        raise InvalidRequest("expires_after.anchor must be 'created_at'.", param="expires_after.anchor",
                             code="invalid_expires_after")
    if seconds is None or not seconds.isdigit() or not EXPIRES_MIN_S <= int(seconds) <= EXPIRES_MAX_S:
        raise InvalidRequest(f"expires_after.seconds must be an integer from {EXPIRES_MIN_S} to {EXPIRES_MAX_S}.",
                             param="expires_after.seconds", code="invalid_expires_after")
    return float(seconds)


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body


class Upload:
    """The route: authenticated from the headers before the body is read (``check_headers``), its own body
    limit (a batch input file is larger than a model call's body), the body taken as it arrives."""

    max_body = MAX_FILE_BYTES + 64 * 1024  # the form's other parts and boundaries around the file

    def __init__(self, endpoints: Any) -> None:
        self._e = endpoints

    async def check_headers(self, ex: Exchange) -> None:
        await self._e.owner(ex, "files")

    async def __call__(self, ex: Exchange) -> Reply:
        """A body that arrived whole before it was asked for (a small file)."""
        return await self.stream_body(ex, _one(ex.body))

    async def stream_body(self, ex: Exchange, pieces: AsyncIterator[bytes]) -> Reply:
        p = await self._e.owner(ex, "files")
        form = FormStream(ex.headers.get("content-type"))
        check = UploadCheck(self._e.max_line_bytes)
        records = self._e.records
        now = clock.now()
        fid = upload_id(now)
        buf, seq = bytearray(), 0
        try:
            async for piece in pieces:
                for data in form.write(piece):
                    if seq == 0 and not buf:
                        _purpose(form)  # the SDK sends the fields first: a wrong purpose stores nothing
                    check.feed(data)
                    buf += data
                    while len(buf) >= CHUNK:
                        await records.put_chunk(fid, seq, bytes(buf[:CHUNK]))
                        del buf[:CHUNK]
                        seq += 1
            form.finish()
            _purpose(form)
            if not form.has_file:
                raise InvalidRequest("The form has no 'file' part.", param="file", code="missing_file")
            check.end()
            expires_at = now + _expires_after(form.fields, self._e.retention_s)
            if buf or seq == 0:
                await records.put_chunk(fid, seq, bytes(buf))
                seq += 1
            row = {"id": fid, "identity_id": p.identity_id, "purpose": "batch", "filename": form.filename,
                   "bytes": check.size, "created_at": now, "expires_at": expires_at}
            await records.commit_upload(row)
        except BaseException:
            if seq:  # nothing half-written: the chunks it wrote go (past a store outage, the purge takes them)
                with contextlib.suppress(Exception):
                    await asyncio.shield(records.drop_chunks(fid))
            raise
        return Reply.json(file_object(row))
