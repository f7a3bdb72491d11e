"""The caller's key stays at the gateway: it is never forwarded upstream. The upstream's own
``api_key`` is injected on every upstream call and is never logged or returned, even when the
upstream echoes it back in an error."""

from __future__ import annotations

import httpx
import openai
import pytest

from support import LoopbackServer, QuietHandler, start_gateway

UPSTREAM_KEY = "sk-upstream-0123456789-do-not-leak"
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


class RecordingProxy:
    """A loopback HTTP proxy in front of the sim that keeps every request's headers; a request
    for model ``echo-key-401`` (or ``-400``) gets that status with a message that repeats the key
    it was sent, as some providers do."""

    def __init__(self, target: str) -> None:
        self.seen: list[dict[str, str]] = []
        proxy = self

        class Handler(QuietHandler):
            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append({k.lower(): v for k, v in self.headers.items()})
                for status in (401, 400):
                    if b'"echo-key-%d"' % status in body:
                        self.send_body(b'{"error": {"message": "Incorrect API key provided: %s"}}'
                                       % self.headers.get("Authorization", "").encode(), status=status)
                        return
                r = httpx.request(method, target + self.path, content=body,
                                  headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                self.send_body(r.content, r.headers.get("content-type", "application/json"), r.status_code)

            def do_POST(self) -> None:  # noqa: N802
                self._forward("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET")

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def stop(self) -> None:
        self._http.stop()


@pytest.fixture(scope="module")
def rig(sim, tmp_path_factory):
    proxy = RecordingProxy(sim.url)
    g = start_gateway(tmp_path_factory.mktemp("creds"),
                      upstreams=[{"name": "keyed", "base_url": proxy.url + "/v1", "api_key": UPSTREAM_KEY}],
                      models=[{"name": "sim-small", "upstream": "keyed"},
                              {"name": "leaky", "upstream": "keyed", "upstream_model": "echo-key-401"},
                              {"name": "leaky-400", "upstream": "keyed", "upstream_model": "echo-key-400"}],
                      identities=[{"name": "app", "owner": "o", "models": ["*"]}])
    yield g, proxy
    g.stop()
    proxy.stop()


def test_the_upstream_gets_its_own_key_and_never_the_callers(rig):
    g, proxy = rig
    caller = g.keys["app"]
    client = openai.OpenAI(base_url=g.v1, api_key=caller, max_retries=0)
    proxy.seen.clear()
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    assert list(client.chat.completions.create(**CHAT, stream=True))
    assert client.embeddings.create(model="sim-small", input="x").data
    assert len(proxy.seen) == 3
    for headers in proxy.seen:
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert not any(caller in v or caller[9:39] in v for v in headers.values()), headers


def test_the_upstream_key_is_never_returned_or_logged(rig):
    g, _ = rig
    key = g.keys["app"]
    answers = [
        g.post("/v1/chat/completions", key, json=CHAT),
        g.post("/v1/chat/completions", key, json={**CHAT, "model": "leaky"}),  # the upstream echoes its key
        g.post("/v1/chat/completions", key, json={**CHAT, "model": "leaky", "stream": True}),
        g.post("/v1/chat/completions", key, json={**CHAT, "model": "leaky-400"}),  # relayed as the caller's error
        httpx.get(g.v1 + "/models", headers={"Authorization": f"Bearer {key}"}),
        g.admin("GET", "/admin/routes"),
        g.admin("GET", "/admin/changes"),
        httpx.get(g.admin_url + "/metrics"),
    ]
    assert answers[1].status_code == 502 and answers[1].json()["error"]["code"] == "upstream_auth"
    for r in answers:
        assert UPSTREAM_KEY not in r.text and UPSTREAM_KEY[3:20] not in r.text, r.text[:300]
    log = g.log()
    assert UPSTREAM_KEY not in log and UPSTREAM_KEY[3:20] not in log
