"""Keeping a fresh sync token, for clients.

```python
from control.client import SyncTokenSource
source = SyncTokenSource(base_url=..., api_key=..., streams=["run:01J9ZK"])
source.token()    # the JWT; cached; refreshed after `refresh_after` (with jitter)
```

`token()` hands out the current token for as long as it is valid, and never waits for a
refresh while it is: once `refresh_after` (plus a random share of the time left, so a fleet
that minted together does not refresh together) has passed, one refresh starts in the
background and callers keep the current token meanwhile. Only one refresh is ever in flight,
however many threads ask. A refresh retries 429 / 503 / network errors with exponential
backoff, honouring `Retry-After`; when all its attempts fail, the next one starts no sooner than
about 0.5, 1, 2 ... seconds later (`backoff` doubled per failed refresh, capped at 30 s).

Callers wait only when there is no valid token (a token is used until `expiry_margin`, 5 s,
before its `expires_at`): on the first call, and after expiry. Before any token, a 401 raises
`CredentialRejected` and a 403 `StreamsDenied` (with the `denied` list), neither retried. Once
a token has expired and refreshing keeps failing, `TokenExpired` says so (its `__cause__` is
the last failure), at once while the next refresh is not yet due. `AsyncSyncTokenSource` is the
asyncio twin, with the same behaviour on its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from typing_extensions import TypedDict, Unpack

__all__ = [
    "AsyncSyncTokenSource",
    "CredentialRejected",
    "StreamsDenied",
    "SyncToken",
    "SyncTokenSource",
    "TokenExpired",
    "TokenSourceError",
]

TOKEN_PATH = "/api/sync/token"  # noqa: S105 - a path
RETRYABLE = frozenset({429, 502, 503, 504})
MAX_DELAY = 30.0


class TokenSourceError(Exception):
    """A token could not be had; `status` and `code` come from the problem response."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class CredentialRejected(TokenSourceError):
    """401: the API key is unknown, revoked, expired, or its principal is disabled."""


class StreamsDenied(TokenSourceError):
    """403: policy does not grant what was asked for; `denied` says what and why."""

    def __init__(self, message: str, *, denied: list[dict[str, str]], code: str | None = None):
        super().__init__(message, status=403, code=code)
        self.denied = denied


class TokenExpired(TokenSourceError):
    """The token has expired (or is within `expiry_margin` of it) and refreshing it keeps failing.
    `__cause__` is the last failure (`CredentialRejected`, `StreamsDenied` or another
    `TokenSourceError`); `status` and `code` are its own."""


@dataclass(frozen=True)
class SyncToken:
    token: str
    expires_at: float
    refresh_after: float
    response: dict[str, Any] = field(repr=False)


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class _Policy:
    """The parts shared by the sync and async sources: request, parsing, timing."""

    streams: Sequence[str]
    query_sets: Sequence[str] | None
    ops: Sequence[str] | None
    ttl_seconds: int | None
    device_id: str | None
    max_attempts: int
    backoff: float
    refresh_jitter: float
    expiry_margin: float = 5.0

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"streams": list(self.streams)}
        for name in ("query_sets", "ops", "ttl_seconds", "device_id"):
            value = getattr(self, name)
            if value is not None:
                body[name] = list(value) if isinstance(value, list | tuple) else value
        return body

    def fresh(self, current: SyncToken | None, now: float) -> bool:
        return current is not None and now < current.refresh_after

    def still_valid(self, current: SyncToken | None, now: float) -> bool:
        # A margin, so the token is not already dead when it reaches the server.
        return current is not None and now < current.expires_at - self.expiry_margin

    def parse(self, response: httpx.Response) -> SyncToken | float:
        """The token, or the seconds to wait before retrying; raises when retrying is futile."""
        if response.status_code == 200:
            body = response.json()
            expires_at = _epoch(body["expires_at"])
            refresh_after = _epoch(body["refresh_after"])
            # Spread refreshes of clients that minted together, never past the expiry.
            jitter = random.uniform(0, self.refresh_jitter * (expires_at - refresh_after))
            return SyncToken(body["token"], expires_at, refresh_after + jitter, body)
        problem: dict[str, Any] = {}
        if "json" in response.headers.get("content-type", ""):
            problem = response.json()
        detail, code = str(problem.get("detail", response.reason_phrase)), problem.get("code")
        if response.status_code == 401:
            raise CredentialRejected(detail, status=401, code=code)
        if response.status_code == 403:
            raise StreamsDenied(detail, denied=problem.get("denied", []), code=code)
        if response.status_code in RETRYABLE:
            retry_after = response.headers.get("retry-after", "")
            return float(retry_after) if retry_after.isdigit() else -1.0
        raise TokenSourceError(detail, status=response.status_code, code=code)

    def delay(self, attempt: int, hinted: float) -> float:
        # A caller blocked in token() waits at most MAX_DELAY per retry, whatever the hint.
        if hinted >= 0:
            return min(hinted, MAX_DELAY)
        return min(self.backoff * 2.0**attempt * random.uniform(0.5, 1.5), MAX_DELAY)


