"""Stage: guard-in. Input guardrails before any model sees the request; arms the output guard.

Runs after routing (rules may name models) and before limits (a refused request reserves
nothing). The rules are the ``guardrails`` and ``tools`` sections of the policy version the request
was routed under (``ctx.policy.guard``), so a change set turns them on, changes or removes them with
no restart. Output minimisation is armed for every chat completion, guardrails or none: a version
with no rule set, tool or expose grant costs one attribute check and an ``OutputGuard`` that only
minimises; asking for ``logprobs`` the caller may not see is refused here (400), before any work.
A legacy completion gets the rules that apply to a prompt (``guard.inputs.check_completion``) and an
output guard that reads its choices' ``text``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ...core import clock
from ...core.wire import ChatCompletionRequest, CompletionRequest
from ...core.guardrails import Guardrails
from ...guard import GuardPolicy, Judgement, OutputGuard, ToolApprovals, check_request, context_digest
from ...guard.inputs import check_completion
from ...guard.approvals import MASK
from ...guard.refusal import refuse
from ...guard.minimise import Shape
from ...guard.tools import masked_args
from ...limits import prompt_sizes, prompt_tokens
from ..context import RequestContext

log = logging.getLogger("sluice.guard")
_NONE = GuardPolicy(Guardrails(), [])  # a version without guardrails: the defaults, which only minimise
# APIs whose adapter re-encodes answers from the chat form writing only what its API documents, so that no
# vendor field can reach the caller (Messages: not even reasoning, which would need Anthropic's signature);
# the Responses adapter encodes reasoning_content as a reasoning item, so its answers are minimised first
_REENCODED = frozenset({"messages"})


async def _no_hold(_: Judgement) -> str:  # no tool registry, no tool call is ever judged
    raise AssertionError("no tool registry")


def _no_record(_: Judgement) -> None:
    pass


class Guard:
    """Checks the request against its rule set; leaves an ``OutputGuard`` on the context."""

    __slots__ = ("_approvals", "_capture")

    def __init__(self, approvals: ToolApprovals | None, capture: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._approvals = approvals
        self._capture = capture

    def __call__(self, ctx: RequestContext) -> None:  # never waits: a plain call (pipeline.endpoints.Stage)
        req = ctx.request
        if type(req) is not ChatCompletionRequest and not isinstance(req, ChatCompletionRequest):
            if isinstance(req, CompletionRequest):
                return self._completion(ctx, req)
            return  # embeddings: nothing in them to minimise (see the README)
        active = ctx.policy
        policy: GuardPolicy | None = active.guard if active is not None else None
        p = ctx.principal
        if policy is None or not policy.active:  # no input rules and no tools: minimise the output only
            if ctx.endpoint in _REENCODED:
                return  # nothing to minimise: the adapter's encoder writes only what its API documents
            policy = policy or _NONE
            rules = policy.default
            exposed = policy.shape_for(rules, p.identity_name, p.team)  # type: ignore[union-attr]
            _check_logprobs(req, exposed)
            ctx.guard = OutputGuard(rules, policy, p.identity_name, p.team, tools=False,  # type: ignore[union-attr]
                                    hold=_no_hold, record=_no_record, exposed=exposed, every_event=_several(req))
            return
        rules = policy.rules_for(ctx.decision.route.served, p.identity_name, p.team)  # type: ignore[union-attr]
        exposed = policy.shape_for(rules, p.identity_name, p.team)  # type: ignore[union-attr]
        _check_logprobs(req, exposed)
        upstream_model, model = ctx.target.upstream_model, ctx.target.model  # type: ignore[union-attr]
        req, verdict = check_request(rules, policy, req, len(ctx.exchange.body), p.identity_name, p.team,  # type: ignore[union-attr]
                                     lambda r: prompt_tokens(r, upstream_model, model))
        ctx.request = req
        rid = ctx.exchange.request_id
        if verdict.kinds or verdict.removed_tools:
            ctx.flagged = True
        if verdict.kinds:  # kinds only: the values never reach a log
            log.warning("guard: request %s carries %s (%s)", rid, ",".join(sorted(verdict.kinds)), rules.input_action)
        if verdict.removed_tools:
            log.info("guard: request %s: tools removed: %s", rid, ",".join(verdict.removed_tools))
        if verdict.injection >= rules.spec.injection.threshold:
            log.warning("guard: request %s: tool result looks like prompt injection (score %.2f)", rid, verdict.injection)
        if rules.spec.capture.enabled and self._capture is not None:
            self._capture(_captured(rules, req, ctx, p.identity_id))  # type: ignore[union-attr]
        tools = bool(policy.tools)  # a registry judges every call a reply makes, offered or not
        ctx.guard = OutputGuard(rules, policy, p.identity_name, p.team, tools=tools,  # type: ignore[union-attr]
                                hold=self._holder(ctx, rules), record=self._recorder(ctx), request_id=rid, exposed=exposed,
                                every_event=_several(req))

    def _completion(self, ctx: RequestContext, req: CompletionRequest) -> None:
        """A legacy completion: the prompt rules and detectors where a rule set applies; always an output guard
        over its choices' text (it makes no tool calls)."""
        active = ctx.policy
        policy: GuardPolicy = (active.guard if active is not None else None) or _NONE
        p = ctx.principal
        rules = policy.default
        if policy.active:
            rules = policy.rules_for(ctx.decision.route.served, p.identity_name, p.team)  # type: ignore[union-attr]
        exposed = policy.shape_for(rules, p.identity_name, p.team)  # type: ignore[union-attr]
        _check_logprobs(req, exposed)
        rid = ctx.exchange.request_id
        if policy.active:  # no tool rules here: a completion offers no tools and makes no calls
            t = ctx.target
            req, verdict = check_completion(rules, req, len(ctx.exchange.body),
                                            lambda r: prompt_sizes(r, t.upstream_model, t.model))  # type: ignore[union-attr]
            ctx.request = req
            if verdict.kinds:  # kinds only: the values never reach a log
                log.warning("guard: request %s carries %s (%s)", rid, ",".join(sorted(verdict.kinds)), rules.input_action)
            if rules.spec.capture.enabled and self._capture is not None:
                self._capture(_captured(rules, req, ctx, p.identity_id))  # type: ignore[union-attr]
        ctx.guard = OutputGuard(rules, policy, p.identity_name, p.team, tools=False, hold=_no_hold,  # type: ignore[union-attr]
                                record=_no_record, request_id=rid, exposed=exposed, every_event=_several(req),
                                completions=True)

    def _holder(self, ctx: RequestContext, rules: Any) -> Callable[[Judgement], Any]:
        approvals = self._approvals

        async def hold(j: Judgement) -> str:
            assert approvals is not None, "a tool registry always comes with the approval book"
            p = ctx.principal
            return await approvals.hold(j, identity_id=p.identity_id, identity_name=p.identity_name,  # type: ignore[union-attr]
                                        request_id=ctx.exchange.request_id, model=ctx.request.model,
                                        context=context_digest(ctx.request.messages), ttl_s=rules.spec.tools.approval_ttl_s)
        return hold

    def _recorder(self, ctx: RequestContext) -> Callable[[Judgement], None]:
        approvals = self._approvals

        def record(j: Judgement) -> None:
            if approvals is None:
                return
            p, active = ctx.principal, ctx.policy
            approvals.record([{
                "ts": clock.now(), "request_id": ctx.exchange.request_id, "identity_id": p.identity_id,  # type: ignore[union-attr]
                "model": ctx.request.model, "context_digest": context_digest(ctx.request.messages),
                "tool": j.call.name[:64], "call_id": j.call.id[:128], "decision": j.verdict, "reason": j.reason[:256],
                "args_masked": _masked(j.canonical or j.call.arguments), "args_sha256": j.args_sha256, "approval_id": j.approval_id,
                "approver": None, "policy_version": active.version, "policy_hash": active.hash}])
        return record


