"""The mint's own JWS signing (`control.tokens.signing`) against PyJWT, the reference verifier:
every token it signs verifies, with the header and claims it was given."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from control.keys.crypto import generate_private_key, public_jwk
from control.tokens.signing import sign_jwt

CLAIMS: dict[str, Any] = {
    "iss": "https://control.example",
    "sub": "prn_01",
    "aud": "spacetimedb",
    "iat": 1_700_000_000,
    "exp": 4_000_000_000,
    "jti": "abc",
    "grants": [{"stream": "run:01J9ZK", "query_sets": ["runs@1"], "ops": ["subscribe"]}],
    "scope": "sync:subscribe",
    "note": "ünïcode ✓",
}


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_signed_tokens_verify_with_pyjwt(alg: str) -> None:
    private_key = generate_private_key(alg)
    kid = public_jwk(private_key, alg)["kid"]
    for _ in range(50):  # ES256 signatures vary; short r or s must still be 32 bytes each
        token = sign_jwt(CLAIMS, private_key, alg, kid)
        assert jwt.get_unverified_header(token) == {"alg": alg, "kid": kid, "typ": "JWT"}
        decoded = jwt.decode(
            token,
            private_key.public_key(),
            algorithms=[alg],
            audience="spacetimedb",
            issuer="https://control.example",
        )
        assert decoded == CLAIMS
        assert "=" not in token


def test_a_tampered_token_does_not_verify() -> None:
    private_key = generate_private_key("ES256")
    token = sign_jwt(CLAIMS, private_key, "ES256", "k1")
    header, _payload, signature = token.split(".")
    forged = sign_jwt({**CLAIMS, "sub": "prn_02"}, private_key, "ES256", "k1").split(".")[1]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            f"{header}.{forged}.{signature}",
            private_key.public_key(),
            algorithms=["ES256"],
            audience="spacetimedb",
        )


def test_a_key_of_another_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        sign_jwt(CLAIMS, generate_private_key("RS256"), "ES256", "k1")
