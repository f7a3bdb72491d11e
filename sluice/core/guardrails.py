"""The config schema of guardrails and the tool registry: ``guardrails:`` and ``tools:``.

Typed here (core owns the config schema); ``sluice.guard.parse`` turns a raw section into these
structs and ``sluice.guard.compile_policy`` compiles them for the hot path. A request meets the
first rule set whose ``match`` fits it; one that fits none meets the defaults of ``RuleSet``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .types import MAX_INT

Action = Literal["allow", "mask", "block", "flag"]
Risk = Literal["read", "write", "high"]
ContentType = Literal["text", "image_url", "input_audio", "file"]
_Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
_Field = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{1,64}$")]  # a reply field's name


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class GuardMatch(_Strict):
    """Which requests a rule set covers; an empty list matches anything."""

    models: list[str] = msgspec.field(default_factory=list)
    identities: list[str] = msgspec.field(default_factory=list)
    teams: list[str] = msgspec.field(default_factory=list)


class InputRules(_Strict):
    """What a request may carry before any model sees it."""

    max_body_bytes: _Count | None = None  # 413 above it (the listener's limit still applies)
    max_messages: _Count | None = None
    max_prompt_tokens: _Count | None = None
    context_window: _Count | None = None  # prompt tokens + max_tokens must fit
    max_tokens: _Count | None = None  # refused above it (limits.max_tokens_cap may clamp instead)
    max_n: _Count | None = 1  # n above it is refused
    refuse_params: list[str] = msgspec.field(default_factory=lambda: ["logit_bias"])
    content_types: list[ContentType] = msgspec.field(default_factory=lambda: ["text", "image_url"])
    image_hosts: list[str] = msgspec.field(default_factory=list)  # empty: any https host


class DetectorRules(_Strict):
    """Sensitive-data detectors and what to do on a hit, for prompts and for replies."""

    input: Action = "allow"
    output: Action = "allow"
    kinds: list[str] = msgspec.field(default_factory=list)  # empty: every built-in kind


class OutputRules(_Strict):
    """Output minimisation: fields beyond the OpenAI basics are stripped unless listed."""

    expose: list[_Field] = msgspec.field(default_factory=list)  # e.g. logprobs, system_fingerprint
    # chars of a stream held back at most (the look-behind is half of it: at least a PEM header)
    stream_window: Annotated[int, msgspec.Meta(ge=96, le=4096)] = 128
    # which stream events are decoded strictly for fields to strip: a stream's first 8 and those that
    # close it (and every one after any of those had something), or every event (~1 µs each)
    stream_check: Literal["sampled", "every_event"] = "sampled"


class ToolRules(_Strict):
    """Tool definitions a caller may not use (``tools``, the legacy ``functions``): refused (400) or removed
    before the upstream; how long a held call waits and how many one reply may hold."""

    undeclared: Literal["refuse", "remove"] = "refuse"
    approval_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 900.0
    # calls of one reply held for approval at most; a high-risk call past it is blocked, not held
    max_held_per_reply: Annotated[int, msgspec.Meta(ge=0, le=256)] = 4


class InjectionRules(_Strict):
    """The prompt-injection signal on tool results (a heuristic: a signal, not a promise)."""

    action: Literal["off", "flag", "block"] = "off"
    classifier: str | None = None  # "module:function" taking the text, returning a score in 0..1
    threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5


class CaptureRules(_Strict):
    """Prompt capture: masked text only, kept for ``retention_days``, purged by ``sluice prompts purge``."""

    enabled: bool = False
    retention_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 7.0


class RuleSet(_Strict):
    """One named set of guardrails for the requests its ``match`` covers."""

    name: str = "default"
    match: GuardMatch = msgspec.field(default_factory=GuardMatch)
    input: InputRules = msgspec.field(default_factory=InputRules)
    detectors: DetectorRules = msgspec.field(default_factory=DetectorRules)
    output: OutputRules = msgspec.field(default_factory=OutputRules)
    tools: ToolRules = msgspec.field(default_factory=ToolRules)
    injection: InjectionRules = msgspec.field(default_factory=InjectionRules)
    capture: CaptureRules = msgspec.field(default_factory=CaptureRules)


class ExposeGrant(_Strict):
    """Reply fields beyond the OpenAI basics that these identities or teams see (e.g. ``logprobs``)."""

    fields: list[_Field]
    identities: list[str] = msgspec.field(default_factory=list)
    teams: list[str] = msgspec.field(default_factory=list)


class ApprovalRules(_Strict):
    """Held tool calls (issue 23): how many may wait per identity, and who may not approve them.

    An approver is never the requester's identity nor an identity of the same owner; with
    ``separate_teams`` not one of the same team either.
    """

    # pending approvals one identity may have at once (counted in the store, across replicas); 429 past it
    max_pending_per_identity: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    separate_teams: bool = False


class Guardrails(_Strict):
    """``guardrails:``: rule sets, first match wins; none at all turns the input checks off.

    Output minimisation is on whatever this holds; ``expose`` grants callers fields it would strip.
    """

    rule_sets: list[RuleSet] = msgspec.field(default_factory=list)
    expose: list[ExposeGrant] = msgspec.field(default_factory=list)
    approvals: ApprovalRules = msgspec.field(default_factory=ApprovalRules)


class ToolSpec(_Strict):
    """One tool of the registry (``tools:``): who may use it, how risky it is, its arguments' schema."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    risk: Risk = "read"
    identities: list[str] = msgspec.field(default_factory=list)
    teams: list[str] = msgspec.field(default_factory=list)
    parameters: dict | None = None  # JSON Schema of the arguments
