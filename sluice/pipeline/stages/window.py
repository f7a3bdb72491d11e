"""Stage: does it fit the chosen version's context window? Refused before any upstream call if not."""

from __future__ import annotations

from msgspec import UNSET

from ...core.errors import InvalidRequest
from ...core.wire import LEGACY_MAX_TOKENS, CompletionRequest, EmbeddingRequest
from ...limits import prompt_sizes
from ..context import RequestContext


class ContextWindow:
    """Prompt tokens plus the completion asked for must fit the target version's ``context_window``
    (versions without one are not checked: the upstream decides). OpenAI's status, code and wording.
    The size is kept on the decision, so a fallback whose window is smaller is passed over."""

    __slots__ = ()

    def __call__(self, ctx: RequestContext) -> None:
        decision = ctx.decision
        if not decision.route.windowed:  # type: ignore[union-attr]
            return
        target = ctx.target
        req = ctx.request
        where = "messages"
        if isinstance(req, CompletionRequest):  # each prompt is its own sequence: the longest must fit
            where = "prompt"
            prompt = max(prompt_sizes(req, target.upstream_model, target.model))  # type: ignore[union-attr]
            asked = req.max_tokens
            completion = asked if type(asked) is int else LEGACY_MAX_TOKENS if asked is UNSET else 0
        else:
            prompt = ctx.prompt_estimate()
            completion = 0
            if type(req) is not EmbeddingRequest:  # chat, or its wider type with extra parameters
                asked = req.max_completion_tokens if type(req.max_completion_tokens) is int else req.max_tokens
                completion = asked if type(asked) is int else 0
        decision.needed = prompt + completion  # type: ignore[union-attr]
        window = target.context_window  # type: ignore[union-attr]
        if window is not None and prompt + completion > window:
            raise InvalidRequest(
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt + completion} tokens ({prompt} in the {where}, {completion} in the completion). "
                f"Please reduce the length of the {where} or completion.",
                code="context_length_exceeded", param=where)
