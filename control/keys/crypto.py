"""Key material: generating signing keys, their public JWKs, and encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SigningPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# SpacetimeDB verifies ES256 and RS256 only; HS* and EdDSA are never offered.
SUPPORTED_ALGS = ("ES256", "RS256")


class KeyDecryptionError(RuntimeError):
    """A stored private key cannot be decrypted: the key-encryption key is wrong."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else (value.bit_length() + 7) // 8
    return _b64(value.to_bytes(size, "big"))


def public_jwk(private_key: SigningPrivateKey, alg: str) -> dict[str, Any]:
    """The public half as a JWK with `kid` (its RFC 7638 thumbprint), `use` and `alg`."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        numbers = private_key.public_key().public_numbers()
        members: dict[str, Any] = {
            "crv": "P-256",
            "kty": "EC",
            "x": _int_b64(numbers.x, 32),
            "y": _int_b64(numbers.y, 32),
        }
    else:
        rsa_numbers = private_key.public_key().public_numbers()
        members = {"e": _int_b64(rsa_numbers.e), "kty": "RSA", "n": _int_b64(rsa_numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    kid = _b64(hashlib.sha256(canonical).digest())
    return {**members, "kid": kid, "use": "sig", "alg": alg}


def generate_private_key(alg: str) -> SigningPrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {SUPPORTED_ALGS}")


@dataclass(frozen=True)
class KeyCipher:
    """AES-256-GCM under the key-encryption key; the kid is bound in as associated data."""

    key_encryption_key: bytes

    def encrypt(self, kid: str, private_key: SigningPrivateKey) -> bytes:
        plaintext = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(12)
        return nonce + AESGCM(self.key_encryption_key).encrypt(nonce, plaintext, kid.encode())

    def decrypt(self, kid: str, blob: bytes) -> SigningPrivateKey:
        try:
            plaintext = AESGCM(self.key_encryption_key).decrypt(blob[:12], blob[12:], kid.encode())
        except InvalidTag as exc:
            raise KeyDecryptionError(
                f"signing key {kid} cannot be decrypted: CONTROL_KEY_ENCRYPTION_KEY is not the "
                "key these signing keys were encrypted with"
            ) from exc
        key: PrivateKeyTypes = serialization.load_der_private_key(plaintext, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyDecryptionError(f"signing key {kid} is not an EC or RSA key")
        return key
