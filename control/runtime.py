"""`control.runtime`: the runtime library's import path; the code is `control.sdk.runtime`."""

from control.sdk.runtime import (
    ALLOWED_ALGS,
    MAX_TOKEN_BYTES,
    FeedSource,
    GrantDenied,
    GrantVerifier,
    TokenRejected,
    VerificationKey,
    VerifiedTokens,
    authorize,
    key_from_jwk,
    verify_token,
)
from control.sdk.spacetime import PublisherFull as PublisherFull
from control.sdk.spacetime import SpacetimePublisher as SpacetimePublisher

__all__ = [
    "ALLOWED_ALGS",
    "MAX_TOKEN_BYTES",
    "FeedSource",
    "GrantDenied",
    "GrantVerifier",
    "TokenRejected",
    "VerificationKey",
    "VerifiedTokens",
    "authorize",
    "key_from_jwk",
    "verify_token",
]
