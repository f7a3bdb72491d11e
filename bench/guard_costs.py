"""What the default guardrails cost per request, in-process: `python bench/guard_costs.py`.

Each figure is the median of 7 runs of timeit (µs per call), with the bench's own payloads:
the prompt of chat.lua, the mock upstream's reply and its 66-event stream (make-sse.py).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

import msgspec

from sluice.core.guardrails import DetectorRules, Guardrails, RuleSet
from sluice.core.wire import ChatCompletionRequest
from sluice.guard import Detector, GuardPolicy, OutputGuard, check_request
from sluice.guard.minimise import sampled, shape

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
REQUEST = b'{"model":"mock-model","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}'
REPLY = (b'{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"mock-model","choices":[{"index":0,'
         b'"message":{"role":"assistant","content":"Hello! This is a canned reply from the mock upstream."},'
         b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":12,"total_tokens":24}}')
# OpenAI's shape: a system fingerprint on every reply and every chunk (the strip path, every time)
FINGERPRINTED = REPLY.replace(b'"model":"mock-model",', b'"model":"mock-model","system_fingerprint":"fp_mock",')
# vLLM's shape: its fields on every reply, null unless asked for (the probe passes nulls)
VLLM_NULLS = REPLY.replace(b'"finish_reason":"stop"}', b'"logprobs":null,"finish_reason":"stop","stop_reason":null}').replace(
    b'"usage"', b'"system_fingerprint":null,"prompt_logprobs":null,"kv_transfer_params":null,"usage"')


def median_us(fn, number: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    sse = subprocess.run([sys.executable, str(SHARED / "make-sse.py")], capture_output=True, check=True).stdout
    stream = b"".join(e + b"\n\n" for e in sse.replace(b"\r\n", b"\n").split(b"\n\n") if e and b'"usage"' not in e)
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    policy = GuardPolicy(Guardrails(rule_sets=[RuleSet(name="d", detectors=DetectorRules(input="mask", output="mask"))]), [])
    rules = policy.rules_for("mock-model", "bench", None)
    req = msgspec.json.decode(REQUEST, type=ChatCompletionRequest)
    loop = asyncio.new_event_loop()

    async def hold(_):  # no tools in the bench
        return ""

    def guard() -> OutputGuard:
        return OutputGuard(rules, policy, "bench", None, tools=False, hold=hold, record=lambda j: None)

    async def whole_stream() -> None:
        await guard().feed(stream)

    async def event_by_event() -> None:
        g = guard()
        for e in events:
            await g.feed(e)

    async def reply() -> None:
        await guard().reply(REPLY)

    d = Detector()
    prose = "Please summarise the following meeting notes for the team and list the action items. " * 4
    bare = GuardPolicy(Guardrails(), [])  # no guardrails: the default, minimisation only

    def minimiser(every: bool = False) -> OutputGuard:  # every: `stream_check: every_event`
        return OutputGuard(bare.default, bare, "bench", None, tools=False, hold=hold, record=lambda j: None, every_event=every)

    async def minimise(body: bytes) -> None:
        await minimiser().reply(body)

    async def minimise_stream(block: bytes, every: bool = False) -> None:
        await minimiser(every).feed(block)

    async def minimise_events(every: bool = False) -> None:
        g = minimiser(every)
        for e in events:
            await g.feed(e)

    fp_stream = stream.replace(b'"model":"mock-model",', b'"model":"mock-model","system_fingerprint":"fp_mock",')
    empty = shape(frozenset())
    rows = [
        ("no guardrails: reply, nothing to strip", median_us(lambda: loop.run_until_complete(minimise(REPLY)), 5000)),
        ("  the probe alone (strict typed decode)", median_us(lambda: empty.minimise(REPLY), 20000)),
        ("  the probe alone, vLLM's null fields", median_us(lambda: empty.minimise(VLLM_NULLS), 20000)),
        ("no guardrails: reply, system_fingerprint", median_us(lambda: loop.run_until_complete(minimise(FINGERPRINTED)), 5000)),
        ("  the strip alone (probe, decode, encode)", median_us(lambda: empty.minimise(FINGERPRINTED), 20000)),
        ("no guardrails: 64-event stream, clean", median_us(lambda: loop.run_until_complete(minimise_stream(stream)), 2000)),
        ("no guardrails: 64-event stream, fingerprint", median_us(lambda: loop.run_until_complete(minimise_stream(fp_stream)), 500)),
        ("no guardrails: 64 events one by one, clean", median_us(lambda: loop.run_until_complete(minimise_events()), 500)),
        ("  the same, stream_check: every_event", median_us(lambda: loop.run_until_complete(minimise_events(True)), 500)),
        ("no guardrails: 64-event stream, every_event", median_us(lambda: loop.run_until_complete(minimise_stream(stream, True)), 2000)),
        ("  sampled(): which events to check, block", median_us(lambda: sampled(stream, 8), 20000)),
        ("  sampled(): a later block (past the 8)", median_us(lambda: sampled(stream, 0), 20000)),
        ("  sampled(): one event past the 8", median_us(lambda: sampled(events[9], 0), 20000)),

        ("input rules + detectors, bench prompt", median_us(lambda: check_request(rules, policy, req, len(REQUEST), "bench", None, len), 20000)),
        ("reply: minimise + detect, bench reply", median_us(lambda: loop.run_until_complete(reply()), 5000)),
        ("stream, 64 content events in one block", median_us(lambda: loop.run_until_complete(whole_stream()), 2000)),
        ("stream, 64 content events one by one", median_us(lambda: loop.run_until_complete(event_by_event()), 500)),
        ("event loop round trip alone (subtract)", median_us(lambda: loop.run_until_complete(asyncio.sleep(0)), 5000)),
        ("detectors, 340 chars of prose", median_us(lambda: d.find(prose), 20000)),
    ]
    for name, us in rows:
        print(f"{name:42} {us:8.1f} us")


if __name__ == "__main__":
    main()
