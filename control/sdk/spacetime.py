"""Writing events into SpacetimeDB: the runtime's publisher.

```python
from control.client import SyncTokenSource
from control.runtime import SpacetimePublisher

tokens = SyncTokenSource(base_url=CONTROL_URL, api_key=KEY, streams=["run:01J9ZK"], ops=["append"])
publisher = SpacetimePublisher(SPACETIME_URL, "sync-prod", tokens)
publisher.append("run:01J9ZK", '{"step": 1}')   # buffered; returns the event's idempotency key
publisher.flush(timeout=10)                      # True once SpacetimeDB has every buffered event
publisher.close()
```

Events go to the module's `append_batch` reducer through SpacetimeDB's HTTP API
(`POST {url}/v1/database/{database}/call/append_batch`, the arguments as a JSON array, the sync
token as Bearer), in batches of up to `batch_size` events of one stream, in the order `append`
was called for that stream. Every event carries an idempotency key (`{prefix}:{n}` unless the
caller gives one); the module skips a key the stream has seen and answers as the first time, so a
batch retried after a timeout or a lost response never duplicates an event, and the stream's
`seq` stays gap-free and in order.

One batch is in flight at a time, and a failed batch is retried (the same events, the same keys)
before anything after it on any stream: 5xx, 530 from a module that is failing, timeouts and
network errors after a capped exponential backoff; 401/403 (the token expired or was revoked)
with a fresh token from the source. A refusal that retrying cannot change (530 with
`stream_not_granted`, `op_not_granted`, `invalid_request`, `payload_too_large`, or 400) drops that
batch and reports it to `on_error`.

Memory is bounded while SpacetimeDB is down: at most `max_buffered` events and
`max_buffered_bytes` of payload wait; `append` then blocks up to its `timeout` (0 by default:
at once) and raises `PublisherFull`. A reader resuming from a cursor `(stream_id, seq)` skips
events with `seq <=` its cursor; a `seq` more than one past its cursor means it missed events (its
subscription's snapshot brings them), never that they were lost.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx
import orjson

__all__ = ["PublishFailed", "PublisherFull", "SpacetimePublisher", "TokenProvider"]

KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~:-]{1,128}\Z")
MAX_BATCH = 256  # the module's limit on one `append_batch`
# Codes of a 530 that retrying cannot change: the batch is dropped and reported.
PERMANENT_CODES = ("stream_not_granted", "op_not_granted", "invalid_request", "payload_too_large")


class TokenProvider(Protocol):
    def token(self) -> str: ...


class PublisherFull(Exception):
    """The buffer is at its bound (SpacetimeDB is down or slow) and `timeout` passed."""


@dataclass(frozen=True)
class PublishFailed:
    """A batch SpacetimeDB refused for good: its stream, its events' keys and why."""

    stream_id: str
    keys: tuple[str, ...]
    status: int
    message: str


@dataclass(frozen=True)
class _Event:
    key: str
    payload: str


