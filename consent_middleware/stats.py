"""Counters the middleware keeps, so operators can see what enforcement did."""

from __future__ import annotations

import threading
from collections import Counter


class ConsentStats:
    """Thread-safe counters of one middleware instance (shared by its requests).

    - ``stripped_cookies``: ``Set-Cookie`` headers removed, by purpose;
    - ``invalid_cookies``: consent cookies that did not verify (tampered, expired, …);
    - ``decisions``: decisions made, by action;
    - ``refused``: state-changing requests refused, by reason (``cross_origin``, ``bad_request``).

    Pass one instance as ``ConsentMiddleware(..., stats=...)`` to read it from the app.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stripped_cookies: Counter[str] = Counter()
        self.invalid_cookies = 0
        self.decisions: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def count_stripped(self, purpose: str) -> None:
        """One ``Set-Cookie`` for ``purpose`` was removed."""
        with self._lock:
            self.stripped_cookies[purpose] += 1

    def count_invalid_cookie(self) -> None:
        """A consent cookie was present but did not verify."""
        with self._lock:
            self.invalid_cookies += 1

    def count_decision(self, action: str) -> None:
        """A decision with ``action`` was made."""
        with self._lock:
            self.decisions[action] += 1

    def count_refused(self, reason: str) -> None:
        """A request to change consent was refused for ``reason``."""
        with self._lock:
            self.refused[reason] += 1

    @property
    def stripped_total(self) -> int:
        """All ``Set-Cookie`` headers removed so far."""
        with self._lock:
            return sum(self.stripped_cookies.values())

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy of every counter."""
        with self._lock:
            return {
                "stripped_cookies": dict(self.stripped_cookies),
                "invalid_cookies": self.invalid_cookies,
                "decisions": dict(self.decisions),
                "refused": dict(self.refused),
            }

    def __repr__(self) -> str:
        return f"ConsentStats({self.snapshot()!r})"
