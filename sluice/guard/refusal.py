"""The one shape of a guardrail refusal: 400 ``guardrail_violation`` naming the rule and the field."""

from __future__ import annotations

from ..core.errors import InvalidRequest

CODE = "guardrail_violation"


def refuse(rule: str, message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(f"Refused by guardrail `{rule}`: {message}", code=CODE, param=param)
