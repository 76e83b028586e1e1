"""SpacetimeDB's Identity for a token, computed exactly as SpacetimeDB does.

h = blake3("{iss}|{sub}")[0..26]; c = blake3(0xC2 0x00 || h)[0..4]; Identity = C2 00 || c || h,
shown as 64 hex characters starting `c200`.
"""

from __future__ import annotations

import functools

from blake3 import blake3


# A pure function of two strings, asked for each mint of the same few subjects.
@functools.lru_cache(maxsize=4096)
def spacetimedb_identity(issuer: str, subject: str) -> str:
    hashed = blake3(f"{issuer}|{subject}".encode()).digest()[:26]
    checksum = blake3(b"\xc2\x00" + hashed).digest()[:4]
    return (b"\xc2\x00" + checksum + hashed).hex()
