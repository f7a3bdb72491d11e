"""``sluice policy`` and ``sluice switch``: versions, change sets from YAML files, approval, rollback,
and the incident switches. Each command is one control-plane call, so each is one recorded change."""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import quote

import typer
import yaml

from . import refs
from .client import admin_call, admin_text
from .output import NONE, Col, OutputOption, count, emit, err, fields, line, print_json, table, text, warn, when
from .switch_view import limit_text, switch_lines

app = typer.Typer(no_args_is_help=True, help="The versioned policy: export, propose, approve, reject, rollback.")
switch = typer.Typer(no_args_is_help=True, help="Incident switches: each takes effect on the next request.")
_REASON = typer.Option(..., "--reason", "-r", help="Why: kept with the change.")
_CHANGES = "sluice policy changes --pending"
_ROUTES = "sluice routes list"
_SWITCHES = "sluice policy show"  # the switches in force
_CHANGESET = typer.Argument(..., metavar="CHANGESET", help="A change set's id (sluice policy changes lists them).")


def _kills(kills: dict) -> str:
    return ", ".join(f"{k} (fallback {v})" if v else f"{k} (503)" for k, v in sorted(kills.items())) or NONE


def _active(got: dict) -> None:
    s = got.get("switches") or {}
    fields([("version", got["version"]), ("sha256", got["hash"]), ("frozen", got["frozen"]),
            ("killed targets", _kills(s.get("disabled_targets", {}))),
            ("killed routes", _kills(s.get("disabled_routes", {})))])
    for text_line in switch_lines(got.get("in_force", [])):  # every switch in force: who set it, when, why
        line(text_line)


@app.command()
def show(fmt: str = OutputOption()) -> None:
    """The active version, its hash, and every switch in force with who set it and when."""
    got = admin_call("GET", "/admin/policy")
    emit(fmt, got, lambda: _active(got))


@app.command()
def versions(fmt: str = OutputOption()) -> None:
    """Every version: parent, author, time, reason, kind, content hash."""
    got = admin_call("GET", "/admin/policy/versions")
    if fmt == "json":
        print_json(got)
        return
    active = got.get("active")
    table([Col("version", lambda v: f"{v['id']}{' *' if v['id'] == active else ''}", right=True),
           Col("parent", "parent", right=True, optional=True), Col("time", lambda v: when(v["created_at"])),
           Col("author", "author"), Col("kind", "kind"), Col("reason", "reason", wrap=True),
           Col("hash", lambda v: v["hash"][:12], optional=True)],
          got["data"], title=f"policy versions, newest first (* active: {active})")


@app.command()
def export(version: str = typer.Argument("active", help="A version number (default: the active one).")) -> None:
    """A version as YAML: edit it, keep it in Git, propose it back."""
    print(admin_text("GET", f"/admin/policy/versions/{quote(version, safe='')}", listed_by="sluice policy versions"), end="")


def _print_diff(diffs: dict[str, str]) -> None:
    for body in diffs.values():
        print(body, end="" if body.endswith("\n") else "\n")


def _dry_run(d: dict | None) -> None:
    """The dry run in a few lines: what the change touches, and the recent requests that would move."""
    if not d:
        return
    line(f"dry run: sections {text(d.get('sections'))}; routes {text(d.get('routes'))}; models {text(d.get('models'))}; "
         f"limit rules {text(d.get('limit_rules'))}; identities {text(d.get('identities'))}")
    for t in d.get("traffic") or []:
        now, then = t.get("now") or {}, t.get("under_change") or {}
        line(f"  {t['model']}: {t['recent_requests']} of the last {d.get('recent_requests_considered')} requests "
             f"would move: {_targets(now)} -> {_targets(then)}")


def _targets(r: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in (r.get("targets") or {}).items()) or "none"


def _change_status(got: dict) -> str:
    cid = got["id"]
    if got["status"] == "applied":
        return f"change set {cid} applied as version {got.get('version')}"
    if got["status"] == "pending":
        stale = " (stale: the active version moved since; propose it again)" if got.get("stale") else ""
        return (f"change set {cid} waits for a second operator{stale}: "
                f"sluice policy approve {cid} --reason ...")
    return f"change set {cid} {got['status']}" + (f" by {got['decided_by']}: {got['decision_reason']}" if got.get("decided_by") else "")


@app.command()
def propose(file: Path = typer.Argument(..., exists=True, dir_okay=False, metavar="FILE",
                                        help="YAML: the whole policy or some sections."),
            reason: str = _REASON,
            base: Optional[int] = typer.Option(None, metavar="VERSION",  # noqa: UP007
                                               help="The version it was written against (default: active)."),
            fmt: str = OutputOption()) -> None:
    """Propose a change set from a YAML file; prints its diff and dry run (applied at once if it is all dev)."""
    try:
        sections = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        err.print(f"[red]{file} is not YAML:[/red] {type(exc).__name__}")
        raise typer.Exit(2) from None
    if not isinstance(sections, dict):
        err.print(f"[red]{file} must map section names to sections[/red]")
        raise typer.Exit(2)
    got = admin_call("POST", "/admin/policy/changes", {"sections": sections, "reason": reason, "base": base})
    if fmt == "json":
        print_json(got)
        return
    _print_diff(got.get("diff", {}))
    _dry_run(got.get("dry_run"))
    line(_change_status(got))


