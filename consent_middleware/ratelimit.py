"""A small per-client token bucket, so the privacy endpoints cannot be used to scan.

Each client (the ASGI ``scope["client"]`` host) has a bucket of ``burst`` tokens that
refills at ``rate`` tokens per second; a request takes one token or is refused with the
number of seconds until the next one. Memory is bounded: at most ``max_clients`` buckets
are kept, the least recently used is forgotten first (a forgotten client starts full,
which only ever errs towards letting a real visitor through).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """Token buckets keyed by client; :meth:`take` is O(1) and thread-safe."""

    def __init__(
        self,
        *,
        burst: int = 10,
        rate: float = 10 / 60,  # tokens per second: 10 requests a minute after the burst
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or rate <= 0 or max_clients < 1:
            raise ValueError("need burst >= 1, rate > 0 and max_clients >= 1")
        self.burst = burst
        self.rate = rate
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, time
        self._lock = threading.Lock()

    @property
    def clients(self) -> int:
        """How many clients have a bucket right now (at most ``max_clients``)."""
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Take one token for ``client``: 0.0 when allowed, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)  # most recently used last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` header value (whole seconds, at least 1) for ``wait``."""
        return str(max(1, math.ceil(wait)))
