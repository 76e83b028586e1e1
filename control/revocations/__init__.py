"""Revocations: the feed runtime caches follow, and the rule by which a token is revoked."""
