"""``sluice mcp``: the upstream MCP servers, their tools with pin state, approving or rejecting a tool's
definition (a change set of the policy's ``mcp`` section), and one identity's effective tool view (issue 25)."""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote, urlencode

import typer

from . import refs
from .client import admin_call
from .output import Col, OutputOption, line, print_json, table

app = typer.Typer(no_args_is_help=True, help="MCP servers and tools: pin state, approve or reject definitions.")
_REASON = typer.Option(..., "--reason", "-r", help="Why: kept with the change.")


@app.command()
def servers(fmt: str = OutputOption()) -> None:
    """The upstream MCP servers: health, tool count, quarantined tools, pin mode."""
    got = admin_call("GET", "/admin/mcp/servers")
    if fmt == "json":
        print_json(got)
        return
    table([Col("server", "name"), Col("healthy", lambda s: "yes" if s["healthy"] else f"no: {s['error']}", wrap=True),
           Col("tools", "tools", right=True), Col("quarantined", "quarantined", right=True), Col("pin", "pin"),
           Col("namespace", "namespace", optional=True), Col("url", "url", optional=True)],
          got["data"], empty="no MCP servers")


def _scan(t: dict) -> str:
    s = t.get("scan") or {}
    if not s.get("flagged"):
        return "clean"
    found = ([f"injection {s['injection']}"] if s.get("injection") else []) + list(s.get("detectors", []))
    return ", ".join(found)


@app.command()
def tools(as_: Optional[str] = typer.Option(None, "--as", metavar="IDENTITY",  # noqa: UP007
                                            help="An identity (name or id): what its tools/list shows, and why not the rest."),
          state: Optional[str] = typer.Option(None, metavar="STATE",  # noqa: UP007
                                              help="pinned, changed, unpinned, off or quarantined."),
          kind: Optional[str] = typer.Option(None, metavar="KIND", help="tool (the default), prompt or template."),  # noqa: UP007
          fmt: str = OutputOption()) -> None:
    """Every tool (or prompt, or resource template) with its pin state, current and pinned hashes and the scan finding."""
    if as_ is not None:
        as_ = refs.identity(as_)["name"]
    query = {k: v for k, v in (("as", as_), ("state", state), ("kind", kind)) if v is not None}
    got = admin_call("GET", "/admin/mcp/tools" + (f"?{urlencode(query)}" if query else ""))
    if fmt == "json":
        print_json(got)
        return
    cols = [Col(kind or "tool", "name"),
            Col("state", lambda t: t["state"] + (" (quarantined)" if t["quarantined"] else ""), wrap=True),
            Col("scan", _scan, wrap=True), Col("sha256", lambda t: t["sha256"][:12], optional=True),
            Col("pinned", lambda t: (t["pinned"] or "")[:12], optional=True)]
    if as_ is not None:
        cols.insert(1, Col(f"as {as_}", "why", wrap=True))
    table(cols, got["data"], empty=f"no {kind or 'tool'}s")
    for server, error in (got.get("errors") or {}).items():
        line(f"server {server} did not answer: {error}")


@app.command()
def approve(tool: str, reason: str = _REASON,
            sha256: Optional[str] = typer.Option(None, help="The hash you reviewed (refused if the definition changed)."),  # noqa: UP007
            fmt: str = OutputOption()) -> None:
    """Propose the change set that pins TOOL's current definition (another operator approves it for prod); a prompt
    is named prompt:SERVER__PROMPT, a resource template template:SERVER__NAME."""
    got = admin_call("POST", f"/admin/mcp/tools/{quote(tool, safe='')}/approve", {"reason": reason, "sha256": sha256})
    if fmt == "json":
        print_json(got)
    elif got.get("pending"):
        line(f"pinning {tool} (sha256 {got['tool']['sha256'][:12]}, scan: {_scan(got['tool'])}) waits for a second "
             f"operator: sluice policy approve {got['id']} --reason ...")
    else:
        line(f"{tool} is pinned at sha256 {got['tool']['sha256'][:12]} (policy version {got.get('version')})")


@app.command()
def reject(tool: str, reason: str = _REASON, fmt: str = OutputOption()) -> None:
    """Leave TOOL's current definition quarantined; pending change sets pinning it are rejected."""
    got = admin_call("POST", f"/admin/mcp/tools/{quote(tool, safe='')}/reject", {"reason": reason})
    if fmt == "json":
        print_json(got)
        return
    rejected = got.get("rejected_changesets") or []
    line(f"{tool} stays quarantined" + (f"; rejected change sets {', '.join(rejected)}" if rejected else ""))
