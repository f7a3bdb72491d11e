"""Input guardrails: what a request may carry, checked before any model sees it.

Every refusal is a 400 (413 for size) with ``code`` ``guardrail_violation`` and ``param`` naming
the field, and a message naming the rule. Masking rewrites the texts the detectors read (see
``request_text``); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from msgspec import UNSET

from ..core.errors import PayloadTooLarge
from ..core.wire import LEGACY_MAX_TOKENS, ChatCompletionRequest, CompletionRequest, Message
from .detectors import Finding
from .injection import injection_score
from .policy import GuardPolicy, Rules
from .refusal import CODE, refuse
from .request_text import scan_completion, scan_request
from .tool_params import check_tool_params


class InputVerdict:
    """What the input checks found: kinds of sensitive data (never values), tool names removed, signals."""

    __slots__ = ("kinds", "removed_tools", "injection")

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.removed_tools: list[str] = []
        self.injection = 0.0


def check_request(rules: Rules, policy: GuardPolicy, req: ChatCompletionRequest, body_len: int,
                  identity: str, team: str | None, count_prompt: Callable[[ChatCompletionRequest], int]
                  ) -> tuple[ChatCompletionRequest, InputVerdict]:
    """The request as it may go upstream (maybe masked, maybe with tools removed), or a refusal."""
    spec = rules.spec.input
    verdict = InputVerdict()
    _check_body(spec, body_len)
    messages = req.messages
    if spec.max_messages is not None and len(messages) > spec.max_messages:
        raise refuse("max_messages", f"at most {spec.max_messages} messages are allowed.", "messages")
    _check_params(rules, req)
    asked = req.max_completion_tokens or req.max_tokens or None
    _check_asked(spec, asked, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
    _check_content(rules, messages)
    if spec.max_prompt_tokens is not None or spec.context_window is not None:
        n = count_prompt(req)
        _check_prompt(spec, n, n, asked, "messages")  # type: ignore[arg-type]
    # with a registry, or under a rule set of its own, a tool must be granted (deny by default)
    if (req.tools or req.functions) and (policy.tools or rules is not policy.default):
        req = check_tool_params(rules, policy, req, identity, team, verdict)
    if rules.injection != "off":
        _check_injection(rules, messages, verdict)
    if rules.detector is not None and rules.input_action != "allow":
        req = _detect(rules, req, verdict)
    return req, verdict


def check_completion(rules: Rules, req: CompletionRequest, body_len: int,
                     prompt_sizes: Callable[[CompletionRequest], list[int]]) -> tuple[CompletionRequest, InputVerdict]:
    """A legacy completion as it may go upstream (maybe masked), or a refusal: the rules of a chat request that
    apply to prompts (size, parameters, ``n``, ``max_tokens``, prompt tokens: all prompts against
    ``max_prompt_tokens``, the longest against ``context_window``; the detectors).

    The detectors read text: a prompt of token ids cannot be read, so under ``mask`` or ``block`` it is
    refused (400 naming ``prompt``) rather than sent unread; under ``flag`` it passes, as flagging changes nothing.
    """
    spec = rules.spec.input
    verdict = InputVerdict()
    _check_body(spec, body_len)
    _check_params(rules, req)
    asked = req.max_tokens if type(req.max_tokens) is int else None
    _check_asked(spec, asked, "max_tokens")
    if spec.max_prompt_tokens is not None or spec.context_window is not None:
        sizes = prompt_sizes(req)
        _check_prompt(spec, sum(sizes), max(sizes), LEGACY_MAX_TOKENS if req.max_tokens is UNSET else asked, "prompt")
    action = rules.input_action
    if rules.detector is not None and action != "allow":
        if not isinstance(req.prompt, str) and not isinstance(req.prompt[0], str) and action != "flag":
            raise refuse("detectors", "a prompt of token ids cannot be read by the input detectors; send it as text.",
                         "prompt")
        req = scan_completion(rules.detector, req, lambda found, param: _found(action, found, verdict, param),
                              action == "mask")
    return req, verdict


def _check_body(spec: Any, body_len: int) -> None:
    if spec.max_body_bytes is not None and body_len > spec.max_body_bytes:
        raise PayloadTooLarge(f"Refused by guardrail `max_body_bytes`: the body exceeds {spec.max_body_bytes} bytes.",
                              code=CODE, param="body")


def _check_params(rules: Rules, req: ChatCompletionRequest | CompletionRequest) -> None:
    spec = rules.spec.input
    for name in rules.refuse:
        value = getattr(req, name, UNSET)
        if value is not UNSET and value is not None:
            raise refuse("refuse_params", f"the parameter `{name}` is not allowed here.", name)
    if spec.max_n is not None and req.n not in (UNSET, None) and req.n > spec.max_n:  # type: ignore[operator]
        raise refuse("max_n", f"n may be at most {spec.max_n}.", "n")


def _check_asked(spec: Any, asked: int | None, param: str) -> None:
    if spec.max_tokens is not None and asked is not None and asked > spec.max_tokens:
        raise refuse("max_tokens", f"at most {spec.max_tokens} output tokens may be requested.", param)


def _check_prompt(spec: Any, total: int, longest: int, asked: int | None, where: str) -> None:
    """All the prompt's tokens against ``max_prompt_tokens``; the longest sequence's, with the output asked
    for, against ``context_window`` (a chat request is one sequence: both are its prompt)."""
    if spec.max_prompt_tokens is not None and total > spec.max_prompt_tokens:
        raise refuse("max_prompt_tokens", f"the prompt is {total} tokens; at most {spec.max_prompt_tokens} are allowed.",
                      where)
    if spec.context_window is not None and longest + (asked or 0) > spec.context_window:
        raise refuse("context_window", f"{longest} prompt tokens plus {asked or 0} output tokens exceed the context "
                     f"window of {spec.context_window}.", "max_tokens" if asked else where)


def _check_content(rules: Rules, messages: list[Message]) -> None:
    allowed, hosts = rules.content, rules.image_hosts
    for i, m in enumerate(messages):
        c = m.content
        if not isinstance(c, list):
            continue
        for j, part in enumerate(c):
            kind = part.get("type")
            if kind not in allowed:
                raise refuse("content_types", f"content of type `{str(kind)[:32]}` is not allowed.",
                              f"messages[{i}].content[{j}].type")
            if kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else None
                if not isinstance(url, str):
                    raise refuse("content_types", "an image part needs image_url.url.", f"messages[{i}].content[{j}].image_url")
                parts = urlsplit(url)
                host = (parts.hostname or "").lower()
                if parts.scheme != "https" or (hosts and host not in hosts):
                    raise refuse("image_hosts", "images may come only from allowed https hosts.",
                                  f"messages[{i}].content[{j}].image_url.url")


def _check_injection(rules: Rules, messages: list[Message], verdict: InputVerdict) -> None:
    for i, m in enumerate(messages):
        if m.role != "tool" or not isinstance(m.content, str):
            continue
        score = injection_score(m.content, rules.classifier)
        verdict.injection = max(verdict.injection, score)
        if score >= rules.spec.injection.threshold and rules.injection == "block":
            raise refuse("injection", "a tool result looks like it carries instructions to the model.",
                         f"messages[{i}].content")


def _detect(rules: Rules, req: ChatCompletionRequest, verdict: InputVerdict) -> ChatCompletionRequest:
    """Every text the request carries upstream, scanned (see ``request_text``); masked under ``mask``."""
    action = rules.input_action
    return scan_request(rules.detector, req, lambda found, param: _found(action, found, verdict, param),  # type: ignore[arg-type]
                        action == "mask")


def _found(action: str, found: list[Finding], verdict: InputVerdict, param: str) -> None:
    kinds = sorted({f.kind for f in found})
    verdict.kinds.update(kinds)
    if action == "block":
        raise refuse("sensitive_data", f"the request carries sensitive data ({', '.join(kinds)}).", param)
