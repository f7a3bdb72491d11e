"""Deterministic generated text: the same prompt and seed always give the same tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# Short common words; each becomes one token with a leading space, as BPE vocabularies do.
_WORDS: tuple[str, ...] = tuple(
    " " + w
    for w in (
        "the of and to in is it that for on was with as at by be this from or an are not but had "
        "have one all were we when there can more if out so said what up its about into than them "
        "only other new some could time these two may then do first any my now such like our over "
        "man me even most made after also did many before must through back years where much your "
        "way well down should because each just those people how too little state good very make "
        "world still own see men work long get here between both life being under never day same "
        "another know while last might us great old year off come since against go came right used "
        "take three small large next early young important few public bad able"
    ).split()
)
_N_WORDS = len(_WORDS)
_MASK64 = (1 << 64) - 1

# A natural answer length, so that a generous max_tokens ends with finish_reason "stop".
MIN_NATURAL_TOKENS = 32
MAX_NATURAL_TOKENS = 1024


def prompt_key(tokens: Sequence[str], seed: int) -> int:
    """A 64-bit key for a prompt and seed, stable across processes (unlike ``hash``)."""
    # any int64 seed, or one already folded to 64 bits (two's complement: the same bytes for both)
    h = hashlib.blake2b("\x1f".join(tokens).encode(), digest_size=8, salt=(seed & _MASK64).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little") or 1


def natural_length(key: int) -> int:
    """How many tokens the simulated model would say before its end-of-sequence token."""
    return MIN_NATURAL_TOKENS + (key >> 17) % (MAX_NATURAL_TOKENS - MIN_NATURAL_TOKENS + 1)


def generate(key: int, n: int) -> list[str]:
    """``n`` tokens, each a short word with a leading space, determined by ``key`` alone."""
    x = key & _MASK64 or 1
    out: list[str] = []
    append = out.append
    for _ in range(n):
        # xorshift64*: a few integer ops per token keeps generation off any profile.
        x ^= x >> 12
        x ^= (x << 25) & _MASK64
        x ^= x >> 27
        append(_WORDS[(((x * 0x2545F4914F6CDD1D) & _MASK64) >> 32) % _N_WORDS])
    return out
