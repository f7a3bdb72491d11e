"""The stream guard on its own: every way of splitting a secret over chunks is caught, nothing else changes."""

from __future__ import annotations

import asyncio
import json

from corpus import POSITIVE

from sluice.core.guardrails import DetectorRules, Guardrails, OutputRules, RuleSet
from sluice.guard import GuardPolicy, OutputGuard


def guard(window: int = 128, kinds: tuple[str, ...] = ()) -> OutputGuard:
    policy = GuardPolicy(Guardrails(rule_sets=[RuleSet(name="t", detectors=DetectorRules(output="mask", kinds=list(kinds)),
                                                       output=OutputRules(stream_window=window))]), [])

    async def hold(_):  # no tools here
        raise AssertionError

    return OutputGuard(policy.rules_for(frozenset({"m"}), "i", None), policy, "i", None, tools=False, hold=hold, record=lambda j: None)


def event(text: str) -> bytes:
    return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]}).encode() + b"\n\n"


def run(pieces: list[str], window: int = 128, kinds: tuple[str, ...] = ()) -> tuple[str, bytes, list[bytes]]:
    """Feed one event per call (as a slow upstream sends them); the text and bytes the client gets."""
    g = guard(window, kinds)
    outs = []

    async def go() -> None:
        for p in pieces:
            outs.append(await g.feed(event(p)))
        outs.append(await g.feed(b"data: [DONE]\n\n"))

    asyncio.run(go())
    raw = b"".join(outs)
    text = "".join(json.loads(line[6:])["choices"][0]["delta"]["content"]
                   for line in raw.decode().split("\n") if line.startswith("data: {"))
    return text, raw, outs


def test_a_secret_split_at_every_position_is_masked_and_no_fragment_leaks():
    secret = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
    for cut in range(1, len(secret)):
        text, raw, _ = run(["before ", secret[:cut], secret[cut:], " after"])
        assert text == "before [REDACTED:github_token] after", (cut, text)
        for piece in (secret[:cut], secret[cut:]):
            assert len(piece) < 4 or piece.encode() not in raw, (cut, piece)


def test_every_corpus_secret_in_three_word_chunks_is_masked():
    for value, kind in POSITIVE:
        words = ("intro text " + value + " outro").split(" ")
        pieces = [w + " " for w in words[:-1]] + [words[-1]]
        text, _, _ = run(pieces)
        assert f"[REDACTED:{kind}]" in text, (kind, text)


def test_plain_text_streams_through_unchanged_and_is_held_back_by_at_most_the_window():
    pieces = [f"word{i} " for i in range(200)]
    text, raw, outs = run(pieces, window=96)
    assert text == "".join(pieces)
    assert raw == b"".join(event(p) for p in pieces) + b"data: [DONE]\n\n"  # the very bytes
    sent = 0
    for n, out in enumerate(outs[:-1]):
        sent += out.count(b"data: ")
        held = "".join(pieces[sent:n + 1])
        assert len(held) <= 96 + len(pieces[n]), (n, len(held))


def test_a_secret_longer_than_the_window_is_held_until_it_ends():
    secret = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab"
    pieces = ["see "] + list(secret) + [" then more words follow here"]  # one character a chunk
    # only the token's own detector, which needs 71 characters: more than the look-behind (half the window)
    text, raw, _ = run(pieces, window=96, kinds=("github_token",))
    assert text == "see [REDACTED:github_token] then more words follow here", text
    assert b"github_pat_11" not in raw


def test_a_private_key_streamed_in_small_pieces_leaks_nothing_of_its_body():
    from corpus import PEM
    pieces = ["key: "] + [PEM[i:i + 10] for i in range(0, len(PEM), 10)] + [" - done."]
    text, raw, _ = run(pieces, window=96)
    assert text == "key: [REDACTED:private_key] - done.", text
    assert b"MIIEowIBAAK" not in raw and b"aFDrBz9" not in raw


def test_blocks_of_several_events_mask_a_secret_across_blocks_and_pass_clean_ones_as_they_came():
    secret = "AKIAIOSFODNN7EXAMPLE"
    words = [f"w{i} " for i in range(40)] + [secret[:9], secret[9:], " end"] + [f"v{i} " for i in range(40)]
    events = [event(w) for w in words]
    for size in (1, 2, 3, 7, 64):
        g = guard(96)
        outs = []

        async def go() -> None:
            for at in range(0, len(events), size):
                outs.append(await g.feed(b"".join(events[at:at + size])))
            outs.append(await g.feed(b"data: [DONE]\n\n"))

        asyncio.run(go())
        raw = b"".join(outs)
        text = "".join(json.loads(line[6:])["choices"][0]["delta"]["content"]
                       for line in raw.decode().split("\n") if line.startswith("data: {"))
        assert text == "".join(words).replace(secret, "[REDACTED:aws_access_key]"), (size, text)
        assert b"AKIAIOSFO" not in raw and b"DNN7EXAMPLE" not in raw
        assert raw.startswith(b"".join(events[:10]))  # clean events before it: the very bytes
