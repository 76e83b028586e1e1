"""Keeping a fresh sync token, for clients.

```python
from control.client import SyncTokenSource
source = SyncTokenSource(base_url=..., api_key=..., streams=["run:01J9ZK"])
source.token()    # the JWT; cached; refreshed after `refresh_after` (with jitter)
```

`token()` never returns a token past its expiry: it refreshes once `refresh_after` (plus a small
random delay, so a fleet does not stampede) has passed, and retries 429 / 503 / network errors
with exponential backoff, honouring `Retry-After`. A 401 raises `CredentialRejected`, a 403
`StreamsDenied` (with the `denied` list); neither is retried. `AsyncSyncTokenSource` is the
asyncio twin.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from typing_extensions import TypedDict, Unpack

__all__ = [
    "AsyncSyncTokenSource",
    "CredentialRejected",
    "StreamsDenied",
    "SyncToken",
    "SyncTokenSource",
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
        return current is not None and now < current.expires_at - 5

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


class _TokenSourceBase:
    """What both sources hold: the request they make, the credential, the current token."""

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
    ) -> None:
        self._policy = _Policy(
            streams, query_sets, ops, ttl_seconds, device_id, max_attempts, backoff, refresh_jitter
        )
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._current: SyncToken | None = None


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

    def token(self) -> str:
        """A valid sync token, fetching a new one when the cached one is due for refresh."""
        return self.current().token

    def current(self) -> SyncToken:
        with self._lock:
            if self._current is None or not self._policy.fresh(self._current, time.time()):
                try:
                    self._current = self._fetch()
                except (CredentialRejected, StreamsDenied):
                    raise
                except TokenSourceError:
                    if not self._policy.still_valid(self._current, time.time()):
                        raise  # otherwise keep the unexpired token and retry next call
            assert self._current is not None
            return self._current

    def _fetch(self) -> SyncToken:
        last_error: Exception | None = None
        for attempt in range(self._policy.max_attempts):
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
                time.sleep(self._policy.delay(attempt, outcome))
        raise TokenSourceError(f"no token after {self._policy.max_attempts} attempts: {last_error}")

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SyncTokenSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncSyncTokenSource(_TokenSourceBase):
    """The asyncio twin of `SyncTokenSource`: `await source.token()`."""

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
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        return (await self.current()).token

    async def current(self) -> SyncToken:
        async with self._lock:
            if self._current is None or not self._policy.fresh(self._current, time.time()):
                try:
                    self._current = await self._fetch()
                except (CredentialRejected, StreamsDenied):
                    raise
                except TokenSourceError:
                    if not self._policy.still_valid(self._current, time.time()):
                        raise
            assert self._current is not None
            return self._current

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
        if self._owns_http:
            await self._http.aclose()
