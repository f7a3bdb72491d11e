"""Anomaly throttling: an identity whose token spend jumps far above its own rolling
baseline is held to a safe request rate until a cool-down passes or an operator releases it.

The baseline is an exponential moving average of tokens per window over completed windows;
a window that tripped the alarm never becomes part of the baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from ..core.config import Anomaly


class Throttle(msgspec.Struct):
    """An identity held to the safe rate, and why."""

    identity: str
    since: float
    until: float
    tokens_in_window: float
    baseline: float


class _State:
    __slots__ = ("window", "tokens", "baseline", "seen", "until", "tripped")

    def __init__(self, window: int) -> None:
        self.window = window
        self.tokens = 0.0
        self.baseline = 0.0
        self.seen = 0
        self.until = 0.0
        self.tripped = False


class AnomalyGuard:
    """Watches spend per identity; tells the limiter whom to hold to the safe rate."""

    def __init__(self, cfg: Anomaly, on_throttle: Callable[[Throttle], None] | None = None) -> None:
        self.cfg = cfg
        self._alpha = 2.0 / (cfg.baseline_windows + 1)
        self._states: dict[str, _State] = {}
        self._throttles: dict[str, Throttle] = {}
        self._on_throttle = on_throttle or (lambda t: None)

    def observe(self, identity: str, tokens: float, now: float | None = None) -> None:
        """Count tokens an identity was served; trip the throttle on a spike."""
        now = time.time() if now is None else now
        window = int(now // self.cfg.window_s)
        st = self._states.get(identity)
        if st is None:
            if len(self._states) > 100_000:
                self._states.clear()  # bounded: only baselines are lost
            st = self._states[identity] = _State(window)
        if window != st.window:
            if not st.tripped:  # a spike never teaches the baseline
                st.baseline = st.tokens if st.seen == 0 else st.baseline + self._alpha * (st.tokens - st.baseline)
                st.seen += 1
            for _ in range(min(window - st.window - 1, self.cfg.baseline_windows)):  # idle windows count as zero
                st.baseline -= self._alpha * st.baseline
                st.seen += 1
            st.window, st.tokens, st.tripped = window, 0.0, False
        st.tokens += tokens
        if st.seen >= self.cfg.warmup_windows and not st.tripped and now >= st.until:
            limit = self.cfg.multiple * max(st.baseline, self.cfg.min_tokens)
            if st.tokens > limit:
                st.tripped = True
                st.until = now + self.cfg.cooldown_s
                t = Throttle(identity=identity, since=now, until=st.until, tokens_in_window=st.tokens, baseline=st.baseline)
                self._throttles[identity] = t
                self._on_throttle(t)

    def throttled(self, identity: str, now: float | None = None) -> bool:
        t = self._throttles.get(identity)
        if t is None:
            return False
        if (time.time() if now is None else now) >= t.until:
            del self._throttles[identity]
            return False
        return True

    def release(self, identity: str) -> bool:
        """An operator lifts a throttle; False if there was none."""
        st = self._states.get(identity)
        if st is not None:
            st.until = 0.0
        return self._throttles.pop(identity, None) is not None

    def throttles(self) -> list[Throttle]:
        now = time.time()
        return [t for t in list(self._throttles.values()) if self.throttled(t.identity, now)]
