"""The rest of vLLM's OpenAI-compatible surface: embeddings, the model list, ``/health``
and ``/reset_prefix_cache``."""

from __future__ import annotations

import msgspec
from aiohttp import web

from sluice.core import clock

from . import embeddings, tokens
from .latency import pause
from .replica import JSON, MAX_MODEL_LEN, ReplicaBase, encode, json_reply
from .schema import EmbeddingData, EmbeddingRequest, EmbeddingResponse, Usage

_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)


class VllmRoutes(ReplicaBase):
    """Embeddings, models, health and the prefix-cache reset of a replica."""

    async def embed(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``: deterministic unit vectors, as floats or base64."""
        stats = self.stats
        stats.embedding_requests += 1
        with self._in_flight():
            req = await self._admit(request, _embedding_decoder)
            if isinstance(req, web.Response):
                return req
            items = texts_or_token_lists(req.input)
            if items is None:
                return self._refuse(
                    400, "`input` must be a string, a list of strings, a list of token ids or a list of lists of token ids."
                )
            injected = await self._apply_faults(request)
            if injected is not None:
                return injected
            model = self.embedder  # --embedder wordllama: its own 256 dimensions unless asked for others
            dims = req.dimensions or (model.dimensions if model is not None else self.settings.embedding_dimensions)
            seed = self.settings.seed
            n_prompt = 0
            keys: list[bytes] = []
            for item in items:
                if isinstance(item, str):
                    keys.append(b"s" + item.encode())
                    n = tokens.count(item)
                else:
                    n = len(item)
                    keys.append(b"t" + encode(item))
                if n > MAX_MODEL_LEN:  # as vLLM: each input is its own sequence and must fit the context
                    return self._refuse(
                        400, f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                             f"{n} tokens in the input for embedding generation. Please reduce the length of the input.")
                n_prompt += n
            latency = self.latency
            async with latency.slot():
                if not latency.serial_prefill:
                    await pause(latency.ttft(n_prompt))
                else:  # --prefill-concurrency: one GPU's compute, shared by requests as a batch's inputs share it
                    await pause(latency.base_s)
                    async with latency.prefill_slot():
                        await pause(latency.prefill_s * n_prompt)
            stats.prompt_tokens += n_prompt
            as_base64 = req.encoding_format == "base64"
            data = []
            texts = [item for item in items if isinstance(item, str)] if model is not None else []
            meant = iter(model.vectors(texts, dims)) if texts else None
            for i, k in enumerate(keys):
                vec = next(meant) if meant is not None and k[:1] == b"s" else embeddings.vector(k, dims, seed)
                data.append(EmbeddingData(index=i, embedding=embeddings.to_base64(vec) if as_base64 else vec))
            body = EmbeddingResponse(
                id=self._new_id("embd"),
                created=int(clock.now()),
                model=req.model,
                data=data,
                usage=Usage(prompt_tokens=n_prompt, total_tokens=n_prompt),
            )
            return json_reply(body)

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        self.stats.requests_total += 1
        self.stats.model_list_requests += 1
        return web.Response(body=self._model_list, content_type=JSON)

    async def health(self, request: web.Request) -> web.Response:
        """``GET /health``: 200 while the process serves (vLLM's empty body)."""
        return web.Response()

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        """``POST /reset_prefix_cache``, as vLLM names it."""
        self.cache.clear()
        return web.Response()


def texts_or_token_lists(value: str | list[str | int | list[int]]) -> list[str] | list[list[int]] | None:
    """Embeddings' inputs or completions' prompts as a list of texts or of token-id lists, or None when the
    shape is not one OpenAI accepts."""
    if isinstance(value, str):
        return [value]
    if not value:
        return None
    if all(isinstance(v, str) for v in value):
        return value  # type: ignore[return-value]
    if all(isinstance(v, int) for v in value):
        return [value]  # type: ignore[list-item]
    if all(isinstance(v, list) and v for v in value):
        return value  # type: ignore[return-value]
    return None
