"""A fastmcp server over stdio for the sandbox tests: sluice starts it itself (``mcp.servers[].command``).

Its tools try what the sandbox must allow or stop: a TCP connection, the environment it got, a file in
its working directory, its pid (to be killed), a line on stderr (which sluice logs, masked); and one adds a
tool and tells the session (``notifications/tools/list_changed`` on the pipe).

    python stdio_server.py
"""

from __future__ import annotations

import json
import os
import socket
import sys

from fastmcp import Context, FastMCP

server = FastMCP("local")


@server.tool
def connect(port: int) -> str:
    """Open a TCP connection to 127.0.0.1:port: `connected`, or the error."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return f"failed: {type(exc).__name__}: {exc.strerror or exc}"


@server.tool
def environment() -> dict:
    """The environment it runs with, also written whole to env.json in its working directory."""
    env = dict(os.environ)
    with open("env.json", "w") as f:
        json.dump(env, f)
    return {"names": sorted(env), "greeting": env.get("GREETING"), "cwd": os.getcwd()}


@server.tool
def write_note(text: str) -> str:
    """Write note.txt in the working directory; return that directory."""
    with open("note.txt", "w") as f:
        f.write(text)
    return os.getcwd()


@server.tool
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool
def shout(text: str) -> str:
    """Write a line to stderr."""
    print(f"shouting: {text}", file=sys.stderr, flush=True)
    return "ok"


@server.tool
async def grow(name: str, ctx: Context) -> str:
    """Add a tool called ``name`` and tell the session its tool list changed."""
    def made() -> str:
        return name
    made.__name__ = name
    server.tool(made)
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


if __name__ == "__main__":
    server.run(transport="stdio", show_banner=False)
