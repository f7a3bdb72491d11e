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


class WordLlamaVectors:
    """Vectors that mean something: WordLlama's ``l2_supercat`` (static token embeddings taken from an LLM, averaged
    and normalised; 256 dimensions, truncatable to 64 and 128), loaded from the files its PyPI wheel ships (no hub
    download). For the semantic cache's tests (``sluice sim --embedder wordllama``); the ``wordllama`` package is a
    test dependency. ``dimensions`` below 256 keep the first ones (the model was trained to be cut so), above it
    pad with zeros; each vector is of unit length."""

    dimensions = 256

    def __init__(self) -> None:
        from pathlib import Path

        import wordllama
        from safetensors import safe_open
        from wordllama import WordLlama
        from wordllama.inference import WordLlamaInference

        root = Path(wordllama.__file__).parent
        tokenizer = WordLlama.load_tokenizer(root / "tokenizers" / "l2_supercat_tokenizer_config.json")
        with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np", device="cpu") as f:
            table = f.get_tensor("embedding.weight")
        self._model = WordLlamaInference(table, tokenizer)

    def vectors(self, texts: list[str], dimensions: int) -> list[list[float]]:
        import numpy as np

        vecs = self._model.embed(texts, norm=False)[:, :dimensions]
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        if dimensions > vecs.shape[1]:
            vecs = np.pad(vecs, ((0, 0), (0, dimensions - vecs.shape[1])))
        return vecs.astype(np.float32).tolist()
