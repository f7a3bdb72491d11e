"""Structured logs with secrets masked before any handler sees them."""

from __future__ import annotations

import logging
import re
import sys
import time

import msgspec

# sluice keys, bearer tokens, and OpenAI-style keys; replaced whole.
_PATTERNS = re.compile(
    r"(sl[ka]_[A-Za-z0-9_]{8,})|((?i:bearer)\s+[A-Za-z0-9._~+/=-]{6,})|(sk-[A-Za-z0-9_-]{8,})"
)
MASK = "***"


class SecretMasker(logging.Filter):
    """Replaces known secrets and anything shaped like a key in every record's message."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self._secrets = sorted({s for s in (secrets or []) if len(s) >= 8}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, MASK)
        return _PATTERNS.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        record.msg = self.mask(msg)
        record.args = None
        if record.exc_info:
            # Tracebacks can hold request data; keep the type only.
            record.msg += f" ({record.exc_info[0].__name__ if record.exc_info[0] else 'error'})"
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        return msgspec.json.encode({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }).decode()


def configure(level: str = "info", fmt: str = "json", secrets: list[str] | None = None) -> SecretMasker:
    """Route all logs to stderr through the masker; returns it so more secrets can be added."""
    masker = SecretMasker(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(masker)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return masker
