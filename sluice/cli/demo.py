"""``sluice demo``: the embedded default with the simulated backend, and a request that works."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import yaml
from rich.console import Console

from ..app import Gateway
from ..core.config import parse
from ..identity import generate

out = Console()


def demo_config(port: int, admin_port: int, sim_port: int, key: str, admin_keys: list[str],
                home: Path | None = None) -> dict:
    """The demo's config: the embedded store and audit key under ``home`` (``.sluice`` here), the sim,
    one identity, and the ``limits`` section marked prod so a change to it waits for a second operator."""
    home = (home or Path(".sluice")).resolve()
    return {
        "data_plane": {"port": port},
        "control_plane": {"port": admin_port},
        "store": {"url": f"sqlite:///{home / 'demo.db'}"},
        "security": {"pepper_file": str(home / "pepper")},
        "audit": {"signing_key_file": str(home / "audit.key")},
        "sim": {"port": sim_port, "decode_ms_per_token": 5.0},
        "upstreams": [{"name": "sim", "base_url": f"http://127.0.0.1:{sim_port}/v1"}],
        "models": [{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}],
        "identities": [{"name": "demo-app", "owner": "you@example.com", "environment": "dev",
                        "models": ["sim-*"], "keys": [key]}],
        "admin": {"keys": admin_keys},
        "policy": {"prod": ["limits"]},
        "logging": {"level": "warning", "format": "text"},
    }


def write_config(data: dict, path: Path) -> Path:
    """The demo's config as a file (0600: it holds the demo's keys), so ``sluice audit verify -c`` and
    ``sluice serve -c`` read what the demo runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# written by `sluice demo`, replaced at the next one\n")
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def _activate() -> list[str]:
    """How another terminal finds ``sluice`` when this one runs from a virtualenv not on PATH (``make demo``)."""
    bin_dir = Path(os.path.normpath(os.path.abspath(sys.executable))).parent  # not resolved: the venv's python links out
    on_path = any(Path(p).resolve() == bin_dir.resolve() for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    if sys.prefix == sys.base_prefix or on_path or not (bin_dir / "activate").exists():
        return []
    return [f". {bin_dir / 'activate'}"]


def examples(port: int, admin_port: int, key: str, admin_key: str, second_key: str, config: Path) -> str:
    """The copy-exact getting-started text: plain lines, never padded or cut to a terminal's width.

    It goes to stdout as it is, so a curl pasted from a pipe, a log or an 80-column terminal
    runs as printed (rich's renderers pad lines with spaces, which breaks ``\\`` continuations).
    """
    base = f"http://127.0.0.1:{port}/v1"
    control = f"http://127.0.0.1:{admin_port}"
    curl = (f"curl -s {base}/chat/completions \\\n  -H 'Authorization: Bearer {key}' \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            "  -d '{\"model\": \"sim-small\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'")
    py = (f"from openai import OpenAI\nclient = OpenAI(\n    base_url=\"{base}\",\n    api_key=\"{key}\",\n)\n"
          "stream = client.chat.completions.create(\n    model=\"sim-small\", stream=True,\n"
          "    messages=[{\"role\": \"user\", \"content\": \"Hello!\"}],\n)\n"
          "for chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)\nprint()")
    cli = [*_activate(), f"export SLUICE_ADMIN_URL={control}", f"export SLUICE_ADMIN_KEY={admin_key}",
           "sluice switch list", f"sluice audit verify -c {config}"]
    two = ["printf 'limits:\\n  rules:\\n  - {name: demo-rpm, requests_per_minute: 60}\\n' > demo-limits.yaml",
           "sluice policy propose demo-limits.yaml --reason 'try a prod change'",
           f"SLUICE_ADMIN_KEY={second_key} sluice policy approve ID --reason 'looks right'"]
    admin = f"curl -s {control}/admin/identities \\\n  -H 'Authorization: Bearer {admin_key}'"
    return "\n".join([
        "sluice demo",
        f"  data plane     {base}",
        f"  control plane  {control}",
        f"  dashboard      {control}/admin/dashboard (sign in with the admin key)",
        f"  config         {config}",
        f"  API key        {key}",
        f"  admin key      {admin_key}",
        f"  second admin   {second_key}",
        "  These keys are shown once and replaced at the next `sluice demo`.",
        "",
        "# curl", curl, "",
        "# openai SDK (pip install openai)", py, "",
        "# the sluice CLI, from another terminal", *cli, "",
        "# a two-person change: limits are marked prod here, so the second admin approves",
        "# (ID: the change set's id, as propose prints it)", *two, "",
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
    key, admin_key, second_key = generate("dev"), generate("prod", kind="admin"), generate("prod", kind="admin")
    data = demo_config(port, admin_port, sim_port, key, [admin_key, second_key])
    cfg = parse(data)
    path = write_config(data, Path(".sluice/demo.yaml").resolve())
    gw = Gateway(cfg)
    await gw.start()
    try:
        ok = await _first_request(port, key)
        print(examples(port, admin_port, key, admin_key, second_key, path), flush=True)
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
