"""What the CLI's options take and how its help names them: times as people write them (``7d``,
``2025-11-24T10:00:00Z``, Unix seconds) and metavars instead of typer's ``<str>`` and ``<bool>``."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import typer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
TIME_HELP = "RFC 3339 (2025-11-24T10:00:00Z), a time ago (90m, 1h, 7d, 2w) or Unix seconds"


def parse_time(text: str, now: float | None = None) -> float:
    """A time as Unix seconds: Unix seconds, an RFC 3339 / ISO 8601 time (UTC when it names no zone), or a
    duration ago (``1h``, ``7d``, ``1h30m``). Raises ``typer.BadParameter`` saying what it accepts."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    if _RELATIVE.match(s):
        ago = sum(float(n) * _UNITS[u] for n, u in _PART.findall(s))
        return (time.time() if now is None else now) - ago
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a time: write {TIME_HELP}") from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def TimeOption(default: Any, *names: str, help: str) -> Any:  # noqa: N802, A002 - reads as a type, as typer's
    return typer.Option(default, *names, parser=parse_time, metavar="TIME", help=f"{help} ({TIME_HELP}).")


def tidy_help(command: Any) -> Any:
    """Name every parameter in ``--help`` by a metavar (``IDENTITY``, ``--reason REASON``) and show flags bare,
    instead of typer's ``{identity}``, ``<str>`` and ``<bool>``; the whole command tree, once at start."""
    ctx = command.context_class(command, info_name=command.name)  # (click's own API: typer may vendor click)
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is None:
            continue
        if param.param_type_name == "argument":
            if hasattr(param, "display_type_rich"):  # typer >= 0.20 would print <str> beside the name
                param.display_type_rich = lambda ctx: None
            if param.metavar is None:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
        elif param.metavar is None:
            flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
            param.metavar = "" if flag else param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    return command
