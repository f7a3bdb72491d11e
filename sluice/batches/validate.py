"""What a batch input file must be: JSONL at upload (each line a JSON object, bounded), and at create each
line a request this batch may run (its own ``custom_id``, the batch's endpoint, no stream, a model in the
owner's scopes). Every problem names its line, numbered from 1 as an editor shows it."""

from __future__ import annotations

from typing import Any

import msgspec

from ..core.errors import InvalidRequest

MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_CUSTOM_ID = 512
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")

_decode = msgspec.json.decode


def lines_of(data: bytes) -> list[tuple[int, bytes]]:
    """(line number, bytes) of the non-blank lines."""
    return [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]


class UploadCheck:
    """A batch input file checked as its bytes arrive (``feed``, then ``end``): JSONL, every line a JSON object,
    at most ``max_line_bytes`` each, at most ``MAX_LINES`` and ``MAX_FILE_BYTES``; a 400 naming the first line
    that is not, as soon as it is seen (a line too long before it is whole). What makes a line a request this
    batch may run (its ``custom_id``, url, stream, model) is checked at create, where a bad line fails the batch
    with an error file naming every one, as OpenAI does."""

    __slots__ = ("max_line_bytes", "size", "count", "_n", "_rest")

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.size = 0  # bytes fed
        self.count = 0  # requests seen
        self._n = 0  # lines ended so far (blank ones too): the next line is number _n + 1
        self._rest = bytearray()  # the line still arriving

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > MAX_FILE_BYTES:
            raise InvalidRequest(f"The file exceeds {MAX_FILE_BYTES} bytes.", code="file_too_large", param="file")
        at = 0
        while (nl := piece.find(b"\n", at)) >= 0:
            if self._rest:
                self._rest += piece[at:nl]
                line, self._rest = bytes(self._rest), bytearray()
            else:
                line = piece[at:nl]
            self._line(line)
            at = nl + 1
        self._rest += piece[at:]
        if len(self._rest) > self.max_line_bytes:
            self._too_long(self._n + 1, len(self._rest), False)

    def end(self) -> int:
        """The file is whole: the number of requests it holds, or the 400 of an empty one."""
        if self._rest:
            line, self._rest = bytes(self._rest), bytearray()
            self._line(line)
        if not self.count:
            raise InvalidRequest("The file holds no requests: a batch input file is JSONL, one request per line.",
                                 code="invalid_file", param="file")
        return self.count

    def _too_long(self, n: int, size: int, whole: bool) -> None:
        raise InvalidRequest(f"Line {n} is {'' if whole else 'at least '}{size} bytes; a request "
                             f"line may be at most {self.max_line_bytes}.", code="line_too_large", param="file")

    def _line(self, line: bytes) -> None:
        self._n += 1
        n = self._n
        if not line.strip():
            return
        if len(line) > self.max_line_bytes:
            self._too_long(n, len(line), True)
        self.count += 1
        if self.count > MAX_LINES:
            raise InvalidRequest(f"The file holds more than {MAX_LINES} requests; a batch takes at most {MAX_LINES}.",
                                 code="too_many_requests", param="file")
        try:
            obj = _decode(line)
        except msgspec.DecodeError:
            raise InvalidRequest(f"Line {n} is not valid JSON: a batch input file is JSONL, one request per line.",
                                 code="invalid_jsonl", param="file") from None
        if not isinstance(obj, dict):
            raise InvalidRequest(f"Line {n} is not a JSON object.", code="invalid_jsonl", param="file")


def check_lines(data: bytes, endpoint: str, allows: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines as rows to run (idx, custom_id, body), and the errors that fail the batch (each naming its line).
    ``allows(model)``: whether the owner may call that model."""
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}

    def bad(n: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": n})

    for idx, (n, line) in enumerate(lines_of(data)):
        try:
            obj = _decode(line)
        except msgspec.DecodeError:
            bad(n, "invalid_json_line", f"Line {n} is not valid JSON.")
            continue
        if not isinstance(obj, dict):
            bad(n, "invalid_json_line", f"Line {n} is not a JSON object.")
            continue
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
            bad(n, "invalid_custom_id", f"Line {n}: custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters.",
                "custom_id")
            continue
        if cid in seen:
            bad(n, "duplicate_custom_id", f"Line {n}: custom_id {cid[:64]!r} is already used on line {seen[cid]}.",
                "custom_id")
            continue
        seen[cid] = n
        if obj.get("method", "POST") != "POST":
            bad(n, "invalid_method", f"Line {n}: method must be POST.", "method")
            continue
        if obj.get("url") != endpoint:
            bad(n, "invalid_url", f"Line {n}: url must be this batch's endpoint {endpoint}.", "url")
            continue
        body = obj.get("body")
        if not isinstance(body, dict):
            bad(n, "invalid_body", f"Line {n}: body must be a JSON object.", "body")
            continue
        if body.get("stream") is True:
            bad(n, "invalid_stream", f"Line {n}: a batch request cannot stream (stream: true).", "body.stream")
            continue
        model = body.get("model")
        if not isinstance(model, str) or not allows(model):
            bad(n, "model_not_found", f"Line {n}: the model {str(model)[:128]!r} does not exist or you do not have "
                                      "access to it.", "body.model")
            continue
        rows.append({"idx": idx, "custom_id": cid, "body": msgspec.json.encode(body).decode(), "state": "pending"})
    return rows, errors
