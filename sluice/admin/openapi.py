"""The control plane's contract as an OpenAPI 3.1 document, generated from the endpoint table.

Paths, methods and required scopes come from ``AdminApi.endpoints()``; request bodies and
query parameters from the msgspec structs each action declares with ``@accepts``; schemas
from ``msgspec.json.schema_components``. Nothing is written by hand, so the document cannot
drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from ..core.errors import ErrorEnvelope as Error

F = TypeVar("F", bound=Callable[..., Any])
_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"{(\w+)}")


def accepts(body: type | None = None, *, query: type | None = None,
            content_types: tuple[str, ...] = ("application/json",)) -> Callable[[F], F]:
    """Declare the body struct, the query struct and the reply types of a control-plane action."""

    def mark(fn: F) -> F:
        fn.body_type = body  # type: ignore[attr-defined]
        fn.query_type = query  # type: ignore[attr-defined]
        fn.content_types = content_types  # type: ignore[attr-defined]
        return fn

    return mark


def _query_parameters(query: type | None) -> list[dict[str, Any]]:
    if query is None:
        return []
    (ref,), comps = msgspec.json.schema_components([query], ref_template=_REF)
    schema = comps[ref["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema["properties"].items()]


def document(endpoints: Iterable[tuple[str, str, tuple[str, ...], Callable[..., Any]]], *,
             title: str = "sluice control plane", version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document for the given ``(method, path, scopes, action)`` table."""
    endpoints = list(endpoints)
    bodies = {getattr(fn, "body_type", None) for *_, fn in endpoints} - {None}
    body_refs, components = msgspec.json.schema_components([Error, *sorted(bodies, key=lambda t: t.__name__)],
                                                           ref_template=_REF)
    ref_of = dict(zip([Error, *sorted(bodies, key=lambda t: t.__name__)], body_refs))
    error = {"description": "An OpenAI-shaped error.", "content": {"application/json": {"schema": ref_of[Error]}}}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, scopes, fn in endpoints:
        body = getattr(fn, "body_type", None)
        op: dict[str, Any] = {
            "operationId": fn.__name__,
            "summary": (fn.__doc__ or fn.__name__.replace("_", " ")).strip().splitlines()[0],
            "security": [{"bearer": list(scopes)}],
            "x-required-scopes": list(scopes),
            "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                           for name in _PARAM.findall(path)]
                          + _query_parameters(getattr(fn, "query_type", None)),
            "responses": {
                "2XX": {"description": "Success.",
                        "content": {ct: {"schema": {}} for ct in getattr(fn, "content_types", ("application/json",))}},
                "default": error,
            },
        }
        if body is not None:
            needed = any(f.required for f in msgspec.structs.fields(body))  # else an absent body means {}
            op["requestBody"] = {"required": needed, "content": {"application/json": {"schema": ref_of[body]}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "A control-plane key (sla_...)."}}},
    }
