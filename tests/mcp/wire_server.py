"""A fastmcp server over Streamable HTTP for the tests of sluice's MCP client and of the streams it relays.

Answers in JSON (``json``) or as an SSE stream per request (``sse``, the SDK server's default). Its tools: a
trivial one, a slow one, one that sends a log message and a progress notification on its request's stream
before it answers. Every MCP request's method and Authorization header is appended to a log file (``-`` when none).
``POST /_add`` with ``{"kind": "tool"|"resource"|"prompt", "name": NAME}`` adds one at run time and tells every
session it has served (``notifications/*/list_changed`` on each session's own GET stream), as a server whose
tools change does.

    python wire_server.py PORT AUTH_LOG json|sse
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from doors import read_body, reply
from fastmcp import Context, FastMCP
from fastmcp.server.middleware import Middleware

server = FastMCP("wire")
SESSIONS: set = set()  # every session that sent a request: told when a list changes


class Remember(Middleware):
    async def on_request(self, context, call_next):
        if context.fastmcp_context is not None:
            try:
                SESSIONS.add(context.fastmcp_context.session)
            except Exception:  # noqa: BLE001 - no session (a stateless request)
                pass
        return await call_next(context)


server.add_middleware(Remember())


@server.tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@server.tool
async def sleep(seconds: float) -> str:
    """Answers after this many seconds."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool
async def chatty(text: str, ctx: Context) -> str:
    """Logs and reports progress on its request's stream before it answers."""
    await ctx.info(f"working on {text}")
    await ctx.report_progress(1, 2)
    return f"done: {text}"


async def add(kind: str, name: str) -> None:
    if kind == "tool":
        def made(text: str) -> str:
            return f"{name}: {text}"
        made.__name__ = name
        made.__doc__ = f"Added at run time: {name}."
        server.tool(made)
    elif kind == "resource":
        server.resource(f"added://{name}", name=name)(lambda: f"the resource {name}")
    else:
        def prompt() -> str:
            return f"the prompt {name}"
        prompt.__name__ = name
        server.prompt(prompt)
    for session in list(SESSIONS):
        try:
            if kind == "tool":
                await session.send_tool_list_changed()
            elif kind == "resource":
                await session.send_resource_list_changed()
            else:
                await session.send_prompt_list_changed()
        except Exception:  # noqa: BLE001 - a session that has gone
            SESSIONS.discard(session)


def main() -> None:
    port, log_path, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = server.http_app(path="/mcp", json_response=mode == "json")

    async def recording(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/_add":  # the test's own door, not MCP
            change = json.loads(await read_body(receive))
            await add(change["kind"], change["name"])
            return await reply(send, 204)
        if scope["type"] == "http" and scope["path"].startswith("/mcp"):
            auth = dict(scope["headers"]).get(b"authorization", b"-").decode()
            with open(log_path, "a") as f:
                f.write(f"{scope['method']} {auth}\n")
        await app(scope, receive, send)

    uvicorn.run(recording, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