class SourceOptions(TypedDict, total=False):
    query_sets: Sequence[str] | None
    ops: Sequence[str] | None
    ttl_seconds: int | None
    device_id: str | None
    max_attempts: int
    backoff: float
    refresh_jitter: float
    expiry_margin: float


class _TokenSourceBase:
    """What both sources hold: the request they make, the credential, the current token, and
    how the last refreshes went."""

    def __init__(
        self,
        api_key: str,
        streams: Sequence[str],
        *,
        query_sets: Sequence[str] | None = None,
        ops: Sequence[str] | None = None,
        ttl_seconds: int | None = None,
        device_id: str | None = None,
        max_attempts: int = 5,
        backoff: float = 0.5,
        refresh_jitter: float = 0.5,
        expiry_margin: float = 5.0,
    ) -> None:
        self._policy = _Policy(
            streams,
            query_sets,
            ops,
            ttl_seconds,
            device_id,
            max_attempts,
            backoff,
            refresh_jitter,
            expiry_margin,
        )
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._current: SyncToken | None = None
        self._failures = 0  # refreshes in a row whose every attempt failed
        self._retry_at = 0.0  # no refresh starts before this (epoch seconds)
        self._last_error: BaseException | None = None

    def _may_refresh(self, now: float) -> bool:
        return now >= self._retry_at

    def _settle(self, outcome: SyncToken | BaseException) -> None:
        """Record a finished refresh: the new token, or a failure that defers the next one."""
        if isinstance(outcome, SyncToken):
            self._current, self._failures, self._retry_at = outcome, 0, 0.0
            self._last_error = None
            return
        self._retry_at = time.time() + self._policy.delay(self._failures, -1.0)
        self._failures += 1
        self._last_error = outcome

    def _failure(self, error: BaseException | None) -> TokenSourceError:
        """What a caller left without a valid token is told."""
        if self._current is not None:
            expired_at = datetime.fromtimestamp(self._current.expires_at, UTC).isoformat()
            expired = TokenExpired(
                f"the sync token expired at {expired_at} and refreshing it keeps failing: {error}",
                status=getattr(error, "status", None),
                code=getattr(error, "code", None),
            )
            expired.__cause__ = error
            return expired
        if isinstance(error, TokenSourceError):
            return error
        failed = TokenSourceError(f"no token: {error}")
        failed.__cause__ = error
        return failed


