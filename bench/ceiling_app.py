"""The ceiling of a mint on this stack: an app with the service's middleware, request and response
models and ES256 signing, but no database, no credential lookup, no policy and no audit.

`bench/ceiling.py` serves it with one uvicorn worker, as `control serve` does. Whatever a real
mint adds (authenticating the caller, deciding, recording the audit event, committing) can only
cost more, so the mint/healthz ratio measured here bounds the service's from above.
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Response

from control.api.system import Health
from control.app import FASTAPI_OPTIONS
from control.grants import TOKEN_USE, Op, make_grant, scope_for
from control.kit.middleware import BodyLimitMiddleware, RequestIdMiddleware
from control.tokens.schemas import GrantOut, TokenRequest, TokenResponse
from control.tokens.signing import sign_jwt
from control.tokens.spacetime_identity import spacetimedb_identity

ISSUER = "http://127.0.0.1"
AUDIENCE = "spacetimedb"
SUBJECT = "prn_ceiling"
KEY = ec.generate_private_key(ec.SECP256R1())
KID = "ceiling"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def sign(body: TokenRequest) -> TokenResponse:
    """What a mint does once the decision is made: claims, signature, response."""
    iat = math.floor(datetime.now(UTC).timestamp())
    ops = [Op(op) for op in body.ops or [Op.SUBSCRIBE]]
    grants = [
        make_grant(stream, body.query_sets or ["run_events@1"], ops) for stream in body.streams
    ]
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": SUBJECT,
        "aud": AUDIENCE,
        "iat": iat,
        "nbf": iat,
        "exp": iat + 300,
        "jti": secrets.token_urlsafe(16),
        "token_use": TOKEN_USE,
        "org_id": "org_ceiling",
        "scope": scope_for(ops),
        "grants": [grant.to_claim() for grant in grants],
        "policy_rev": 1,
    }
    # The mint's own signer (`control.tokens.signing`), so the ceiling pays what a mint pays.
    token = sign_jwt(claims, KEY, "ES256", KID)
    return TokenResponse(
        token=token,
        expires_in=300,
        expires_at=datetime.fromtimestamp(iat + 300, UTC),
        refresh_after=datetime.fromtimestamp(iat + 240, UTC),
        issuer=ISSUER,
        audience=AUDIENCE,
        subject=SUBJECT,
        identity=spacetimedb_identity(ISSUER, SUBJECT),
        org_id="org_ceiling",
        kid=KID,
        jti=claims["jti"],
        grants=[GrantOut(**grant.to_claim()) for grant in grants],
        denied=[],
        policy_rev=1,
    )


app = FastAPI(**FASTAPI_OPTIONS)  # configured as the service's app is
app.add_middleware(BodyLimitMiddleware, max_bytes=64 * 1024)
app.add_middleware(RequestIdMiddleware)


@app.get("/healthz")
async def healthz() -> Health:
    return Health()


@app.post("/sign/thread")
def sign_on_the_thread_pool(body: TokenRequest, response: Response) -> TokenResponse:
    """As the service's endpoints run: a plain `def`, so FastAPI hops to its thread pool."""
    response.headers.update(NO_STORE)
    return sign(body)


@app.post("/sign/loop")
async def sign_on_the_event_loop(body: TokenRequest, response: Response) -> TokenResponse:
    """No thread hop at all: the cheapest a signing endpoint can be here."""
    response.headers.update(NO_STORE)
    return sign(body)
