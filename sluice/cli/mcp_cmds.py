"""``sluice mcp``: the upstream MCP servers, their tools with pin state, approving or rejecting a tool's
definition (a change set of the policy's ``mcp`` section), and one identity's effective tool view (issue 25)."""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote, urlencode

import typer

from .client import admin_call, print_json

app = typer.Typer(no_args_is_help=True, help="MCP servers and tools: pin state, approve or reject definitions.")
_REASON = typer.Option(..., "--reason", "-r", help="Why: kept with the change.")


@app.command()
def servers() -> None:
    """The upstream MCP servers: health, tool count, quarantined tools, pin mode."""
    print_json(admin_call("GET", "/admin/mcp/servers"))


@app.command()
def tools(as_: Optional[str] = typer.Option(None, "--as", help="An identity: what its tools/list shows, and why not the rest."),
          state: Optional[str] = typer.Option(None, help="pinned, changed, unpinned, off or quarantined."),
          kind: Optional[str] = typer.Option(None, help="tool (the default), prompt or template.")) -> None:
    """Every tool (or prompt, or resource template) with its pin state, current and pinned hashes and the scan finding."""
    query = {k: v for k, v in (("as", as_), ("state", state), ("kind", kind)) if v is not None}
    print_json(admin_call("GET", "/admin/mcp/tools" + (f"?{urlencode(query)}" if query else "")))


@app.command()
def approve(tool: str, reason: str = _REASON,
            sha256: Optional[str] = typer.Option(None, help="The hash you reviewed (refused if the definition changed).")) -> None:
    """Propose the change set that pins TOOL's current definition (another operator approves it for prod); a prompt
    is named prompt:SERVER__PROMPT, a resource template template:SERVER__NAME."""
    print_json(admin_call("POST", f"/admin/mcp/tools/{quote(tool, safe='')}/approve", {"reason": reason, "sha256": sha256}))


@app.command()
def reject(tool: str, reason: str = _REASON) -> None:
    """Leave TOOL's current definition quarantined; pending change sets pinning it are rejected."""
    print_json(admin_call("POST", f"/admin/mcp/tools/{quote(tool, safe='')}/reject", {"reason": reason}))
