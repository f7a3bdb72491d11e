"""The request path, in order, on one screen.

    authenticate -> decode (validate) -> authorize -> route -> context window -> guard-in -> cache (a hit answers here)
        -> limit (reserve) -> admit (fair queue) -> forward (upstream, SSE relay) -> settle limits -> account

Every API runs that one path: chat completions, legacy completions and embeddings in their own shape;
the Anthropic Messages API (``messages``) and the OpenAI Responses API (``responses``, its stored
responses kept in ``sluice.memory``) decoded into the chat request first and their answers re-encoded;
a Messages request is sent as it came to an upstream that speaks it (``native``) and its answer governed
in the chat form all the same.

Each stage is a small object with one async method over the ``RequestContext``; a stage
returns to continue or raises a ``GatewayError`` to stop. Settling and accounting run for
every request however it ends (a cut stream settles what it produced).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ..cache import CacheStore, MemoryStore
from ..core.config import RequestLimits, Resilience
from ..core.wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, chat_request_with
from ..identity import CredentialRegistry, TokenService
from ..limits import Admission, Limiter, PriceTable
from ..memory import ResponseMemory
from ..routing import DecisionLog, RoutingState
from ..telemetry import UsageLedger
from ..telemetry.tracing import Tracer
from ..upstream.embed_batch import EmbedBatcher
from .cached import Keeper, Lookup
from .context import RequestContext
from .endpoints import ListModels, ModelCall, Stage
from .forward import Forward
from .messages import CountTokens, Messages, encode
from .responses import DecodeResponses, Encode, StoredResponses
from .stages import Account, Admit, Authenticate, Authorize, ContextWindow, Decode, Guard, Limit, Route, Settle
from .stages.decode_messages import DecodeCount, DecodeMessages

__all__ = ["DataPlane", "RequestContext"]


class DataPlane:
    """The data-plane handlers, built from their stages in the one fixed order."""

    def __init__(
        self, *, registry: CredentialRegistry, tokens: TokenService | None, routes: RoutingState,
        decisions: DecisionLog, ledger: UsageLedger, limits: RequestLimits,
        limiter: Limiter, prices: PriceTable, max_tokens_cap: int, admission: Admission,
        over_cap: str = "refuse", extra_params: dict[str, frozenset[str]] | None = None,
        resilience: Resilience | None = None, guard: Guard | None = None, tracer: Tracer | None = None,
        memory: ResponseMemory | None = None, cache: CacheStore | None = None,
        embed_batches: Mapping[Any, EmbedBatcher] | None = None,
    ) -> None:
        authenticate = Authenticate(registry, tokens)
        authorize = Authorize()
        route = Route(routes, decisions)
        window = ContextWindow()
        limit = Limit(limiter, prices, max_tokens_cap, clamp=over_cap == "clamp")
        admit = Admit(admission, max_tokens_cap)
        settle, account = Settle(limiter, prices), Account(ledger, prices)
        size = {"max_bytes": limits.max_body_bytes, "max_depth": limits.max_json_depth}

        def finish(ctx: RequestContext) -> None:
            settle(ctx)
            account(ctx)

        store = cache if cache is not None else MemoryStore(64 * 1024 * 1024)
        flights: dict = {}  # issue 27: the response cache, and the answers in flight that identical requests follow
        lookup, keeper = Lookup(store, limit, flights, finish), Keeper(store, flights)

        # Models whose upstream takes extra parameters get a wider chat request type (one per set).
        wider: dict[frozenset[str], type[ChatCompletionRequest]] = {}
        chat_types = {model: wider.setdefault(names, chat_request_with(names))
                      for model, names in (extra_params or {}).items() if names}
        decoders = {t: msgspec.json.Decoder(t) for t in wider.values()}
        chat_extras = {model: decoders[t] for model, t in chat_types.items()}

        def model_call(name: str, path: str, decode: Stage, encode: Callable | None = None,
                       batches: Mapping[Any, EmbedBatcher] | None = None) -> ModelCall:
            stages = (authenticate, decode, authorize, route, window, *((guard,) if guard is not None else ()),
                      lookup, limit, admit)
            return ModelCall(name, stages, Forward(path, finish, resilience, batches), finish, authenticate=authenticate,
                             tracer=tracer, encode=encode, keeper=keeper)

        self.chat_completions = model_call("chat.completions", "/chat/completions",
                                           Decode(ChatCompletionRequest, **size, extras=chat_extras))
        # embeddings: after every stage above, per caller, concurrent ones may share an upstream call (issue 27)
        self.embeddings = model_call("embeddings", "/embeddings", Decode(EmbeddingRequest, **size), batches=embed_batches)
        lookup.semantic.handler = self.embeddings  # a semantic rule embeds through it, in process, as the caller
        # legacy completions, relayed to the upstream's own /completions; a model's extras widen them too
        legacy = {names: msgspec.json.Decoder(chat_request_with(names, CompletionRequest))
                  for names in {*(extra_params or {}).values()} if names}
        self.completions = model_call("completions", "/completions", Decode(
            CompletionRequest, **size, extras={m: legacy[names] for m, names in (extra_params or {}).items() if names}))
        self.messages = Messages(model_call("messages", "/chat/completions",
                                            DecodeMessages(**size, types=chat_types), encode))
        count_limit = Limit(limiter, prices, max_tokens_cap, requests_only=True)
        self.count_tokens = CountTokens((authenticate, DecodeCount(**size), authorize, route, count_limit), finish, guard)
        self.stored = None if memory is None else StoredResponses(authenticate, memory)
        self.responses = None if memory is None else model_call(
            "responses", "/chat/completions", DecodeResponses(memory, **size, types=chat_types), Encode(memory))
        self.models = ListModels(authenticate, routes)
        self.authenticate = authenticate

    def routes(self) -> list[tuple[str, str, object]]:
        """(method, path, handler) for the listener."""
        return [
            ("POST", "/v1/chat/completions", self.chat_completions),
            ("POST", "/v1/embeddings", self.embeddings),
            ("POST", "/v1/completions", self.completions),
            ("POST", "/v1/messages", self.messages),
            ("POST", "/v1/messages/count_tokens", self.count_tokens),
            ("GET", "/v1/models", self.models),
            *((("POST", "/v1/responses", self.responses), *self.stored.routes()) if self.stored is not None else ()),
        ]

