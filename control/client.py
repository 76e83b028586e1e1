"""`control.client`: the client library's public import path; the code is `control.sdk.client`."""

from control.sdk.client import (
    MAX_DELAY,
    RETRYABLE,
    TOKEN_PATH,
    AsyncSyncTokenSource,
    CredentialRejected,
    SourceOptions,
    StreamsDenied,
    SyncToken,
    SyncTokenSource,
    TokenExpired,
    TokenSourceError,
)

__all__ = [
    "MAX_DELAY",
    "RETRYABLE",
    "TOKEN_PATH",
    "AsyncSyncTokenSource",
    "CredentialRejected",
    "SourceOptions",
    "StreamsDenied",
    "SyncToken",
    "SyncTokenSource",
    "TokenExpired",
    "TokenSourceError",
]
