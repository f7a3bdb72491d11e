"""The ``sluice`` command."""

from __future__ import annotations

import typer

from .params import tidy_help
from . import (admin_cmds, audit_cmds, cache_cmds, config_cmds, keys_cmds, mcp_cmds, policy_cmds, prompts_cmds,
               registry_cmds, responses_cmds, routes_cmds, serve_cmds)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="sluice: a governed inference gateway.",
                  pretty_exceptions_enable=False)
serve_cmds.register(app)
app.add_typer(keys_cmds.app, name="keys")
app.add_typer(admin_cmds.identities, name="identities")
app.add_typer(admin_cmds.teams, name="teams")
app.add_typer(config_cmds.app, name="config")
app.add_typer(routes_cmds.app, name="routes")
app.add_typer(registry_cmds.app, name="registry")  # issue 28: verified model supply
app.add_typer(admin_cmds.usage_app, name="usage")
app.add_typer(policy_cmds.app, name="policy")
app.add_typer(policy_cmds.switch, name="switch")
app.add_typer(audit_cmds.app, name="audit")
app.add_typer(prompts_cmds.app, name="prompts")  # issue 12: prompt capture retention
app.add_typer(responses_cmds.app, name="responses")  # issue 24: stored responses' retention
app.add_typer(mcp_cmds.app, name="mcp")  # issue 25: MCP servers, tools, pins
app.add_typer(cache_cmds.app, name="cache")  # issue 27: purge the response cache


def main() -> None:
    tidy_help(typer.main.get_command(app))(prog_name="sluice")
