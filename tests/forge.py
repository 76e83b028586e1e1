"""Hand-built compact JWS for the attack suite: exact header and payload bytes, any `alg`, any
signer. PyJWT would refuse to write most of these tokens (duplicate members, floats for `exp`,
`alg: none`, HS256 under a public key), so they are assembled by hand.

```python
forge = Forgery(issuer=..., audience=..., org_id=..., subject=..., kid=..., alg="ES256",
                key=private_key)
forge.token()                                            # a valid token, signed by `key`
forge.token(header=forge.header(kid="nope"))             # one header member changed
forge.token(payload=forge.claims(exp=DROP))              # one claim removed
forge.token(payload='{"sub":"a","sub":"b"}')             # exact JSON text
forge.token(sign=hmac_signer(b"secret"))                 # another signer
```
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

Signer = Callable[[bytes], bytes]
Segment = Mapping[str, Any] | str | bytes

# A claim or header member set to DROP is left out.
DROP: Any = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def encode_segment(value: Segment) -> str:
    """A mapping as compact JSON; a str as exact JSON text; bytes as they are."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode())
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def es256_signer(key: ec.EllipticCurvePrivateKey) -> Signer:
    """ECDSA P-256 / SHA-256 as JWS wants it: raw r || s, 32 bytes each."""

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def es256_der_signer(key: ec.EllipticCurvePrivateKey) -> Signer:
    """A correct ECDSA signature in the wrong (DER) encoding."""
    return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))


def rs256_signer(key: rsa.RSAPrivateKey) -> Signer:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def hmac_signer(secret: bytes, digest: str = "sha256") -> Signer:
    return lambda data: hmac.new(secret, data, getattr(hashlib, digest)).digest()


def constant_signer(signature: bytes) -> Signer:
    return lambda _data: signature


def signer_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> Signer:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return es256_signer(key)
    return rs256_signer(key)


def compact(header: Segment, payload: Segment, sign: Signer) -> str:
    signing_input = f"{encode_segment(header)}.{encode_segment(payload)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def _apply(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in changes.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


@dataclass(frozen=True)
class Forgery:
    """Writes sync tokens as the issuer would, then lets a test change any byte of them."""

    issuer: str
    audience: str
    org_id: str
    subject: str
    kid: str
    alg: str
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    stream: str = "run:attack"

    def header(self, **changes: Any) -> dict[str, Any]:
        return _apply({"alg": self.alg, "typ": "JWT", "kid": self.kid}, changes)

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "token_use": "sync",
            "org_id": self.org_id,
            "scope": "sync.subscribe",
            "grants": [
                {"stream": self.stream, "query_sets": ["run_events@1"], "ops": ["subscribe"]}
            ],
            "policy_rev": 1,
        }
        return _apply(claims, changes)

    def claims_json(self, **changes: Any) -> str:
        """The claims as JSON text without the closing brace, to append members by hand."""
        return json.dumps(self.claims(**changes), separators=(",", ":"))[:-1]

    def token(
        self,
        header: Segment | None = None,
        payload: Segment | None = None,
        sign: Signer | None = None,
    ) -> str:
        return compact(
            self.header() if header is None else header,
            self.claims() if payload is None else payload,
            sign or signer_for(self.key),
        )


def split(token: str) -> tuple[str, str, str]:
    header, payload, signature = token.split(".")
    return header, payload, signature


def decode_part(segment: str) -> dict[str, Any]:
    value = json.loads(b64url_decode(segment))
    assert isinstance(value, dict)
    return value
