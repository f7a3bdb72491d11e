"""The gateway in front of the sim for the Messages API tests, over either wire to the upstream:
``translated`` (the sim's chat route, as an OpenAI-compatible upstream) or ``native`` (its
``/v1/messages``, as an ``api: anthropic`` upstream). The same identities, tools, guardrails and
prices either way, so one test reads the same from the caller's side over both."""

from __future__ import annotations

from pathlib import Path

import httpx
import sluice.sim
from messages_grammar import parse_sse, validate
from rigs import GUARDRAILS, TOOLS
from support import Gateway, Sim, start_gateway

RIGS = ("translated", "native")
SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))
UPSTREAM_KEY = "sk-upstream-" + "u" * 24  # what sluice sends the sim; a caller's key never goes
PRICE = {"input": 3, "output": 15, "cached_input": 0.3, "cache_creation_input": 3.75}  # per million tokens
NANOS = {"input": 3000, "output": 15000, "read": 300, "write": 3750}  # the same, per token in nano-units


def start_rig(tmp: Path, kind: str, *, extra: dict | None = None, models: list[dict] = (),  # type: ignore[assignment]
              scopes: list[str] = (), upstreams: list[dict] = ()) -> tuple[Gateway, Sim]:  # type: ignore[assignment]
    """A sim and a gateway whose upstream ``simx`` reaches it over ``kind``'s wire; ``upstreams`` are more
    of the same sim (``{sim}`` in a base URL is its address), ``models`` and ``scopes`` more for ``app``."""
    sim = Sim(tmp)
    if kind == "native":
        upstream = {"name": "simx", "base_url": sim.url + "/v1", "api": "anthropic", "api_key": UPSTREAM_KEY}
    else:
        upstream = {"name": "simx", "base_url": sim.url + "/v1", "api_key": UPSTREAM_KEY}
    more = [{**u, "base_url": u["base_url"].format(sim=sim.url)} for u in upstreams]
    try:
        g = start_gateway(
            tmp, upstreams=[upstream, *more],
            models=[{"name": "sim-small", "upstream": "simx", "tokenizer": SIM_TOKENIZER},
                    {"name": "sim-other", "upstream": "simx", "upstream_model": "sim-small"}, *models],
            identities=[{"name": "app", "owner": "team-a@example.com", "models": ["sim-small", *scopes]}],
            extra={"tools": TOOLS, "guardrails": GUARDRAILS, "prices": {"sim-small": PRICE}, **(extra or {})},
        )
    except BaseException:
        sim.stop()
        raise
    return g, sim


def reply_text(r: httpx.Response, stream: bool) -> str:
    """The text of a Messages reply, whole or streamed (a stream that does not end in ``message_stop`` fails)."""
    if stream:
        events = parse_sse(r.content)
        assert validate(events) == "message_stop"
        return "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    return r.json()["content"][0]["text"]
