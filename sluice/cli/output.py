"""How the CLI prints: tables for people (fitted to the terminal, 80 columns in a pipe), ``-o json`` for
scripts, times as ISO 8601 UTC, money as plain decimals, and ``—`` where a value is missing."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

NONE = "—"  # what a missing value reads as: never Python's None, never a blank cell
GAP = 2  # spaces between two columns (rich's padding (0, 1) without edges)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def OutputOption(*choices: str, aliases: Sequence[str] = ()) -> Any:  # noqa: N802 - reads as a type, as typer's
    """``-o/--output``: a table (or text) for people, ``json`` (the API's answer as it is) for scripts."""
    allowed = choices or ("table", "json")

    def check(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return typer.Option(allowed[0], "--output", "-o", *aliases, metavar="|".join(allowed), callback=check,
                        help="table for people, json for scripts" + (", csv for spreadsheets" if "csv" in allowed else "") + ".")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def emit(fmt: str, data: Any, human: str | Callable[[], None]) -> None:
    """``data`` as JSON for ``-o json``; else a line for people, or what ``human()`` prints."""
    if fmt == "json":
        print_json(data)
    elif isinstance(human, str):
        line(human)
    else:
        human()


def when(ts: float | None) -> str:
    """A Unix time as ISO 8601 UTC to the second (``2025-11-24T10:00:00Z``), or ``—``."""
    if ts is None or ts == "":
        return NONE
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def day(ts: float | None) -> str:
    """A Unix time as its UTC date (``2025-11-24``), or ``—``."""
    return NONE if ts is None else when(ts)[:10]


def text(value: Any) -> str:
    """A value as a cell: lists joined with ", ", booleans yes/no, nothing as ``—``."""
    if value is None or value == "" or value == []:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value)
    return str(value)


def count(n: int, one: str, many: str | None = None) -> str:
    """``1 identity``, ``2 identities``."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def money(value: Any) -> str:
    """A decimal amount as plain digits without trailing zeros: ``0.000013``, ``0``, ``12.5``; never ``0E-9``."""
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return text(value)
    s = f"{d:f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


@dataclass(frozen=True)
class Col:
    """A column: its header, how to read a row's cell, whether it may wrap at spaces (lists, reasons), and
    whether it may be left out when the table does not fit the terminal (then a note names it)."""

    header: str
    get: Callable[[Any], Any] | str
    wrap: bool = False
    optional: bool = False
    right: bool = False

    def cell(self, row: Any) -> str:
        value = row.get(self.get) if isinstance(self.get, str) else self.get(row)
        return value if isinstance(value, str) and value else text(value)


def _longest_word(s: str) -> int:
    return max((len(w) for line in s.splitlines() for w in line.split(" ")), default=0)


COMFORT = 20  # a wrapping column narrower than this (when its text is longer) reads badly: drop another column first
FOLD = 8  # below this even a wrapping column is not narrowed: the table is then wider than the terminal


def fit(cols: Sequence[Col], cells: list[list[str]], width: int, header: bool = True) -> tuple[list[int | None], list[str]]:
    """Column widths for ``width`` terminal columns, and the headers of the optional columns left out.

    A column that must not wrap gets its longest cell; one that may wrap wants at least its longest word
    and, when its text is longer, ``COMFORT`` columns. Optional columns go (rightmost first) until that
    fits; what is left over goes to the wrapping columns, up to what they need. If even the longest
    words do not fit, the widest wrapping columns are narrowed and fold their longest words. None marks
    a column left out."""
    heads = [len(c.header) if header else 0 for c in cols]
    natural = [max([heads[i]] + [len(ln) for r in cells for ln in r[i].splitlines()]) for i in range(len(cols))]
    word = [max([heads[i]] + [_longest_word(r[i]) for r in cells]) if c.wrap else natural[i] for i, c in enumerate(cols)]
    comfy = [max(word[i], min(natural[i], COMFORT)) for i in range(len(cols))]
    shown = [i for i in range(len(cols))]

    def need(want: list[int]) -> int:
        return sum(want[i] for i in shown) + GAP * (len(shown) - 1)

    for i in reversed(range(len(cols))):
        if need(comfy) <= width:
            break
        if cols[i].optional:
            shown.remove(i)
    got = list(comfy if need(comfy) <= width else word)
    while need(got) > width:  # fold: narrow the widest wrapping column, never below FOLD
        wide = max((i for i in shown if cols[i].wrap and got[i] > FOLD), key=lambda i: got[i], default=None)
        if wide is None:
            break
        got[wide] -= 1
    spare = width - need(got)
    for i in shown:  # left to right: the first wrapping columns are the ones a reader reads first
        if cols[i].wrap and spare > 0:
            more = min(spare, natural[i] - got[i])
            got[i] += more
            spare -= more
    widths: list[int | None] = [got[i] if i in shown else None for i in range(len(cols))]
    return widths, [cols[i].header for i in range(len(cols)) if widths[i] is None]


def table(cols: Sequence[Col], rows: Iterable[Any], *, title: str | None = None, empty: str = "nothing to show",
          header: bool = True) -> None:
    """Print rows as a table fitted to the terminal (80 columns when it is not one)."""
    rows = list(rows)
    if title:
        line(title)
    if not rows:
        line(f"({empty})")
        return
    cells = [[c.cell(r) for c in cols] for r in rows]
    widths, left_out = fit(cols, cells, out.width, header)
    t = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False, header_style="bold", show_header=header)
    keep = [i for i, w in enumerate(widths) if w is not None]
    for i in keep:
        t.add_column(cols[i].header, width=widths[i], no_wrap=not cols[i].wrap, overflow="fold",
                     justify="right" if cols[i].right else "left")
    for r in cells:
        t.add_row(*(escape(r[i]) for i in keep))
    _print(t)
    if left_out:  # wrapped to the width, in a pipe too: it belongs to the table
        _print(Text(f"(left out at {out.width} columns: {', '.join(left_out)}; -o json has every field)", style="dim"))


def fields(pairs: Sequence[tuple[str, Any]], *, title: str | None = None) -> None:
    """Print one object as ``field  value`` lines (values wrap at spaces)."""
    table([Col("field", lambda p: p[0]), Col("value", lambda p: p[1] if isinstance(p[1], str) and p[1] else text(p[1]),
                                            wrap=True)],
          pairs, title=title, header=False)


def _print(renderable: Any) -> None:
    """Print to stdout; in a pipe without the padding that would end every line in spaces."""
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as cap:
        out.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))


def line(message: str) -> None:
    """One line of prose for people: wrapped at words to a terminal's width (the terminal itself would cut
    a word at its last column); whole in a pipe, where a command in it is copied or grepped."""
    out.print(escape(message), soft_wrap=not out.is_terminal)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=not err.is_terminal)
