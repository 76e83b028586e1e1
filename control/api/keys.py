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

CLAIMS_SUPPORTED = [
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti",
    "token_use", "org_id", "sid", "scope", "grants", "policy_rev",
]  # fmt: skip


def _cacheable(request: Request, body: bytes, etag: str, max_age: int) -> Response:
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": etag}
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def openid_configuration(request: Request, state: StateDep) -> Response:
    issuer = state.settings.issuer
    document = OpenIDConfiguration(
        issuer=issuer,
        jwks_uri=f"{issuer}/.well-known/jwks.json",
        token_endpoint=f"{issuer}/api/sync/token",
        introspection_endpoint=f"{issuer}/api/sync/introspect",
        revocation_feed_endpoint=f"{issuer}/api/sync/revocations",
        id_token_signing_alg_values_supported=list(state.keyring.snapshot.algs),
        response_types_supported=["id_token"],
        subject_types_supported=["public"],
        token_endpoint_auth_methods_supported=["client_secret_post"],
        claims_supported=CLAIMS_SUPPORTED,
    )
    body = document.model_dump_json().encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return _cacheable(request, body, etag, state.settings.jwks_max_age_seconds)


def jwks(request: Request, state: StateDep) -> Response:
    snapshot = state.keyring.snapshot
    return _cacheable(
        request, snapshot.jwks_body, snapshot.etag, state.settings.jwks_max_age_seconds
    )


def _key_infos(session: SessionDep) -> list[KeyInfo]:
    rows = session.scalars(select(SigningKey).order_by(SigningKey.created_at, SigningKey.kid))
    return [KeyInfo.model_validate(row) for row in rows]


def list_keys(session: SessionDep) -> KeyList:
    return KeyList(items=_key_infos(session))


def rotate_keys(session: SessionDep, state: StateDep, caller: CallerDep) -> RotationResult:
    result = service.rotate(session, state.settings, state.keyring.cipher)
    Auditor.of(session, caller).record("keys.rotate", result["active"], result)
    return RotationResult(**result, items=_key_infos(session))
