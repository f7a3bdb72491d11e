"""The semantic response cache on the request path (issue 27, item 2): an exact miss under a `semantic` rule set
looks for an entry whose last user message means the same.

Only a request whose last message is the user's, in text, within the rule's ``max_user_turns`` and with no
tools is looked up so. Its last user message is embedded with the rule's ``embeddings_model`` through the
gateway's own embeddings endpoint, in this process, as the caller (``Caller``: the identity already
authenticated, so its scopes, limits and usage apply to that call and it is recorded as its own usage row),
and searched among the entries of its bucket: the digest of the request without that message's text (scope,
cache section, model version, parameters, system prompt, earlier turns), so only an entry that differs in
that text alone can serve it. A failed embedding (an upstream down, a limit reached, a model out of scope)
leaves the request a plain miss: it is answered by the model, never failed by the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import msgspec
import numpy as np
from msgspec import UNSET

from ..cache import CacheStore, cache_key
from ..core.errors import GatewayError
from ..core.exchange import Exchange, Reply
from ..core.wire import ChatCompletionRequest

log = logging.getLogger("sluice.cache")
_encode = msgspec.json.encode


class _Vector(msgspec.Struct):
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_Vector]


_embeddings = msgspec.json.Decoder(_Embeddings)


class Caller:
    """The identity a request was authenticated as, presented to the embeddings endpoint's Authenticate stage in
    the place of a client certificate (as a batch's owner is): the same principal, with no key to compare."""

    __slots__ = ("principal", "priority")
    name = None

    def __init__(self, principal: Any, priority: str | None) -> None:
        self.principal = principal
        self.priority = priority  # a batch line's embedding yields to interactive traffic as the line does

    def authenticate(self, registry: Any) -> Any:
        return self.principal


def last_user_text(req: ChatCompletionRequest, max_user_turns: int) -> str | None:
    """The text to embed, or None when the request is not looked up semantically: tools offered, the last
    message not the user's, more user turns than the rule allows, or a last message that is not text alone."""
    if req.tools or req.functions:
        return None
    msgs = req.messages
    last = msgs[-1]
    if last.role != "user" or sum(1 for m in msgs if m.role == "user") > max_user_turns:
        return None
    content = last.content
    if type(content) is str:
        return content or None
    if type(content) is not list:
        return None
    texts = []
    for part in content:
        if part.get("type") != "text" or type(part.get("text")) is not str:
            return None  # an image or audio part: its meaning is not in the text
        texts.append(part["text"])
    return "\n".join(texts) or None


def bucket_of(section: str, scope: str, target: Any, req: ChatCompletionRequest) -> str:
    """The digest of everything but the last message's content: entries that may serve each other share it."""
    last = msgspec.structs.replace(req.messages[-1], content=UNSET)
    prefix = msgspec.structs.replace(req, messages=[*req.messages[:-1], last])
    return cache_key(section, "semantic\0" + scope, target, prefix)


class Semantic:
    """Embeds through the pipeline's embeddings endpoint (``handler``, set once the data plane has built it) and
    searches the store's vector index."""

    __slots__ = ("handler",)

    def __init__(self) -> None:
        self.handler: Any = None

    async def embed(self, ctx: Any, model: str, text: str, timeout_s: float = 1.0) -> np.ndarray | None:
        """The unit vector of ``text`` by ``model``, asked as the caller within ``timeout_s``; None when it could not
        be had (a call cut by the bound is recorded as a client that left: 499 ``client_closed``)."""
        ex = ctx.exchange
        body = _encode({"model": model, "input": text})
        rid = ex.request_id  # the embedding's usage row: the request's id and ``.e`` (ids are at most 64 characters)
        if len(rid) > 62:
            rid = rid[:50] + hashlib.blake2b(rid.encode(), digest_size=6).hexdigest()
        call = Exchange("POST", "/v1/embeddings", {}, {}, {}, body, ex.peer, rid + ".e",
                        Caller(ctx.principal, getattr(ex.peer_cert, "priority", None)), ex.listener)
        try:
            async with asyncio.timeout(timeout_s):
                reply = await self.handler(call)
        except GatewayError as exc:
            log.debug("cache: the semantic lookup's embedding failed (%s); a plain miss", exc.code)
            return None
        except TimeoutError:
            log.debug("cache: the semantic lookup's embedding took over %.1f s; a plain miss", timeout_s)
            return None
        if type(reply) is not Reply or reply.status != 200:
            return None
        try:
            got = _embeddings.decode(reply.body).data
        except msgspec.DecodeError:
            return None
        if not got or not got[0].embedding:
            return None
        vec = np.asarray(got[0].embedding, dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else None

    async def find(self, ctx: Any, state: Any, store: CacheStore, section: str, scope: str) -> bytes | None:
        """A stored entry whose last user message is similar enough, or None (``state.semantic`` then holds the
        bucket and vector this request's own answer is indexed under, when it is kept)."""
        req = ctx.request
        model, threshold, turns, timeout_s = state.rule.semantic
        text = last_user_text(req, turns)
        if text is None:
            return None
        vec = await self.embed(ctx, model, text, timeout_s)
        if vec is None:
            return None
        bucket = bucket_of(section, scope, state.target, req)
        state.semantic = (bucket, vec)
        vectors = store.vectors
        for _ in range(3):  # an entry gone from the store (evicted, expired, purged): forget it, look again
            key = await vectors.search(bucket, vec, threshold)
            if key is None:
                return None
            data = await store.get(key)
            if data is not None:
                return data
            vectors.forget(bucket, key)
        return None
