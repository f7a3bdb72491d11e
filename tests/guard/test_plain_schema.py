"""A plain argument schema's quick check (``sluice.guard.plain_schema``) says exactly what ``jsonschema`` says of
every JSON value; a schema outside the plain shape is not compiled (``jsonschema`` judges it)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st
from jsonschema import Draft202012Validator

from sluice.guard.plain_schema import compile_plain

TYPES = ["object", "array", "string", "integer", "number", "boolean", "null"]
NAMES = st.sampled_from(["a", "b", "city", "n"])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, -2.0, 1.5, 1e300])
                    | st.sampled_from(["", "x", "Oslo"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3), max_leaves=8)


def _schema(inner):
    return st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True),
        "properties": st.dictionaries(NAMES, inner, max_size=3),
        "required": st.lists(NAMES, max_size=2, unique=True),
        "additionalProperties": st.booleans(),
        "items": inner,
        "description": st.just("what it is"),
        "format": st.just("email"),  # an annotation: no format checker asserts it
    })


SCHEMAS = st.recursive(st.just({}) | st.just(True), _schema, max_leaves=6)


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS, values=st.lists(JSON, min_size=1, max_size=6))
def test_the_quick_check_agrees_with_jsonschema_on_every_value(schema, values):
    check = compile_plain(schema)
    assert check is not None, schema
    validator = Draft202012Validator(schema)
    for value in values:
        assert check(value) == validator.is_valid(value), (schema, value)


def test_the_cases_that_differ_between_languages_are_jsonschemas():
    check = compile_plain({"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}},
                           "required": ["n"], "additionalProperties": False})
    assert check is not None
    assert check({"n": 1}) and check({"n": 1.0}) and check({"n": -0.0, "x": 2})  # an integer may be spelled 1.0
    assert not check({"n": True}) and not check({"n": 1, "x": False})  # a boolean is no number
    assert not check({"n": 1.5}) and not check({}) and not check({"n": 1, "y": 2})
    assert check([1]) is False  # not an object


def test_a_schema_outside_the_plain_shape_is_left_to_jsonschema():
    for schema in [{"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}}, {"enum": [1, 2]},
                   {"type": "string", "pattern": "^a"}, {"type": "string", "minLength": 2}, {"anyOf": [{}]},
                   {"properties": {"a": {"const": 1}}}, {"additionalProperties": {"type": "string"}},
                   {"items": False}, {"type": "decimal"}, {"type": []}, {"$schema": "http://json-schema.org/draft-07/schema#"},
                   {"required": "a"}, False, {"prefixItems": [{}]}]:
        assert compile_plain(schema) is None, schema
