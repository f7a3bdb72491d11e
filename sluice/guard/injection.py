"""A prompt-injection signal for untrusted content (tool results): cheap phrases, plus an optional hook.

This is a signal, not a promise: it catches the common, lazy forms ("ignore previous
instructions", fake system turns, exfiltration asks) and misses paraphrases. Per route it flags
or blocks; an external classifier (``injection.classifier: module:function``) may add its score.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PHRASES = re.compile(
    r"(?i)\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:previous|prior|above|earlier|all|system)\b.{0,20}"
    r"\b(?:instructions?|prompts?|rules?|directions?)\b"
    r"|\byou are now\b|\bnew (?:system )?instructions?\s*:"
    r"|<\|?(?:im_start|system|endoftext)\|?>|^\s*(?:system|assistant)\s*:"
    r"|\b(?:reveal|print|show|send|exfiltrate)\b.{0,30}\b(?:system prompt|api key|password|secret|credentials)\b"
    r"|\bdo not (?:tell|inform) the user\b",
    re.M | re.S,
)


# One of these is in every match of ``_PHRASES`` (each branch spells one out literally). An ASCII text holding none of them,
# in ASCII lower case, has no match: that answer costs a ``str.lower`` and a few substring scans, where ``_PHRASES``
# tries every branch at every position (~0.2 µs a character: 4 µs for a 14-character tool result). Only ASCII texts
# are screened so: ``re.IGNORECASE`` also matches letters such as "ſ" (as "s") or "K" (as "k"), which
# ``str.lower`` does not map to ASCII, so any other text goes to the pattern itself.
NEEDED = ("ignore", "disregard", "forget", "override", "you are now", "new ", "<", "system", "assistant", "reveal",
          "print", "show", "send", "exfiltrate", "do not ")


def phrase_hits(text: str) -> int:
    """How many injection phrases ``text`` holds (``_PHRASES``' matches; texts that cannot hold one are not scanned)."""
    if text.isascii():
        low = text.lower()
        for word in NEEDED:
            if word in low:
                break
        else:
            return 0
    return len(_PHRASES.findall(text))


def injection_score(text: str, classifier: Callable[[str], float] | None = None) -> float:
    """0 (nothing seen) .. 1 (looks like instructions aimed at the model)."""
    hits = phrase_hits(text[:20_000])
    score = min(1.0, 0.6 * hits) if hits else 0.0
    if classifier is not None:
        try:
            score = max(score, float(classifier(text)))
        except Exception:  # a failing hook is no signal, and never fails the request
            pass
    return score