class SpacetimePublisher:
    """Appends events to streams through the module's `append_batch` reducer, in the
    background; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        database: str,
        tokens: TokenProvider,
        *,
        batch_size: int = 100,
        max_buffered: int = 10_000,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        timeout: float = 5.0,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        key_prefix: str | None = None,
        on_error: Callable[[PublishFailed], None] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        self._url = f"{base_url.rstrip('/')}/v1/database/{database}/call/append_batch"
        self._tokens = tokens
        self._batch_size = batch_size
        self._max_buffered = max_buffered
        self._max_bytes = max_buffered_bytes
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._prefix = key_prefix or secrets.token_hex(8)
        if not KEY_PATTERN.match(f"{self._prefix}:0"):
            raise ValueError("key_prefix must be characters of [A-Za-z0-9._~-]")
        self._on_error = on_error
        self._client = client or httpx.Client(timeout=timeout)
        self._owns_client = client is None
        self._lock = threading.Condition()
        self._streams: dict[str, deque[_Event]] = {}
        self._order: deque[str] = deque()  # streams with events waiting, round robin
        self._buffered = 0
        self._bytes = 0
        self._counter = 0
        self._sending = 0  # events in the batch in flight
        self._closed = False
        self.failures: list[PublishFailed] = []
        self.sent = 0
        self._worker = threading.Thread(target=self._run, name="spacetime-publisher", daemon=True)
        self._worker.start()

    # --- the caller's side ------------------------------------------------------------------

    def append(
        self, stream_id: str, payload: str, key: str | None = None, timeout: float | None = 0
    ) -> str:
        """Buffer one event for `stream_id`; its idempotency key. Waits up to `timeout` seconds
        (None: for as long as it takes) for room, then raises `PublisherFull`."""
        if key is not None and not KEY_PATTERN.match(key):
            raise ValueError("an idempotency key is 1 to 128 characters of [A-Za-z0-9._~:-]")
        size = len(payload.encode())
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise RuntimeError("the publisher is closed")
            while (
                self._buffered >= self._max_buffered or self._bytes + size > self._max_bytes
            ) and self._buffered > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PublisherFull(
                        f"{self._buffered} events ({self._bytes} bytes) wait for SpacetimeDB"
                    )
                self._lock.wait(left)
            if key is None:
                self._counter += 1
                key = f"{self._prefix}:{self._counter}"
            queue = self._streams.setdefault(stream_id, deque())
            if not queue:
                self._order.append(stream_id)
            queue.append(_Event(key, payload))
            self._buffered += 1
            self._bytes += size
            self._lock.notify_all()
        return key

    @property
    def pending(self) -> int:
        """Events not yet accepted by SpacetimeDB (nor dropped as refused)."""
        with self._lock:
            return self._buffered

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every buffered event is accepted (or refused for good); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._buffered:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush for up to `timeout`, then stop; False when events were left unsent."""
        flushed = self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join(timeout=self._max_backoff + 5)
        if self._owns_client:
            self._client.close()
        return flushed

    def __enter__(self) -> SpacetimePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the worker -------------------------------------------------------------------------

    def _next_batch(self) -> tuple[str, list[_Event]] | None:
        with self._lock:
            while not self._order and not self._closed:
                self._lock.wait()
            if not self._order:
                return None
            stream_id = self._order[0]
            queue = self._streams[stream_id]
            batch = [queue[i] for i in range(min(self._batch_size, len(queue)))]
            return stream_id, batch

    def _done(self, stream_id: str, batch: list[_Event]) -> None:
        with self._lock:
            queue = self._streams[stream_id]
            for _ in batch:
                event = queue.popleft()
                self._bytes -= len(event.payload.encode())
            self._buffered -= len(batch)
            self._order.popleft()
            if queue:
                self._order.append(stream_id)  # round robin: the next stream goes first
            else:
                del self._streams[stream_id]
            self._lock.notify_all()

    def _run(self) -> None:
        attempts = 0
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            stream_id, batch = nxt
            outcome = self._send(stream_id, batch)
            if outcome is None:
                attempts = 0
                self.sent += len(batch)
                self._done(stream_id, batch)
                continue
            status, message, permanent = outcome
            if permanent:
                attempts = 0
                failed = PublishFailed(stream_id, tuple(e.key for e in batch), status, message)
                self.failures.append(failed)
                self._done(stream_id, batch)
                if self._on_error is not None:
                    with contextlib.suppress(Exception):
                        self._on_error(failed)
                continue
            attempts += 1
            # A bounded exponent: the cap holds past it, and 2.0 ** 1024 overflows.
            delay = min(self._max_backoff, self._backoff * 2.0 ** min(attempts - 1, 64))
            with self._lock:
                if self._closed:
                    return
                self._lock.wait(delay)

    def _send(self, stream_id: str, batch: list[_Event]) -> tuple[int, str, bool] | None:
        """One `append_batch` call; None when SpacetimeDB accepted it, else (status, message,
        whether retrying cannot help)."""
        body = orjson.dumps([stream_id, [e.key for e in batch], [e.payload for e in batch]])
        try:
            token = self._tokens.token()
        except Exception as exc:  # the control plane is down too: retry later
            return 0, f"no token: {type(exc).__name__}", False
        try:
            response = self._client.post(
                self._url,
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return 0, type(exc).__name__, False
        if response.status_code == 200:
            return None
        message = response.text[:200]
        if response.status_code == 400:
            return 400, message, True
        if response.status_code == 530:
            code = message.split(":", 1)[0].strip()
            return 530, message, code in PERMANENT_CODES
        return response.status_code, message, False
