"""``multipart/form-data`` as the ``openai`` SDK sends ``files.create``: the ``purpose`` field and the ``file`` part."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from ..core.errors import InvalidRequest, UnsupportedMediaType


class Form:
    """The fields of a form (text) and its file part (name and bytes)."""

    __slots__ = ("fields", "filename", "data")

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.data: bytes | None = None


def parse_form(content_type: str | None, body: bytes) -> Form:
    """The form of a request body; 415 when it is not multipart, 400 when it does not parse."""
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType("Upload a file as multipart/form-data with the fields 'purpose' and 'file'.",
                                   code="unsupported_media_type")
    form = Form()
    state: dict = {"field": b"", "value": b"", "headers": {}, "pieces": []}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_begin() -> None:
        state["headers"], state["pieces"] = {}, []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["pieces"].append(data[start:end])

    def on_part_end() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        value = b"".join(state["pieces"])
        if b"filename" in disp:
            if name == "file":
                form.filename = disp[b"filename"].decode("utf-8", "replace")[:512] or "upload.jsonl"
                form.data = value
        elif name:
            form.fields[name] = value.decode("utf-8", "replace")
        state["pieces"] = []

    parser = MultipartParser(boundary, {  # type: ignore[arg-type]
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end})
    try:
        parser.write(body)
        parser.finalize()
    except Exception:
        raise InvalidRequest("The multipart body does not parse.", code="invalid_multipart") from None
    return form
