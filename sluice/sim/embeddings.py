"""Deterministic embedding vectors: the same input and seed always give the same unit vector."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import sys
from array import array


def vector(key: bytes, dimensions: int, seed: int) -> list[float]:
    """A unit vector of ``dimensions`` floats derived from ``key`` and ``seed`` alone."""
    raw = hashlib.shake_256(seed.to_bytes(8, "little", signed=True) + key).digest(dimensions * 2)
    ints = array("h")
    ints.frombytes(raw)
    if sys.byteorder == "big":
        # Same bytes, same vector, on any machine.
        ints.byteswap()
    norm = math.sqrt(math.fsum(i * i for i in ints)) or 1.0
    inv = 1.0 / norm
    return [i * inv for i in ints]


def to_base64(values: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded: OpenAI's and vLLM's ``encoding_format="base64"``."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
