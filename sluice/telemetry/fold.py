"""What happens to a batch of usage records before the store sees them, off the request path:
each is priced, folded into the metrics, and (if configured) logged as one JSON line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

import msgspec

from ..core.types import UsageRecord
from .logging import SecretMasker
from .metrics import Metrics

# model, prompt, completion, cached, price (None: the model's), cache writes -> nano-units
Price = Callable[[str | None, int, int, int, None, int], int]

request_log = logging.getLogger("sluice.request")
_encode = msgspec.json.Encoder().encode


class RecordFold:
    """Prices records, observes them in the metrics, writes the per-request log lines."""

    def __init__(self, metrics: Metrics, price: Price | None = None, *, masker: SecretMasker | None = None,
                 log_requests: bool = True, stream: TextIO | None = None) -> None:
        self._metrics = metrics
        self._price = price
        self._masker = masker or SecretMasker()
        self._log_requests = log_requests
        self._stream = stream

    def __call__(self, batch: list[UsageRecord]) -> None:
        price = self._price
        if price is not None:
            for rec in batch:
                if not rec.cost_nanos and rec.model is not None and (rec.prompt_tokens or rec.completion_tokens):
                    rec.cost_nanos = price(rec.model, rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens, None,
                                           rec.cache_creation_tokens)
        self._metrics.observe(batch)
        if self._log_requests and request_log.isEnabledFor(logging.INFO):
            self._write(batch)

    def _write(self, batch: list[UsageRecord]) -> None:
        """One JSON object per request, masked, in one write: the shape of the other log lines plus the request."""
        lines = []
        for rec in batch:
            lines.append(_encode({
                "ts": _ts(rec.ts), "level": "info", "logger": "sluice.request", "msg": "request",
                "request_id": rec.request_id, "identity": rec.identity_id, "team": rec.team,
                "endpoint": rec.endpoint, "model": rec.model, "route": rec.route,
                # the target as x-sluice-route names it (model@version), and the upstream that served it
                "target": f"{rec.model}@{rec.version}" if rec.version else None, "upstream": rec.upstream,
                "status": rec.status, "error": rec.error_code, "stream": rec.stream,
                "latency_ms": round(rec.latency_ms, 2),
                "ttft_ms": None if rec.ttft_ms is None else round(rec.ttft_ms, 2),
                "upstream_ms": None if rec.upstream_ms is None else round(rec.upstream_ms, 2),
                "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens,
                "cached_tokens": rec.cached_tokens, "cache_creation_tokens": rec.cache_creation_tokens,
                "cost_nanos": rec.cost_nanos, "api": rec.api, "listener": rec.listener,
            }))
        text = self._masker.mask(b"\n".join(lines).decode()) + "\n"
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed stderr must not stop the ledger
            pass


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"
