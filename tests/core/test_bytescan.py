"""The stream paths' compiled byte scans (sluice/core/bytescan.c) give exactly their pure-Python twins'
answers, on the shapes streams have and on hostile bytes, and CI runs the compiled ones."""

from __future__ import annotations

import json
import os

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.core import bytescan

compiled = pytest.mark.skipif(not bytescan.COMPILED and os.environ.get("CI") != "true",
                              reason="the extension is not built here (a checkout on PYTHONPATH)")


def test_ci_runs_the_compiled_scans() -> None:
    """A build that silently fell back to the twins would cost every stream; in CI that is a failure."""
    if os.environ.get("CI") != "true" and not bytescan.COMPILED:
        pytest.skip("not built here; `pip install -e .` builds it")
    assert bytescan.COMPILED
    assert bytescan.replace is not bytescan.py_replace and bytescan.reframe is not bytescan.py_reframe


SSE_BYTES = st.lists(st.sampled_from([b"data:", b"data: ", b"\n", b"\n\n", b"x", b"{}", b"event: e", b":", b"\r"]),
                     max_size=30).map(b"".join)


@compiled
@settings(max_examples=500)
@given(SSE_BYTES)
def test_sse_events_equals_its_twin(block: bytes) -> None:
    assert bytescan.sse_events(block) == bytescan.py_sse_events(block)


@compiled
@settings(max_examples=500)
@given(st.binary(max_size=200), st.binary(min_size=1, max_size=8), st.binary(max_size=12))
def test_replace_equals_bytes_replace(data: bytes, old: bytes, new: bytes) -> None:
    data = data.join([b"", old, b"x", old + old])  # the needle present, adjacent and at the ends
    assert bytescan.replace(data, old, new) == data.replace(old, new)


P = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":'
S = b'},"finish_reason":null}]}\n\n'
OP, OS = b'event: content_block_delta\ndata: {"index":3,"delta":{"text":', b"}}\n\n"
_str = msgspec.json.Decoder(str)

# texts as JSON strings: escaped or not, astral characters as surrogate pairs, and strings that are not
# one JSON string (raw quotes and controls, bad escapes, lone surrogates, bad UTF-8, empty)
TEXT = st.text(min_size=0, max_size=8)
GOOD = st.one_of(TEXT.map(lambda t: json.dumps(t).encode()),
                 TEXT.map(lambda t: json.dumps(t, ensure_ascii=False).encode("utf-8", "surrogatepass")))
BAD = st.sampled_from([b'"a"b"', b'"a\x01"', b'"\\x"', b'"\\ud800"', b'"\\udc00x"', b'"\\ud83d\\u0041"',
                       b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"\xf4\x90\x80\x80"', b'"ab\\"', b'""',
                       b'"\\u12"', b'7', b'"a","x":"b"', b'"\xe2\x82"'])
EVENT = st.one_of(GOOD.map(lambda t: P + t + S), GOOD.map(lambda t: P + t + S),
                  BAD.map(lambda t: P + t + S),
                  st.just(b'data: {"choices":[]}\n\n'), GOOD.map(lambda t: P + t + b'},"finish_reason":"stop"}]}\n\n'))


def _expected(block: bytes) -> tuple[bytes, int] | None:
    """The leading run by the definition: each event P + one non-empty JSON string + S, until one is not."""
    out, pos = [], 0
    while block.startswith(P, pos):
        end = block.find(b"\n\n", pos) + 2
        text = block[pos + len(P):end - len(S)] if block[pos:end].endswith(S) else b""
        try:
            ok = text.startswith(b'"') and _str.decode(text) != ""
        except msgspec.DecodeError:
            ok = False
        if not ok:
            break
        out.append(OP + text + OS)
        pos = end
    return (b"".join(out), pos) if out else None


@compiled
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT, max_size=12))
def test_reframe_takes_exactly_the_leading_run_of_text_events(events: list[bytes]) -> None:
    """Compiled: the run of well-formed text events a block opens with, nothing past the first that is not
    one. The twin, when it answers, answers the same (it takes a whole block or nothing)."""
    block = b"".join(events)
    want = _expected(block)
    assert bytescan.reframe(block, P, S, OP, OS) == want
    twin = bytescan.py_reframe(block, P, S, OP, OS)
    assert twin is None or twin == want


@compiled
@pytest.mark.parametrize("text", [b'"a"b"', b'"\\ud800"', b'"\xff"', b'"ab\\"', b'""', b'"\\q"'],
                         ids=["a-raw-quote", "a-lone-surrogate", "bad-utf-8", "an-escaped-closing-quote", "empty", "bad-escape"])
def test_reframe_stops_at_a_text_that_is_not_one_json_string(text: bytes) -> None:
    good = P + b'"ok \\"fine\\" \\ud83d\\ude00 \xc3\xa9"' + S
    block = good + P + text + S + good
    assert bytescan.reframe(block, P, S, OP, OS) == (OP + good[len(P):-len(S)] + OS, len(good))