class _Flight:
    """One refresh in flight, which every caller without a valid token waits for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: SyncToken | BaseException | None = None


class SyncTokenSource(_TokenSourceBase):
    """A cached, self-refreshing sync token. Thread-safe. Options: see `SourceOptions`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        streams: Sequence[str],
        *,
        http: httpx.Client | None = None,
        **options: Unpack[SourceOptions],
    ) -> None:
        super().__init__(api_key, streams, **options)
        self._http = http or httpx.Client(base_url=base_url, timeout=10.0)
        self._owns_http = http is None
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self._closed = threading.Event()

    def token(self) -> str:
        """A valid sync token; see the module's description for when it waits."""
        return self.current().token

    def current(self) -> SyncToken:
        now = time.time()
        current = self._current
        if current is not None and now < current.refresh_after:
            return current
        with self._lock:
            current = self._current
            if self._policy.still_valid(current, now):
                assert current is not None
                due = now >= current.refresh_after and self._may_refresh(now)
                if due and self._flight is None:
                    self._start()
                return current
            flight = self._flight
            if flight is None:
                if self._last_error is not None and not self._may_refresh(now):
                    raise self._failure(self._last_error)
                flight = self._start()
        flight.done.wait()
        outcome = flight.outcome
        if isinstance(outcome, SyncToken):
            return outcome
        with self._lock:
            raise self._failure(outcome)

    def _start(self) -> _Flight:
        """Start the one refresh (with `_lock` held)."""
        flight = self._flight = _Flight()
        threading.Thread(
            target=self._refresh, args=(flight,), name="control-token-refresh", daemon=True
        ).start()
        return flight

    def _refresh(self, flight: _Flight) -> None:
        outcome: SyncToken | BaseException
        try:
            outcome = self._fetch()
        except Exception as exc:  # handed to whoever waits, or kept for the next caller
            outcome = exc
        with self._lock:
            self._settle(outcome)
            self._flight = None
        flight.outcome = outcome
        flight.done.set()

    def _fetch(self) -> SyncToken:
        last_error: Exception | None = None
        for attempt in range(self._policy.max_attempts):
            if self._closed.is_set():
                raise TokenSourceError("the token source is closed")
            try:
                response = self._http.post(
                    TOKEN_PATH, json=self._policy.body(), headers=self._headers
                )
                outcome = self._policy.parse(response)
            except httpx.TransportError as exc:
                last_error, outcome = exc, -1.0
            if isinstance(outcome, SyncToken):
                return outcome
            if attempt + 1 < self._policy.max_attempts:
                self._closed.wait(self._policy.delay(attempt, outcome))
        raise TokenSourceError(f"no token after {self._policy.max_attempts} attempts: {last_error}")

    def close(self) -> None:
        self._closed.set()
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SyncTokenSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncSyncTokenSource(_TokenSourceBase):
    """The asyncio twin of `SyncTokenSource`: `await source.token()`. Bound to the event loop
    it is first used on."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        streams: Sequence[str],
        *,
        http: httpx.AsyncClient | None = None,
        **options: Unpack[SourceOptions],
    ) -> None:
        super().__init__(api_key, streams, **options)
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=10.0)
        self._owns_http = http is None
        self._flight: asyncio.Task[SyncToken | BaseException] | None = None

    async def token(self) -> str:
        return (await self.current()).token

    async def current(self) -> SyncToken:
        # No await between reading the state and starting a refresh: on one event loop, that
        # makes the check and the start one step, so one refresh is in flight at a time.
        now = time.time()
        current = self._current
        if current is not None and now < current.refresh_after:
            return current
        if self._policy.still_valid(current, now):
            assert current is not None
            if self._flight is None and self._may_refresh(now):
                self._flight = asyncio.create_task(self._refresh())
            return current
        flight = self._flight
        if flight is None:
            if self._last_error is not None and not self._may_refresh(now):
                raise self._failure(self._last_error)
            flight = self._flight = asyncio.create_task(self._refresh())
        # Shielded: a caller that gives up (is cancelled) does not cancel the others' refresh.
        outcome = await asyncio.shield(flight)
        if isinstance(outcome, SyncToken):
            return outcome
        raise self._failure(outcome)

    async def _refresh(self) -> SyncToken | BaseException:
        outcome: SyncToken | BaseException
        try:
            outcome = await self._fetch()
        except Exception as exc:  # handed to whoever waits, or kept for the next caller
            outcome = exc
        self._settle(outcome)
        self._flight = None
        return outcome

    async def _fetch(self) -> SyncToken:
        last_error: Exception | None = None
        for attempt in range(self._policy.max_attempts):
            try:
                response = await self._http.post(
                    TOKEN_PATH, json=self._policy.body(), headers=self._headers
                )
                outcome = self._policy.parse(response)
            except httpx.TransportError as exc:
                last_error, outcome = exc, -1.0
            if isinstance(outcome, SyncToken):
                return outcome
            if attempt + 1 < self._policy.max_attempts:
                await asyncio.sleep(self._policy.delay(attempt, outcome))
        raise TokenSourceError(f"no token after {self._policy.max_attempts} attempts: {last_error}")

    async def aclose(self) -> None:
        flight, self._flight = self._flight, None
        if flight is not None:
            flight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flight
        if self._owns_http:
            await self._http.aclose()