def _check_logprobs(req: ChatCompletionRequest | CompletionRequest, exposed: Shape) -> None:
    """Asking for log probabilities the reply would not carry is refused: the upstream would compute
    them for nothing, and a client reading them would find null. (A legacy completion asks with a number:
    0 still returns the sampled token's.)"""
    if "logprobs" not in exposed.expose:
        if req.logprobs is True or type(req.logprobs) is int:
            raise refuse("expose", "logprobs are not exposed to you (guardrails.expose).", "logprobs")
        if getattr(req, "top_logprobs", None):  # UNSET and None are falsy, and so is 0 (no such field: legacy)
            raise refuse("expose", "logprobs are not exposed to you (guardrails.expose).", "top_logprobs")
    if type(req) is not ChatCompletionRequest and "prompt_logprobs" not in exposed.expose:
        if getattr(req, "prompt_logprobs", None):  # a model whose upstream takes vLLM's extras
            raise refuse("expose", "prompt_logprobs are not exposed to you (guardrails.expose).", "prompt_logprobs")


def _several(req: ChatCompletionRequest | CompletionRequest) -> bool:
    """Whether a reply has several choices: each ends with its own finish chunk, anywhere in the
    stream, so sampled checking could miss one; such streams are checked on every event. (A legacy
    completion has ``n`` choices per prompt.)"""
    n = req.n
    return (type(n) is int and n > 1) or (isinstance(req, CompletionRequest) and len(req.prompts()) > 1)


def _masked(arguments: str) -> str:
    """A decision's record of the arguments: the canonical form where they parsed (what the approver sees), masked."""
    return masked_args(arguments, MASK)


def _captured(rules: Any, req: ChatCompletionRequest | CompletionRequest, ctx: RequestContext, identity_id: str) -> dict[str, Any]:
    """What prompt capture keeps: every message's text (a legacy completion's prompts), masked whatever the
    route's detector action."""
    detector = rules.detector or MASK
    texts = []
    if isinstance(req, CompletionRequest):  # token ids are kept as their count: they are no text
        texts = [detector.mask(p) if isinstance(p, str) else f"[{len(p)} token ids]" for p in req.prompts()]
    for m in getattr(req, "messages", ()):
        c = m.content
        if isinstance(c, str):
            texts.append(f"{m.role}: {detector.mask(c)}")
        elif isinstance(c, list):  # the parts read as one text, as the input detectors read them
            joined = "".join(p["text"] for p in c if isinstance(p.get("text"), str))
            if joined:
                texts.append(f"{m.role}: {detector.mask(joined)}")
    now = clock.now()
    return {"ts": now, "expires_at": now + rules.spec.capture.retention_days * 86400.0,
            "request_id": ctx.exchange.request_id, "identity_id": identity_id, "model": req.model,
            "text": "\n".join(texts)[:65536]}
