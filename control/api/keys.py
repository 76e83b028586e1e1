from __future__ import annotations

import hashlib

from fastapi import Request, Response
from sqlalchemy import select

from control.api.auth import CallerDep
from control.api.deps import SessionDep, StateDep
from control.audit.service import Auditor
from control.keys import service
from control.keys.models import SigningKey
from control.keys.schemas import KeyInfo, KeyList, OpenIDConfiguration, RotationResult
from control.keys.service import KeySnapshot
from control.state import AppState
from control.tokens import oauth

CLAIMS_SUPPORTED = [
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti",
    "token_use", "org_id", "sid", "scope", "grants", "policy_rev",
]  # fmt: skip


def _cacheable(request: Request, body: bytes, etag: str, max_age: int) -> Response:
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": etag}
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _discovery_body(request: Request, state: AppState) -> tuple[bytes, str]:
    """The discovery document's bytes and ETag, built once per key-ring snapshot (the only
    thing in it that changes is the snapshot's algorithms) and kept on the app."""
    snapshot = state.keyring.snapshot
    cached: tuple[KeySnapshot, bytes, str] | None = getattr(request.app.state, "discovery", None)
    if cached is not None and cached[0] is snapshot:
        return cached[1], cached[2]
    issuer = state.settings.issuer
    document = OpenIDConfiguration(
        issuer=issuer,
        jwks_uri=f"{issuer}/.well-known/jwks.json",
        token_endpoint=f"{issuer}/api/sync/token",
        introspection_endpoint=f"{issuer}/api/sync/introspect",
        revocation_feed_endpoint=f"{issuer}/api/sync/revocations",
        id_token_signing_alg_values_supported=list(snapshot.algs),
        response_types_supported=["id_token"],
        subject_types_supported=["public"],
        grant_types_supported=list(oauth.GRANT_TYPES),
        token_endpoint_auth_methods_supported=list(oauth.CLIENT_AUTH_METHODS),
        scopes_supported=oauth.SCOPES_SUPPORTED,
        claims_supported=CLAIMS_SUPPORTED,
    )
    body = document.model_dump_json().encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    request.app.state.discovery = (snapshot, body, etag)
    return body, etag


# Both discovery endpoints are `async def` and take only the request: their answers are bytes
# prebuilt per key-ring snapshot, so they run on the event loop with no thread hop, no
# dependency to solve and no response model to validate.
async def openid_configuration(request: Request) -> Response:
    """OIDC discovery document and OAuth 2.0 authorization server metadata (RFC 8414): the issuer,
    where its public keys are (`jwks_uri`), the token, introspection and revocation-feed endpoints,
    and what they support. SpacetimeDB reads it to verify sync tokens. Cacheable: the answer
    carries `Cache-Control: max-age` and an `ETag`, and a request with a matching
    `If-None-Match` gets 304. Anyone may call it; no credential.
    """
    state: AppState = request.app.state.control
    body, etag = _discovery_body(request, state)
    return _cacheable(request, body, etag, state.settings.jwks_max_age_seconds)


async def jwks(request: Request) -> Response:
    """The public keys that sign sync tokens (a JWK Set): the active key, the pending key that will
    sign next (published ahead of time so caches have it), and retiring keys until their last
    tokens expire. Verify a token with the key whose `kid` its header names; refetch when a `kid`
    is unknown. Cacheable: `Cache-Control: max-age` and an `ETag`; a matching `If-None-Match` gets
    304. Anyone may call it; no credential.
    """
    state: AppState = request.app.state.control
    snapshot = state.keyring.snapshot
    return _cacheable(
        request, snapshot.jwks_body, snapshot.etag, state.settings.jwks_max_age_seconds
    )


def _key_infos(session: SessionDep) -> list[KeyInfo]:
    rows = session.scalars(select(SigningKey).order_by(SigningKey.created_at, SigningKey.kid))
    return [KeyInfo.model_validate(row) for row in rows]


def list_keys(session: SessionDep) -> KeyList:
    """Every signing key, oldest first, with its state: `pending` (published, not signing yet),
    `active` (signing; exactly one), `retiring` (published, no longer signing, until its last
    token expires) or `retired` (gone from the JWKS). Public halves only. Signing keys are shared
    by all orgs: this needs the `operator` role, which only the operator org (the first org
    bootstrapped) honours.
    """
    return KeyList(items=_key_infos(session))


def rotate_keys(session: SessionDep, state: StateDep, caller: CallerDep) -> RotationResult:
    """Rotate the signing keys now, rather than on the service's schedule: the pending key becomes
    active, the active key starts retiring, and a new pending key is published. 409 `conflict`
    while the pending key has been published for less than the publish lead (600 s unless
    configured), since verifiers with a cached JWKS may not have it yet; the detail says how long
    to wait. Audited. Needs the `operator` role.
    """
    result = service.rotate(session, state.settings, state.keyring.cipher)
    Auditor.of(session, caller).record("keys.rotate", result["active"], result)
    return RotationResult(**result, items=_key_infos(session))
