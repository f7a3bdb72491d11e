"""Passive circuit breaker per target: open after N failures within a window, half-open probes after a pause.

The shape follows the classic closed -> open -> half-open machine (Nygard, *Release It!*; Envoy's
outlier detection ejects on consecutive 5xx the same way). Closed is the hot path: one attribute read.
"""

from __future__ import annotations

from collections import deque

from ..core import clock

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Counts a target's recent failures; while open the target takes no traffic except one probe."""

    __slots__ = ("state", "_failures", "_limit", "_window", "_open_s", "_opened_at", "_probing", "opened", "held")

    def __init__(self, failures: int, window_s: float, open_s: float) -> None:
        self.state = CLOSED
        self._failures: deque[float] = deque(maxlen=failures)
        self._limit = failures
        self._window = window_s
        self._open_s = open_s
        self._opened_at = 0.0
        self._probing = False
        self.opened = 0  # how many times it has opened (for explanations and tests)
        self.held = False  # open until released, no half-open probe: its backend serves unapproved weights

    def allows(self) -> bool:
        """Whether a request may go to the target now; in half-open, only one probe at a time."""
        state = self.state
        if state is CLOSED:
            return True
        if state is OPEN:
            if self.held or clock.monotonic() - self._opened_at < self._open_s:
                return False
            self.state = HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        """A good answer: a probe that succeeds closes the breaker (a held one stays open)."""
        if self.state is not CLOSED and not self.held:
            self.state = CLOSED
            self._failures.clear()
        self._probing = False

    def failure(self) -> None:
        """A failed attempt: a failed probe reopens; N failures within the window open."""
        now = clock.monotonic()
        if self.state is HALF_OPEN:
            self._open(now)
            return
        failures = self._failures
        failures.append(now)
        if len(failures) == self._limit and now - failures[0] <= self._window:
            self._open(now)

    def trip(self) -> None:
        """Open now: an active health check found the target's upstream down."""
        if self.state is CLOSED:
            self._open(clock.monotonic())

    def hold(self) -> None:
        """Open, and stay open with no probe until ``release``: no replica serves the approved digest."""
        if not self.held:
            self.held = True
            if self.state is not OPEN:
                self._open(clock.monotonic())

    def release(self) -> None:
        """The approved digest is served again: closed at once (the check that found it also reached it)."""
        if self.held:
            self.held = False
            self.state = CLOSED
            self._failures.clear()
            self._probing = False

    def _open(self, now: float) -> None:
        self.state = OPEN
        self._opened_at = now
        self._probing = False
        self._failures.clear()
        self.opened += 1
