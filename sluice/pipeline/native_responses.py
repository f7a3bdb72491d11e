"""Responses requests to upstreams that serve the Responses API themselves (``upstreams[].api: responses``).

The Anthropic native leg's design (``pipeline.native``), for the other agent API: a Responses request runs
the one path as on the translated route (decoded into the chat request after its chain, which authorize,
route, guard-in and the limits read), and its answer is governed in the chat form by the one output guard
(``sluice.wire.responses.native`` says why). What differs is each attempt's leg, chosen per attempt by
the API of the target it lands on, so a fallback of the other kind works: to an ``api: responses`` target
the caller's request goes re-encoded (``wire.responses.native_body``) to ``/responses``, the whole chain
rebuilt by the gateway as its input (the gateway owns the state: ``store: false``, no
``previous_response_id``); the key is the upstream's, set by its transport as a bearer token, and the
caller's never goes. Its answer is read into the chat form (``whole``, ``stream``). To any other target
the translated chat request goes, as before; an Anthropic upstream refuses it (``wrong_api``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..core.wire import ChatCompletionRequest
from ..upstream import UpstreamStream
from ..wire import responses
from ..wire.responses import ResponsesRequest
from .context import RequestContext
from .native import ANTHROPIC, RESPONSES, ChatStream, NativeForm, wrong_api

log = logging.getLogger("sluice.wire")


class NativeResponses(NativeForm):
    """One Responses request's own form, for its attempts on ``api: responses`` targets (``ctx.native``)."""

    __slots__ = ("source", "history", "translated", "dropped", "active")

    def __init__(self, source: ResponsesRequest, history: Sequence[dict[str, Any]], translated: responses.Translated) -> None:
        self.source = source
        self.history = history  # the chain's items, as stored
        self.translated: ChatCompletionRequest = translated.request  # as decoded: what guard-in may rewrite since
        self.dropped = translated.dropped  # what the chat form could not carry
        self.active = False  # whether the attempt prepared last went to a Responses upstream

    def prepare(self, ctx: RequestContext, api: str) -> tuple[str, bytes, dict[str, str]] | None:
        """This attempt's path and body when its target serves the Responses API; None: the chat leg."""
        if api == ANTHROPIC:
            raise wrong_api(api)
        model = self.source.model[:100]
        if api != RESPONSES:
            self.active = False
            if self.dropped:
                log.info("responses: dropped %s (no chat equivalent) for model %s", ", ".join(self.dropped), model)
            return None
        self.active = True
        target = ctx.target
        assert target is not None
        out = responses.native_body(self.source, self.history, self.translated, ctx.request,
                                    model=target.upstream_model, stream=ctx.stream)
        if out.dropped:
            log.info("responses: dropped %s for a Responses upstream (not governed) for model %s",
                     ", ".join(out.dropped), model)
        if out.rewritten:
            log.info("responses: the input guard rewrote the request; sent as guarded, without what chat cannot "
                     "carry, for model %s", model)
        return "/responses", out.body, None

    def whole(self, body: bytes) -> bytes:
        """A whole answer in the chat form (a Response read; a chat completion as it is)."""
        return responses.native_chat_completion(body) if self.active else body

    def stream(self, opened: UpstreamStream) -> UpstreamStream:
        """A stream in the chat form (a Responses event stream read as it arrives; a chat stream as it is)."""
        return ChatStream(opened, responses.NativeEvents()) if self.active else opened


__all__ = ["NativeResponses"]
