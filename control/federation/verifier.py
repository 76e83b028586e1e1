"""Verifying upstream OIDC ID tokens with joserfc (Authlib's JOSE implementation).

Which issuer a token claims is read from its (unverified) `iss` and looked up among the trusted
issuers; only then are that issuer's discovery document and JWKS fetched. Headers the token
supplies (`jku`, `x5u`, `jwk`) are never followed: keys come only from the trusted issuer's own
discovery document. JWKS are cached per issuer and refetched on an unknown `kid`, at most once
per `min_refetch_interval`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

log = logging.getLogger("control.federation")

MAX_ID_TOKEN_BYTES = 16 * 1024


class UpstreamRejected(Exception):
    """The upstream token is not acceptable; `reason` is a precise, non-secret code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UpstreamUnavailable(Exception):
    """The trusted issuer's discovery document or JWKS could not be fetched."""


def unverified_issuer(token: str) -> str:
    if len(token) > MAX_ID_TOKEN_BYTES or token.count(".") != 2:
        raise UpstreamRejected("malformed", "not a compact JWT")
    try:
        payload = json.loads(jws.extract_compact(token.encode()).payload)
    except (JoseError, ValueError, UnicodeDecodeError):
        raise UpstreamRejected("malformed", "the token cannot be decoded") from None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise UpstreamRejected("malformed", "the token names no issuer")
    return issuer


@dataclass
class _IssuerKeys:
    keys: KeySet
    fetched_at: float


class UpstreamVerifier:
    """Per-replica cache of trusted issuers' keys, and ID-token verification."""

    def __init__(
        self,
        *,
        http: httpx.Client | None = None,
        max_age: float = 300.0,
        min_refetch_interval: float = 30.0,
        leeway: int = 60,
    ) -> None:
        self._http = http or httpx.Client(timeout=5.0, follow_redirects=False)
        self.max_age = max_age
        self.min_refetch_interval = min_refetch_interval
        self.leeway = leeway
        self._keys: dict[str, _IssuerKeys] = {}
        self._lock = threading.Lock()

    def _fetch(self, issuer: str) -> _IssuerKeys:
        try:
            discovery = self._http.get(f"{issuer}/.well-known/openid-configuration")
            discovery.raise_for_status()
            document = discovery.json()
            if document.get("issuer") != issuer:
                raise UpstreamUnavailable(f"{issuer}'s discovery document names another issuer")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(issuer.split("://")[0]):
                raise UpstreamUnavailable(f"{issuer}'s discovery document has no usable jwks_uri")
            response = self._http.get(jwks_uri)
            response.raise_for_status()
            keys = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            raise UpstreamUnavailable(
                f"cannot fetch {issuer}'s keys: {type(exc).__name__}"
            ) from exc
        entry = _IssuerKeys(keys, time.monotonic())
        with self._lock:
            self._keys[issuer] = entry
        return entry

    def _keys_for(self, issuer: str, kid: str | None) -> KeySet:
        entry = self._keys.get(issuer)
        now = time.monotonic()
        if entry is None or now - entry.fetched_at > self.max_age:
            return self._fetch(issuer).keys
        known = kid is None or any(key.kid == kid for key in entry.keys.keys)
        if not known and now - entry.fetched_at > self.min_refetch_interval:
            return self._fetch(issuer).keys  # the issuer rotated its keys
        return entry.keys

    def verify(
        self, token: str, *, issuer: str, audiences: Sequence[str], algorithms: Sequence[str]
    ) -> dict[str, Any]:
        """Verified claims of an ID token from `issuer` for one of `audiences`."""
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError):
            raise UpstreamRejected("malformed", "the token cannot be decoded") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in algorithms:
            raise UpstreamRejected("invalid_algorithm", f"algorithm {alg!r} is not accepted")
        keys = self._keys_for(issuer, kid if isinstance(kid, str) else None)
        if isinstance(kid, str) and not any(key.kid == kid for key in keys.keys):
            raise UpstreamRejected("unknown_key", "the issuer does not publish the token's key")
        try:
            decoded = jwt.decode(token, keys, algorithms=list(algorithms))
            now = int(time.time())
            registry = jwt.JWTClaimsRegistry(
                now=now,
                leeway=self.leeway,
                iss={"essential": True, "value": issuer},
                aud={"essential": True, "values": list(audiences)},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
            )
            registry.validate(decoded.claims)
        except BadSignatureError:
            raise UpstreamRejected("invalid_signature", "signature verification failed") from None
        except ExpiredTokenError:
            raise UpstreamRejected("expired", "the token has expired") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            claim = getattr(exc, "claim", "")
            reason = {"aud": "wrong_audience", "iss": "wrong_issuer"}.get(claim, "invalid_claims")
            raise UpstreamRejected(reason, f"claim {claim!r} is not acceptable") from None
        except JoseError as exc:
            raise UpstreamRejected("invalid_token", type(exc).__name__) from None
        claims = dict(decoded.claims)
        for name in ("iat", "nbf"):
            value = claims.get(name)
            if isinstance(value, int | float) and value > now + self.leeway:
                raise UpstreamRejected("not_yet_valid", f"`{name}` is in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 1 <= len(sub) <= 255:
            raise UpstreamRejected("invalid_claims", "`sub` is not a usable subject")
        return claims

    def close(self) -> None:
        self._http.close()
