"""Per-principal token buckets for mint attempts, shared out across the fleet.

`CONTROL_MINT_RATE_PER_SECOND` and `CONTROL_MINT_BURST` are the fleet's: each of N live
replicas (`control.tokens.replicas`) enforces `rate / N` per second with a bucket of `burst / N`
(at least one token), so together they admit at most `rate` per second after a `burst`, per
principal, with no database write per mint. docs/operations.md states the tolerance.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_keys = max_keys
        self.replicas = 1
        # principal -> (tokens, when last touched), least recently touched first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def share(self, replicas: int) -> None:
        """From now on, enforce this replica's share of the fleet's limits: 1 / `replicas`."""
        self.replicas = max(1, replicas)

    @property
    def local_rate(self) -> float:
        return self.rate / self.replicas

    @property
    def local_burst(self) -> float:
        # Never below one token, or a principal could never mint on a replica of a big fleet.
        return max(1.0, self.burst / self.replicas)

    def acquire(self, key: str) -> float | None:
        """Take one token; None when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        rate, capacity = self.local_rate, self.local_burst
        with self._lock:
            self._forget_full(now, capacity / rate)
            tokens, last = self._buckets.pop(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > self.max_keys:  # bounded memory under key churn
                self._buckets.popitem(last=False)
            return None if allowed else (1.0 - tokens) / rate

    def _forget_full(self, now: float, refill: float) -> None:
        # A bucket untouched for `refill` seconds is full again, exactly as a new one would
        # be: dropping it loses nothing. The oldest are first, so this stops at the first
        # bucket still refilling.
        while self._buckets:
            key, (_, last) = next(iter(self._buckets.items()))
            if now - last < refill:
                return
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

    @staticmethod
    def retry_after(wait: float) -> int:
        return max(1, math.ceil(wait))