@app.command()
def changes(pending: bool = typer.Option(False, "--pending", help="Only those waiting for a decision."),
            fmt: str = OutputOption()) -> None:
    """Change sets, newest first."""
    got = admin_call("GET", "/admin/policy/changes")
    rows = [c for c in got["data"] if not pending or c["status"] == "pending"]
    if fmt == "json":
        print_json({**got, "data": rows})
        return
    table([Col("id", "id"), Col("status", "status"), Col("author", "author"), Col("reason", "reason", wrap=True),
           Col("sections", "sections", wrap=True, optional=True), Col("time", lambda c: when(c["created_at"]), optional=True),
           Col("version", "version", right=True, optional=True)],
          rows, empty="no pending change sets" if pending else "no change sets")


@app.command()
def diff(changeset: str = _CHANGESET, fmt: str = OutputOption()) -> None:
    """A change set's diff (unified, per section) and dry run."""
    got = admin_call("GET", f"/admin/policy/changes/{quote(changeset, safe='')}", listed_by=_CHANGES)
    if fmt == "json":
        print_json(got)
        return
    _print_diff(got.get("diff", {}))
    _dry_run(got.get("dry_run"))
    line(_change_status(got))


@app.command()
def approve(changeset: str = _CHANGESET, reason: str = _REASON, fmt: str = OutputOption()) -> None:
    """Approve a pending change set (an operator other than its proposer, for prod parts); it activates."""
    got = admin_call("POST", f"/admin/policy/changes/{quote(changeset, safe='')}/approve", {"reason": reason},
                     listed_by=_CHANGES)
    if fmt == "json":
        print_json(got)
        return
    what = f"rollback to version {got['restores']}" if got.get("kind") == "rollback" else f"change set {got['id']}"
    line(f"approved {what}: version {got['policy']['version']} is active (sha256:{got['policy']['hash'][:12]})")


@app.command()
def reject(changeset: str = _CHANGESET, reason: str = _REASON, fmt: str = OutputOption()) -> None:
    """Reject a pending change set."""
    got = admin_call("POST", f"/admin/policy/changes/{quote(changeset, safe='')}/reject", {"reason": reason},
                     listed_by=_CHANGES)
    emit(fmt, got, f"rejected change set {got['id']}")


def restored(got: dict) -> str:
    """One line: what a rollback restores (or would), and whether it waits for a second operator and why."""
    what = f"version {got['restores']} over version {got['from']} ({', '.join(got['sections']) or 'no section differs'})"
    why = "; ".join(got.get("why", []))
    if got.get("dry_run"):
        return f"would restore {what}: " + (f"waits for a second operator: {why}" if why else "one operator may apply it")
    if got.get("pending"):
        return (f"rollback to {what} waits for a second operator ({why}): "
                f"sluice policy approve {got['id']} --reason ...")
    return f"restored {what} as version {got['version']}"


