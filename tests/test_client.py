"""control.client over the ASGI app: retries honouring Retry-After, and the asyncio twin."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from control.client import AsyncSyncTokenSource, StreamsDenied, SyncTokenSource, TokenSourceError
from control.runtime import GrantVerifier
from control.state import AppState
from control.tokens.ratelimit import RateLimiter
from tests.factories import Api, OrgFixture


@pytest.fixture
def member(org_a: OrgFixture) -> Api:
    member = org_a.principal("alice")
    org_a.query_set("run_events", ["run"])
    org_a.stream("run:r1")
    org_a.allow(query_sets=["run_events"])
    return member


def test_retries_429_honouring_retry_after(
    client: TestClient, state: AppState, member: Api
) -> None:
    state.mint_limiter = RateLimiter(rate_per_second=1, burst=1)
    assert member.key
    source = SyncTokenSource("http://testserver", member.key, ["run:r1"], http=client)
    first = source.token()
    source._current = None  # as if due for refresh: the bucket is empty now
    started = time.monotonic()
    second = source.token()
    assert time.monotonic() - started >= 0.5  # waited for Retry-After before succeeding
    assert second != first


def test_gives_up_after_max_attempts(client: TestClient, state: AppState, member: Api) -> None:
    state.mint_limiter = RateLimiter(rate_per_second=0.001, burst=1)
    assert member.key
    member.post("/api/sync/token", {"streams": ["run:r1"]})  # empties the bucket
    source = SyncTokenSource(
        "http://testserver", member.key, ["run:r1"], http=client, max_attempts=2, backoff=0.01
    )
    source._policy.delay = lambda attempt, hinted: 0.01  # type: ignore[method-assign]
    with pytest.raises(TokenSourceError):
        source.token()


def test_keeps_an_unexpired_token_when_refresh_fails(
    client: TestClient, state: AppState, member: Api
) -> None:
    assert member.key
    source = SyncTokenSource(
        "http://testserver", member.key, ["run:r1"], http=client, max_attempts=1
    )
    current = source.current()
    state.mint_limiter = RateLimiter(rate_per_second=0.001, burst=1)
    member.post("/api/sync/token", {"streams": ["run:r1"]})
    source._current = type(current)(
        current.token, current.expires_at, time.time() - 1, current.response
    )
    assert source.token() == current.token  # refresh failed, the old token is still good


def test_async_source(client: TestClient, member: Api, org_a: OrgFixture) -> None:
    assert member.key

    async def run() -> tuple[str, Any]:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=client.app), base_url="http://testserver"
        )
        source = AsyncSyncTokenSource("http://testserver", member.key or "", ["run:r1"], http=http)
        token = await source.token()
        assert await source.token() == token  # cached
        denied = AsyncSyncTokenSource(
            "http://testserver", member.key or "", ["run:nope"], http=http
        )
        with pytest.raises(StreamsDenied):
            await denied.token()
        await http.aclose()
        return token, None

    token, _ = asyncio.run(run())
    jwks = client.get("/.well-known/jwks.json")
    verifier = GrantVerifier(
        "http://127.0.0.1:8080",
        "spacetimedb",
        "http://testserver/.well-known/jwks.json",
        http=client,
    )
    assert jwks.status_code == 200
    assert verifier.verify(token)["sub"] == org_a.principals["alice"]
