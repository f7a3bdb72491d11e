"""``sluice policy`` and ``sluice switch``: versions, change sets from YAML files, approval, rollback,
and the incident switches. Each command is one control-plane call, so each is one recorded change."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml

from .client import admin_call, admin_text, err, print_json
from .switch_view import limit_text, switch_lines

app = typer.Typer(no_args_is_help=True, help="The versioned policy: export, propose, approve, reject, rollback.")
switch = typer.Typer(no_args_is_help=True, help="Incident switches: each takes effect on the next request.")
_REASON = typer.Option(..., "--reason", "-r", help="Why: kept with the change.")
_JSON = typer.Option(False, "--json", help="The control plane's JSON, for scripts.")


@app.command()
def show(as_json: bool = _JSON) -> None:
    """The active version, its hash, and every switch in force with who set it and when."""
    got = admin_call("GET", "/admin/policy")
    if as_json:
        return print_json(got)
    print(f"policy version {got['version']} ({got['tag']})" + (", control plane frozen" if got.get("frozen") else ""))
    print("\n".join(switch_lines(got.get("in_force", []))))


@app.command()
def versions() -> None:
    """Every version: parent, author, time, reason, kind, content hash."""
    print_json(admin_call("GET", "/admin/policy/versions"))


@app.command()
def export(version: str = typer.Argument("active", help="A version number (default: the active one).")) -> None:
    """A version as YAML: edit it, keep it in Git, propose it back."""
    print(admin_text("GET", f"/admin/policy/versions/{version}"), end="")


@app.command()
def propose(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML: the whole policy or some sections."),
            reason: str = _REASON,
            base: Optional[int] = typer.Option(None, help="The version it was written against (default: active).")) -> None:
    """Propose a change set from a YAML file; prints its diff and dry run (applied at once if it is all dev)."""
    try:
        sections = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        err.print(f"[red]{file} is not YAML:[/red] {type(exc).__name__}")
        raise typer.Exit(2) from None
    if not isinstance(sections, dict):
        err.print(f"[red]{file} must map section names to sections[/red]")
        raise typer.Exit(2)
    print_json(admin_call("POST", "/admin/policy/changes", {"sections": sections, "reason": reason, "base": base}))


@app.command()
def changes() -> None:
    """Change sets, newest first."""
    print_json(admin_call("GET", "/admin/policy/changes"))


def _print_diff(diffs: dict[str, str]) -> None:
    for text in diffs.values():
        print(text, end="" if text.endswith("\n") else "\n")


@app.command()
def diff(changeset: str) -> None:
    """A change set's diff (unified, per section) and dry run."""
    got = admin_call("GET", f"/admin/policy/changes/{changeset}")
    _print_diff(got.get("diff", {}))
    print_json({"dry_run": got.get("dry_run"), "status": got.get("status"), "stale": got.get("stale")})


@app.command()
def approve(changeset: str, reason: str = _REASON) -> None:
    """Approve a pending change set (an operator other than its proposer, for prod parts); it activates."""
    print_json(admin_call("POST", f"/admin/policy/changes/{changeset}/approve", {"reason": reason}))


@app.command()
def reject(changeset: str, reason: str = _REASON) -> None:
    """Reject a pending change set."""
    print_json(admin_call("POST", f"/admin/policy/changes/{changeset}/reject", {"reason": reason}))


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
def rollback(version: Optional[int] = typer.Argument(None, help="Default: the active version's parent."),
             reason: str = typer.Option("rollback", "--reason", "-r"),
             dry_run: bool = typer.Option(False, "--dry-run", help="Show the diff and what it would do; change nothing.")) -> None:
    """Re-activate an earlier version (byte-identical, as a new version); allowed while frozen. Prints the diff and
    what it restores. At once only for the active version's parent when it touches no prod part and not the
    freeze; any other rollback waits for a second operator (`sluice policy approve`)."""
    got = admin_call("POST", "/admin/policy/rollback", {"version": version, "reason": reason, "dry_run": dry_run})
    _print_diff(got.get("diff", {}))
    print(restored(got))


@switch.command("list")
def list_switches(as_json: bool = _JSON) -> None:
    """Every switch in force (freeze, killed targets and routes, switch limits): who set it, when and why."""
    got = admin_call("GET", "/admin/switches")
    if as_json:
        return print_json(got)
    print("\n".join(switch_lines(got["data"])))


@switch.command("disable-target")
def disable_target(target: str = typer.Argument(..., help="model@version"), reason: str = _REASON,
                   fallback: Optional[str] = typer.Option(None, help="model@version that takes its traffic")) -> None:
    """Kill switch: a model version takes no more requests (its fallback does, or 503)."""
    print_json(admin_call("POST", f"/admin/switches/targets/{target}/disable", {"reason": reason, "fallback": fallback}))


@switch.command("enable-target")
def enable_target(target: str, reason: str = _REASON) -> None:
    """Undo a target's kill switch."""
    print_json(admin_call("POST", f"/admin/switches/targets/{target}/enable", {"reason": reason}))


@switch.command("disable-route")
def disable_route(route: str, reason: str = _REASON,
                  fallback: Optional[str] = typer.Option(None, help="model@version that takes the route's traffic")) -> None:
    """Kill switch: a route sends everything to its fallback, or answers 503."""
    print_json(admin_call("POST", f"/admin/switches/routes/{route}/disable", {"reason": reason, "fallback": fallback}))


@switch.command("enable-route")
def enable_route(route: str, reason: str = _REASON) -> None:
    """Undo a route's kill switch."""
    print_json(admin_call("POST", f"/admin/switches/routes/{route}/enable", {"reason": reason}))


@switch.command()
def revoke(reason: str = _REASON, identity: Optional[str] = typer.Option(None, help="identity id"),
           owner: Optional[str] = typer.Option(None, help="every identity of this owner")) -> None:
    """Revoke every credential of an identity or an owner (the identities stay: issue new keys)."""
    print_json(admin_call("POST", "/admin/switches/revoke", {"reason": reason, "identity_id": identity, "owner": owner}))


@switch.command()
def freeze(reason: str = _REASON) -> None:
    """Freeze the control plane: only switches and rollback until unfrozen."""
    print_json(admin_call("POST", "/admin/switches/freeze", {"reason": reason}))


@switch.command()
def unfreeze(reason: str = _REASON) -> None:
    """Lift the freeze."""
    print_json(admin_call("POST", "/admin/switches/unfreeze", {"reason": reason}))


@switch.command()
def limit(model: str, reason: str = _REASON, rpm: Optional[int] = typer.Option(None, help="requests per minute"),
          concurrent: Optional[int] = typer.Option(None, help="requests in flight"),
          per_identity: bool = typer.Option(False, help="count per identity (default: the model as a whole)")) -> None:
    """Put a model behind a stricter limit at once; prints the limit it set."""
    got = admin_call("PUT", f"/admin/switches/models/{model}/limit", {
        "reason": reason, "requests_per_minute": rpm, "concurrent_requests": concurrent,
        "per": ["identity"] if per_identity else []})
    print(f"model {got['model']} limited to {limit_text(got['limit'])} (rule {got['rule']}, policy {got['tag']})")


@switch.command()
def unlimit(model: str) -> None:
    """Lift a model's switch limit."""
    print_json(admin_call("DELETE", f"/admin/switches/models/{model}/limit"))
