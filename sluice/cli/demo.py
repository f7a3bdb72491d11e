"""``sluice demo``: the embedded default with the simulated backend, and a request that works."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from rich.console import Console

from ..app import Gateway
from ..core.config import Config, parse
from ..identity import generate

out = Console()


def demo_config(port: int, admin_port: int, sim_port: int, key: str, admin_key: str) -> Config:
    return parse({
        "data_plane": {"port": port},
        "control_plane": {"port": admin_port},
        "store": {"url": "sqlite:///.sluice/demo.db"},
        "sim": {"port": sim_port, "decode_ms_per_token": 5.0},
        "upstreams": [{"name": "sim", "base_url": f"http://127.0.0.1:{sim_port}/v1"}],
        "models": [{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}],
        "identities": [{"name": "demo-app", "owner": "you@example.com", "environment": "dev",
                        "models": ["sim-*"], "keys": [key]}],
        "admin": {"keys": [admin_key]},
        "logging": {"level": "warning", "format": "text"},
    })


def examples(port: int, admin_port: int, key: str, admin_key: str) -> str:
    """The copy-exact getting-started text: plain lines, never padded or cut to a terminal's width.

    It goes to stdout as it is, so a curl pasted from a pipe, a log or an 80-column terminal
    runs as printed (rich's renderers pad lines with spaces, which breaks ``\\`` continuations).
    """
    base = f"http://127.0.0.1:{port}/v1"
    curl = (f"curl -s {base}/chat/completions \\\n  -H 'Authorization: Bearer {key}' \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            "  -d '{\"model\": \"sim-small\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'")
    py = (f"from openai import OpenAI\nclient = OpenAI(\n    base_url=\"{base}\",\n    api_key=\"{key}\",\n)\n"
          "stream = client.chat.completions.create(\n    model=\"sim-small\", stream=True,\n"
          "    messages=[{\"role\": \"user\", \"content\": \"Hello!\"}],\n)\n"
          "for chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)\nprint()")
    admin = f"curl -s http://127.0.0.1:{admin_port}/admin/identities \\\n  -H 'Authorization: Bearer {admin_key}'"
    return "\n".join([
        "sluice demo",
        f"  data plane     {base}",
        f"  control plane  http://127.0.0.1:{admin_port}/admin",
        f"  API key        {key}",
        f"  admin key      {admin_key}",
        "  These keys are shown once and replaced at the next `sluice demo`.",
        "",
        "# curl", curl, "",
        "# openai SDK (pip install openai)", py, "",
        "# admin", admin, "",
    ])


async def _first_request(port: int, key: str) -> bool:
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello from the sluice demo!"}], "max_tokens": 12}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            text = await r.text()
    out.print(f"[bold]A first request through sluice[/bold] (POST /v1/chat/completions) -> {r.status}")
    try:
        out.print_json(json.dumps(json.loads(text)))
    except ValueError:
        out.print(text)
    return r.status == 200


async def _main(port: int, admin_port: int, sim_port: int, once: bool) -> int:
    key, admin_key = generate("dev"), generate("prod", kind="admin")
    gw = Gateway(demo_config(port, admin_port, sim_port, key, admin_key))
    await gw.start()
    try:
        ok = await _first_request(port, key)
        print(examples(port, admin_port, key, admin_key), flush=True)
        if once:
            return 0 if ok else 1
        print("sluice is running. Press Ctrl-C to stop.", flush=True)
        await asyncio.Event().wait()
        return 0
    finally:
        await gw.stop()


def run_demo(port: int, admin_port: int, sim_port: int, once: bool) -> int:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(_main(port, admin_port, sim_port, once))
    except KeyboardInterrupt:
        return 0
