"""API keys: `ctl_` + 256 random bits, shown once, stored only as a keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "ctl_"
API_KEY_BYTES = 32
DISPLAY_PREFIX_LENGTH = 12


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def hash_api_key(pepper: bytes, api_key: str) -> str:
    """HMAC-SHA256 under the pepper: a stolen database alone cannot confirm a guessed key."""
    return hmac.new(pepper, api_key.encode(), hashlib.sha256).hexdigest()


def looks_like_api_key(value: str) -> bool:
    return value.startswith(API_KEY_PREFIX) and len(value) < 200


def display_prefix(presented: str) -> str:
    """What a log may say of a presented credential: an API key's display prefix (the admin API
    shows it by design) when the value is long enough that the rest still hides a secret, else
    only what kind of value it was."""
    if not looks_like_api_key(presented):
        return "not_an_api_key"
    if len(presented) < 2 * DISPLAY_PREFIX_LENGTH:
        return "malformed_api_key"
    return presented[:DISPLAY_PREFIX_LENGTH]