@app.command()
def rollback(version: Optional[int] = typer.Argument(None, metavar="VERSION",  # noqa: UP007
                                                     help="Default: the active version's parent."),
             reason: str = typer.Option("rollback", "--reason", "-r", help="Why: kept with the change."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Show the diff and what it would do; change nothing."),
             fmt: str = OutputOption()) -> None:
    """Re-activate an earlier version (byte-identical, as a new version); allowed while frozen. Prints the diff it
    applies, warns when it lifts or restores a switch or the freeze, and says what it restores. At once only for the
    active version's parent when it touches no prod part and not the freeze; any other rollback waits for a second
    operator (`sluice policy approve`)."""
    got = admin_call("POST", "/admin/policy/rollback", {"version": version, "reason": reason, "dry_run": dry_run})
    if fmt == "json":
        print_json(got)
        return
    _print_diff(got.get("diff", {}))
    for change in got.get("switches", []):
        warn(f"a rollback restores the whole version, switches included: {change}")
    line(restored(got))


# --- switches


def _switched(got: dict, fmt: str, done: str) -> None:
    if fmt == "json":
        print_json(got)
        return
    line(f"{done}: policy version {got['version']} (sha256:{got['hash'][:12]}), from the next request on")


@switch.command("list")
def list_switches(fmt: str = OutputOption()) -> None:
    """Every switch in force (freeze, killed targets and routes, switch limits): who set it, when and why."""
    got = admin_call("GET", "/admin/switches")
    emit(fmt, got, lambda: [line(text_line) for text_line in switch_lines(got["data"])])


@switch.command("disable-target")
def disable_target(target: str = typer.Argument(..., metavar="MODEL@VERSION"), reason: str = _REASON,
                   fallback: Optional[str] = typer.Option(None, metavar="MODEL@VERSION",  # noqa: UP007
                                                          help="The version that takes its traffic (else 503)."),
                   fmt: str = OutputOption()) -> None:
    """Kill switch: a model version takes no more requests (its fallback does, or 503)."""
    got = admin_call("POST", f"/admin/switches/targets/{quote(target, safe='@')}/disable",
                     {"reason": reason, "fallback": fallback}, listed_by=_ROUTES)
    _switched(got, fmt, f"{target} is switched off" + (f", {fallback} takes its traffic" if fallback else ", its requests get 503"))


@switch.command("enable-target")
def enable_target(target: str = typer.Argument(..., metavar="MODEL@VERSION"), reason: str = _REASON,
                  fmt: str = OutputOption()) -> None:
    """Undo a target's kill switch."""
    got = admin_call("POST", f"/admin/switches/targets/{quote(target, safe='@')}/enable", {"reason": reason},
                     listed_by=_SWITCHES)
    _switched(got, fmt, f"{target} takes traffic again")


@switch.command("disable-route")
def disable_route(route: str = typer.Argument(..., metavar="ROUTE", help="Its name (sluice routes list)."), reason: str = _REASON,
                  fallback: Optional[str] = typer.Option(None, metavar="MODEL@VERSION",  # noqa: UP007
                                                         help="The version that takes the route's traffic (else 503)."),
                  fmt: str = OutputOption()) -> None:
    """Kill switch: a route sends everything to its fallback, or answers 503."""
    got = admin_call("POST", f"/admin/switches/routes/{quote(route, safe='')}/disable",
                     {"reason": reason, "fallback": fallback}, listed_by=_ROUTES)
    _switched(got, fmt, f"route {route} is switched off" + (f", {fallback} takes its traffic" if fallback else ", it answers 503"))


@switch.command("enable-route")
def enable_route(route: str = typer.Argument(..., metavar="ROUTE"), reason: str = _REASON, fmt: str = OutputOption()) -> None:
    """Undo a route's kill switch."""
    got = admin_call("POST", f"/admin/switches/routes/{quote(route, safe='')}/enable", {"reason": reason},
                     listed_by=_SWITCHES)
    _switched(got, fmt, f"route {route} takes traffic again")


@switch.command()
def revoke(reason: str = _REASON,
           identity: Optional[str] = typer.Option(None, metavar="IDENTITY", help="An identity: its name or id."),  # noqa: UP007
           owner: Optional[str] = typer.Option(None, metavar="OWNER", help="Every identity of this owner."),  # noqa: UP007
           fmt: str = OutputOption()) -> None:
    """Revoke every credential of an identity or an owner (the identities stay: issue new keys)."""
    ident = refs.identity_id(identity) if identity is not None else None
    got = admin_call("POST", "/admin/switches/revoke", {"reason": reason, "identity_id": ident, "owner": owner})
    if fmt == "json":
        print_json(got)
        return
    known = refs.names()
    who = ", ".join(known.get(i, i) for i in got["identities"])
    line(f"revoked {count(len(got['revoked']), 'credential')} of {who}: refused from the next request on; "
         f"the identities stay (sluice keys issue IDENTITY gives a new key)")


@switch.command()
def freeze(reason: str = _REASON, fmt: str = OutputOption()) -> None:
    """Freeze the control plane: only switches and rollback until unfrozen."""
    _switched(admin_call("POST", "/admin/switches/freeze", {"reason": reason}), fmt,
              "the control plane is frozen (only switches and rollback until sluice switch unfreeze)")


@switch.command()
def unfreeze(reason: str = _REASON, fmt: str = OutputOption()) -> None:
    """Lift the freeze."""
    _switched(admin_call("POST", "/admin/switches/unfreeze", {"reason": reason}), fmt, "the control plane is unfrozen")


@switch.command()
def limit(model: str = typer.Argument(..., metavar="MODEL"), reason: str = _REASON,
          rpm: Optional[int] = typer.Option(None, metavar="N", help="requests per minute"),  # noqa: UP007
          concurrent: Optional[int] = typer.Option(None, metavar="N", help="requests in flight"),  # noqa: UP007
          per_identity: bool = typer.Option(False, help="count per identity (default: the model as a whole)"),
          fmt: str = OutputOption()) -> None:
    """Put a model behind a stricter limit at once; prints the limit it set."""
    got = admin_call("PUT", f"/admin/switches/models/{quote(model, safe='')}/limit", {
        "reason": reason, "requests_per_minute": rpm, "concurrent_requests": concurrent,
        "per": ["identity"] if per_identity else []})
    _switched(got, fmt, f"{model} is limited to {limit_text(got['limit'])} (rule {got['rule']})")


@switch.command()
def unlimit(model: str = typer.Argument(..., metavar="MODEL"), fmt: str = OutputOption()) -> None:
    """Lift a model's switch limit."""
    _switched(admin_call("DELETE", f"/admin/switches/models/{quote(model, safe='')}/limit", listed_by=_SWITCHES), fmt,
              f"{model}'s switch limit is lifted")
