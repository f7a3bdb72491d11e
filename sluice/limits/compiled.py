"""The limiter's per-request arithmetic, compiled: one straight-line function per shape.

Written out as a loop, a plan's checks cost a kind dispatch and half a dozen loads per check
per request, which on the embedded default was most of what limits cost (bench/README.md).
So, once per *shape* (the kinds, limits, rates and measures of a plan's checks), this module
writes the source of a function that does exactly that work with the constants inlined, and
compiles it. What differs between plans of one shape (the counter cells) is bound in by
``bind(*cells)``, so every identity under the same rules shares one code object, and the
amount of compiled code is bounded by the rules, not by the traffic.

- ``take(request_id, amounts, now, ttl)``: if the request fits every check, take its amounts
  and return what remains per check; else return the index of the first check that does
  not fit, having taken nothing.
- ``give(request_id, deltas, now)``: settle (give back or take more; end the lease).
- ``admit(request_id, amounts, now, ttl)``: ``take``, answering with the ``x-ratelimit-*``
  headers instead of what remains (the embedded request path: one call).
- ``render(remaining)``: those headers from what remains (an admission by Redis).

The semantics are those of ``MemoryBackend._explain`` and of the Redis scripts; the tests run
the same suite against both backends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checks import CONCURRENCY, REQUESTS

_cache: dict[tuple, Any] = {}


def _cached(shape: tuple, build: Callable[[Any], Any]) -> Any:
    hit = _cache.get(shape)
    if hit is None:
        if len(_cache) >= 4096:  # bounded: shapes come from the rules, which can change at run time
            _cache.clear()
        hit = _cache[shape] = build(shape[1])
    return hit


def _compile(name: str, lines: list[str]) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), f"<sluice.limits {name}>", "exec"), namespace)  # noqa: S102  # our own source
    return namespace[name]


def bound(shape: tuple, headers: tuple) -> Callable[..., tuple[Callable[..., Any], ...]]:
    """``bind(*cells)``: the compiled ``take``, ``give`` and ``admit`` for checks of this shape
    ((kind, limit, rate, measure, window) each) and header families, bound to one plan's cells."""
    return _cached(("bind", (shape, headers)), _build_bind)  # type: ignore[no-any-return]


def _build_bind(key: tuple) -> Callable[..., tuple[Callable[..., Any], ...]]:
    shape, headers = key
    cells = ", ".join(f"c{i}" for i in range(len(shape)))
    decide: list[str] = []
    apply: list[str] = []
    remaining: list[str] = []
    settle: list[str] = []
    for i, (kind, limit, rate, measure, window) in enumerate(shape):
        if kind == "bucket":
            decide += [f"x{i} = c{i}.level + (now - c{i}.ts) * {rate!r}",
                       f"if x{i} > {limit!r}: x{i} = {limit!r}",
                       f"x{i} -= a[{measure}]",
                       f"if x{i} < 0.0: return {i}"]
            apply += [f"c{i}.level = x{i}", f"c{i}.ts = now"]
            remaining.append(f"x{i}")
            if measure not in (REQUESTS, CONCURRENCY):  # those settle at zero: nothing to give back
                settle += [f"d = deltas[{measure}]",
                           "if d:",
                           f"    y = c{i}.level + (now - c{i}.ts) * {rate!r}",
                           f"    y = (y if y < {limit!r} else {limit!r}) - d",
                           f"    c{i}.level = y if y < {limit!r} else {limit!r}",
                           f"    c{i}.ts = now"]
        elif kind == "lease":
            decide += [f"v{i} = c{i}.live",
                       f"if len(v{i}) >= {limit!r} and c{i}.expire(now) >= {limit!r}: return {i}"]
            apply.append(f"v{i}[rid] = now + ttl['lease']")
            remaining.append(f"{limit!r} - len(v{i})")
            settle.append(f"c{i}.live.pop(rid, None)")
        else:  # a sum over a calendar window
            decide += [f"x{i} = c{i}.value + a[{measure}] if c{i}.ends > now else a[{measure}]",
                       f"if x{i} > {limit!r}: return {i}"]
            apply += [f"if c{i}.ends <= now: c{i}.ends = now + ttl[{window!r}]", f"c{i}.value = x{i}"]
            remaining.append(f"{limit!r} - x{i}")
            settle += [f"d = deltas[{measure}]", f"if d and c{i}.ends > now: c{i}.value += d"]
    render, rendered = _render_lines(headers, lambda i: f"x{i}")  # header checks are buckets
    lines = [f"def bind({cells}):", "    def take(rid, a, now, ttl):"]
    lines += [f"        {line}" for line in decide + apply]
    lines += [f"        return [{', '.join(remaining)}]", "    def give(rid, deltas, now):"]
    lines += [f"        {line}" for line in settle or ["pass"]]
    lines += ["    def admit(rid, a, now, ttl):"]
    lines += [f"        {line}" for line in decide + apply + render]
    lines += [f"        return {rendered}", "    return take, give, admit"]
    return _compile("bind", lines)


def renderer(headers: tuple) -> Callable[[list[float]], dict[str, str]]:
    """The compiled ``render`` for a plan's header families (``Plan.headers``)."""
    return _cached(("render", headers), _build_render)  # type: ignore[no-any-return]


def _build_render(families: tuple) -> Callable[[list[float]], dict[str, str]]:
    body, rendered = _render_lines(families, lambda i: f"r[{i}]")
    return _compile("render", ["def render(r):"] + [f"    {line}" for line in body] + [f"    return {rendered}"])


def _render_lines(families: tuple, value: Callable[[int], str]) -> tuple[list[str], str]:
    """Lines that pick each family's tightest check, and the dict expression of the headers."""
    body: list[str] = []
    out: list[str] = []
    for f, ((limit_h, remaining_h, reset_h), members) in enumerate(families):
        # the tightest member: least remaining as a share of its limit; then its reset, the
        # seconds until it is full again (none for a bucket that never refills)
        (i, limit, printed, rate), rest = members[0], members[1:]
        body += [f"r{f} = {value(i)}", f"k{f} = {i}"]
        if rest:
            body.append(f"s{f} = r{f} * {1.0 / limit!r}")
            for i, limit, _, _ in rest:
                body += [f"if {value(i)} * {1.0 / limit!r} < s{f}: r{f} = {value(i)}; s{f} = r{f} * {1.0 / limit!r}; k{f} = {i}"]
        for n, (i, limit, printed, rate) in enumerate(members):
            reset = f"({limit!r} - r{f}) * {1.0 / rate!r}" if rate > 0 else "0.0"
            if len(members) == 1:
                body += [f"p{f} = {printed!r}", f"q{f} = {reset}"]
            elif n < len(members) - 1:
                body += [f"{'if' if n == 0 else 'elif'} k{f} == {i}: p{f} = {printed!r}; q{f} = {reset}"]
            else:
                body += [f"else: p{f} = {printed!r}; q{f} = {reset}"]
        out += [f"{limit_h!r}: p{f}",
                f"{remaining_h!r}: '%d' % r{f} if r{f} > 0 else '0'",
                f"{reset_h!r}: '%dms' % (q{f} * 1000) if q{f} > 0 else '0ms'"]
    return body, "{" + ", ".join(out) + "}"
