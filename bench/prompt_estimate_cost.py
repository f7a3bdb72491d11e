"""What one prompt estimate costs (issue 23.19): the bench request counted at four characters a
token, with bpe-openai, and with a model's tokenizer.json (the sim's); and the sim's own prompt
tokenization, now that tokenizer, against the regex it replaced. Interleaved timeit, the minimum
of 25 rounds: ``.venv/bin/python bench/prompt_estimate_cost.py``."""

from __future__ import annotations

import re
import timeit

import msgspec

from sluice.core.wire import ChatCompletionRequest
from sluice.limits.estimate import prompt_tokens, warm
from sluice.sim import tokens

BENCH = b'{"model":"mock-model","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}'
_OLD = re.compile(r"\w+|[^\w\s]")  # the sim's tokenizer before it shipped tokenizer.json


def _regex(messages: list[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for role, content in messages:
        out.append(role)
        out.extend(_OLD.findall(content))
    return out


def main() -> None:
    req = msgspec.json.decode(BENCH, type=ChatCompletionRequest)
    warm(["mock-model", "gpt-4o-mini"], {"m-tok": tokens.TOKENIZER_PATH})
    short = [("user", "Say hello in one short sentence.")]
    long = [("system", "You are a careful assistant. " * 40), ("user", "Say hello in one short sentence. " * 60)]
    cases = {
        "estimate: 4 chars (no tokenizer)": (lambda: prompt_tokens(req, "mock-model"), 2000),
        "estimate: bpe-openai (gpt-4o-mini)": (lambda: prompt_tokens(req, "gpt-4o-mini"), 2000),
        "estimate: models[].tokenizer (the sim's)": (lambda: prompt_tokens(req, "mock-model", "m-tok"), 2000),
        "sim prompt, short: regex (before)": (lambda: _regex(short), 2000),
        "sim prompt, short: tokenizer.json (now)": (lambda: tokens.message_tokens(short), 2000),
        "sim prompt, 3.2k chars: regex (before)": (lambda: _regex(long), 200),
        "sim prompt, 3.2k chars: tokenizer.json (now)": (lambda: tokens.message_tokens(long), 200),
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(25):
        for name, (f, n) in cases.items():
            best[name] = min(best[name], min(timeit.repeat(f, number=n, repeat=2)) / n * 1e6)
    for name, us in best.items():
        print(f"{name:46s} {us:9.2f} us")


if __name__ == "__main__":
    main()
