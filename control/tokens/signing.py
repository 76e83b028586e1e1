"""JWT signing for the mint, without a general-purpose JWT library on the hot path.

A compact JWS is `base64url(header).base64url(claims).base64url(signature)`. The header of a
key never changes, so it is encoded once per `kid`; the claims are serialized with orjson; the
signature comes from `cryptography` directly. ES256 signatures are the raw `r || s` pair of
RFC 7518 §3.4 (32 bytes each), not the DER encoding `cryptography` returns. What this produces
verifies with any JWS library (`tests/test_signing.py` checks it with PyJWT).
"""

from __future__ import annotations

import base64
import functools
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from control.keys.crypto import SigningPrivateKey

_ES256_SIZE = 32  # bytes of each of r and s for P-256


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _header(alg: str, kid: str) -> bytes:
    """The encoded header of a key, with the members (and their order) PyJWT writes."""
    return _b64(orjson.dumps({"alg": alg, "kid": kid, "typ": "JWT"}))


def sign_jwt(claims: dict[str, Any], private_key: SigningPrivateKey, alg: str, kid: str) -> str:
    """The compact JWS of `claims`, signed with `private_key` under `alg` (ES256 or RS256)."""
    signing_input = _header(alg, kid) + b"." + _b64(orjson.dumps(claims))
    if alg == "ES256" and isinstance(private_key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_ES256_SIZE, "big") + s.to_bytes(_ES256_SIZE, "big")
    elif alg == "RS256" and isinstance(private_key, rsa.RSAPrivateKey):
        signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ValueError(f"cannot sign {alg} with a {type(private_key).__name__}")
    return (signing_input + b"." + _b64(signature)).decode("ascii")
