"""A tool's argument schema in the plain shape most tools have, compiled once into a check of a few dict lookups.

``jsonschema``'s validator walks the schema on every call (its keywords, paths and error objects): 4-6 µs for a
one-property object. Most tool schemas use only ``type``, ``properties``, ``required``, boolean
``additionalProperties`` and ``items``, with annotations beside them; ``compile_plain`` turns such a schema into
a function that says whether a value is valid, with Draft 2020-12's meaning of each keyword (an ``integer`` is
also a float with no fraction, a boolean is no number, object keywords ignore what is not an object). A schema
with any other keyword (``$ref``, ``enum``, ``pattern``, bounds, combinators, ``$schema``, ...) is not compiled:
``jsonschema`` judges it, as before. The check only accepts: a value it does not accept is judged by
``jsonschema``, which decides and words the refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]
# keywords that assert nothing under Draft 2020-12 without a format checker (sluice's validator has none)
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
                          "writeOnly", "format", "contentMediaType", "contentEncoding"})
_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items"}) | _ANNOTATIONS


def _integer(v: Any) -> bool:
    t = type(v)
    return t is int or (t is float and v.is_integer())


_TYPES: dict[str, Check] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "integer": _integer,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def compile_plain(schema: Any) -> Check | None:
    """The check of a plain schema, or None when the schema is not plain (``jsonschema`` judges it)."""
    if schema is True or schema == {}:
        return lambda v: True
    if type(schema) is not dict or not schema.keys() <= _KEYWORDS:
        return None
    checks: list[Check] = []
    if "type" in schema:
        names = schema["type"] if type(schema["type"]) is list else [schema["type"]]
        if not names or any(type(n) is not str or n not in _TYPES for n in names):
            return None
        kinds = [_TYPES[n] for n in names]
        checks.append(kinds[0] if len(kinds) == 1 else lambda v: any(k(v) for k in kinds))
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if type(props) is not dict or type(required) is not list or any(type(r) is not str for r in required):
        return None
    if type(extra) is not bool:
        return None
    inner: dict[str, Check] = {}
    for name, sub in props.items():
        got = compile_plain(sub)
        if got is None:
            return None
        inner[name] = got
    if inner or required or not extra:
        allowed = frozenset(props)

        def obj(v: Any) -> bool:
            if type(v) is not dict:
                return True  # object keywords say nothing of other values
            for name in required:
                if name not in v:
                    return False
            if not extra and not v.keys() <= allowed:
                return False
            for name, check in inner.items():
                if name in v and not check(v[name]):
                    return False
            return True

        checks.append(obj)
    if "items" in schema:
        item = compile_plain(schema["items"])
        if item is None:
            return None

        def arr(v: Any) -> bool:
            return type(v) is not list or all(item(x) for x in v)

        checks.append(arr)
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(c(v) for c in checks)
