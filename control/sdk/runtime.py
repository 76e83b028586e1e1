"""Verifying sync tokens and checking their grants, for runtime services.

```python
from control.runtime import GrantVerifier, TokenRejected, GrantDenied
v = GrantVerifier(issuer=..., audience=..., jwks_url=...,
                  revocations_url=None, api_key=None, poll_interval=10.0)
claims = v.verify(token)              # raises TokenRejected(code=...)
v.authorize(claims, stream="run:01J9ZK", query_set="run_events", op="subscribe")
v.authorize(claims, stream="run:01J9ZK", op="append", stream_org=holder)  # for `run:*` grants
```

A token may carry a kind-wide grant (`run:*`): every stream of that kind in the token's org,
including streams registered after it was minted. Only the service knows which org holds a
stream, so `authorize` applies such a grant only when the caller passes `stream_org`, the org
that holds the stream (from the service's own records, never from the client): equal to the
token's `org_id`, the grant covers the stream; any other org is `stream_not_granted`; left out,
a stream only a kind-wide grant covers is `stream_org_required`. Grants naming the stream itself
need no `stream_org`; when it is given, it must be the token's org for them too.

Keys are cached by (issuer, kid). Once the JWKS response's `Cache-Control` max-age has passed,
a token signed by a known key still verifies at once while one background thread refetches the
JWKS (stale-while-revalidate); a failed refetch is retried after 1, 2, 4 ... seconds, capped at
`max_jwks_backoff` (60 s), so an outage of the control plane costs no verify any latency and
the keys in hand keep working. Only a `kid` the cache has never seen makes `verify` fetch the
JWKS itself (or wait for a fetch already under way), at most once per `min_refetch_interval`
however many such tokens arrive. That fetch is the one network wait `verify` can have, so in an
event loop use `await verifier.verify_async(token)`: it does that fetch on a worker thread and
is otherwise `verify`, with no thread hop for a known key or a cached token. Only ES256 and
RS256 are accepted, whatever a token's header claims; `jku`, `x5u` and `jwk` headers are never
followed. Claim checks and grant matching come from `control.grants`, the same module the
control plane mints with.

Revocations are read from the control plane's revocation feed, which is per org (each org's
service keys read that org's revocations, and there is no feed across orgs): a runtime that
serves several orgs follows one feed per org, each with a service key of that org:

```python
v = GrantVerifier(issuer=..., audience=..., jwks_url=..., feeds=[
    FeedSource(f"{base}/api/sync/revocations", api_key=acme_service_key, org_id=acme_org_id),
    FeedSource(f"{base}/api/sync/revocations", api_key=globex_service_key, org_id=globex_org_id),
])
```

(`revocations_url=` with `api_key=` is the one-feed shorthand.) Each feed is followed by its own
background thread, so one that fails or hangs holds no other back; a feed that names its
`org_id` revokes only that org's tokens, so no org's admin can revoke another org's tokens here.
`verify` rejects revoked `jti`s and tokens of revoked subjects issued before the revocation. An
entry is dropped once every token it covers has expired: `revocation_horizon` seconds (default
900, the longest token lifetime the control plane mints, plus `leeway`) after its `not_before`;
set it to the control plane's `CONTROL_TOKEN_TTL_MAX_SECONDS` plus `leeway` if that differs. The
constructor reads every feed once and raises if one cannot be read; after that a failing feed
keeps the revocations it delivered and is retried every `poll_interval`. Once keys and
revocations are cached, `verify` and `authorize` make no network call.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx
import jwt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from control.sdk.grants import (
    ClaimsRejected,
    GrammarError,
    Grant,
    GrantDecision,
    check_sync_claims,
    parse_grants,
)
from control.sdk.grants import authorize as match_grant

__all__ = [
    "FeedSource",
    "GrantDenied",
    "GrantVerifier",
    "TokenRejected",
    "VerifiedTokens",
    "verify_token",
]

log = logging.getLogger("control.runtime")

ALLOWED_ALGS = frozenset({"ES256", "RS256"})
MAX_TOKEN_BYTES = 16 * 1024
# The longest lifetime the control plane gives a token (CONTROL_TOKEN_TTL_MAX_SECONDS' default):
# a revocation older than this (plus leeway) covers no token that could still verify.
MAX_TOKEN_TTL = 900
_MAX_AGE = re.compile(r"max-age=(\d+)")


class TokenRejected(Exception):
    """The token is not a valid sync token. `code` is one of: invalid_signature, expired,
    not_yet_valid, wrong_issuer, wrong_audience, wrong_token_use, unknown_key, revoked,
    malformed."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


class GrantDenied(Exception):
    """The token's grants do not cover the request. `code` is one of: stream_not_granted,
    query_set_not_granted, op_not_granted, stream_org_required (only a kind-wide grant could
    cover the stream, and `authorize` was not told the stream's org)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_RS256 = get_default_algorithms()["RS256"]


@dataclass(frozen=True)
class VerificationKey:
    """A published key we accept, with the signature check for its algorithm."""

    alg: str
    key: Any

    def check(self, signing_input: bytes, signature: bytes) -> bool:
        """Whether `signature` (the JWS form) signs `signing_input` under this key."""
        if self.alg != "ES256":
            return bool(_RS256.verify(signing_input, self.key, signature))
        # JWS carries ECDSA signatures as r || s, 32 bytes each for P-256; `cryptography`
        # takes DER. The ECDSA parameters are built once, not per token.
        if len(signature) != 64:
            return False
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self.key.verify(der, signing_input, _ECDSA_SHA256)
        except InvalidSignature:
            return False
        return True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Two parsers may pick different values of a duplicated member: refuse the token.
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise TokenRejected("malformed", f"duplicate member {name!r}")
            seen.add(name)
    return result


def _not_json(constant: str) -> Any:
    raise TokenRejected("malformed", f"{constant} is not JSON")


# One decoder, built once: `json.loads` with a hook would build a new decoder on every call,
# which costs more than the parse itself. The hook sees every object, so duplicates anywhere
# in the claims are refused; NaN and Infinity, which RFC 8259 does not allow, are refused too.
_CLAIMS_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_not_json)


def _parse_json(raw: bytes) -> Any:
    """A JOSE segment's JSON, with duplicate members refused.

    Fast path: orjson parses, and re-serializing the value gives back the very same bytes. That
    proves no member was dropped, since a text with a duplicate has more members than the value
    it parses to. Compact JSON, which this issuer and most others write, takes it; any other
    text (whitespace, escapes, big numbers) takes the standard decoder, which names duplicates.
    """
    try:
        value = orjson.loads(raw)
        if orjson.dumps(value) == raw:
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    try:
        return _CLAIMS_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: JSON nested deeper than the interpreter's recursion limit.
        raise TokenRejected("malformed", "not base64url JSON") from None


def _json_object(raw: bytes) -> dict[str, Any]:
    value = _parse_json(raw)
    if type(value) is not dict:
        raise TokenRejected("malformed", "not a JSON object")
    return value


def key_from_jwk(jwk: Mapping[str, Any]) -> VerificationKey | None:
    """A verification key from a published JWK, or None for keys we never accept."""
    alg, kty = jwk.get("alg"), jwk.get("kty")
    if alg not in ALLOWED_ALGS or jwk.get("use", "sig") != "sig":
        return None
    try:
        if alg == "ES256" and kty == "EC" and jwk.get("crv") == "P-256":
            return VerificationKey(alg, ECAlgorithm.from_jwk(dict(jwk)))
        if alg == "RS256" and kty == "RSA":
            return VerificationKey(alg, RSAAlgorithm.from_jwk(dict(jwk)))
    except (jwt.InvalidKeyError, ValueError, TypeError):
        log.warning("ignoring an unparseable published key (kid %r)", jwk.get("kid"))
    return None


class _Verified(NamedTuple):
    claims: dict[str, Any]
    grants: tuple[Grant, ...]
    payload: bytes  # the claims' JSON text, as signed
    kid: str  # the key that signed it


def verify_token(
    token: str,
    find_key: Callable[[str], VerificationKey | None],
    *,
    issuer: str,
    audience: str,
    leeway: int = 30,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a sync token's signature and claims; the shared core of `GrantVerifier` and the
    control plane's introspection. Returns the claims; raises `TokenRejected`."""
    return _verify(token, find_key, issuer=issuer, audience=audience, leeway=leeway, now=now).claims


# base64url to the standard alphabet; `+` and `/` become a byte outside it, so strict decoding
# refuses them as it refuses any other character that is not base64url.
_FROM_BASE64URL = bytes.maketrans(b"-_+/", b"+/!!")
_PADDING = (b"", b"===", b"==", b"=")


def _decode_segment(segment: bytes) -> bytes:
    try:
        return binascii.a2b_base64(
            (segment + _PADDING[len(segment) % 4]).translate(_FROM_BASE64URL), strict_mode=True
        )
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed", "a segment is not base64url") from None


# An issuer's tokens share a handful of header segments (one per key): remember the verdict on
# each, so the hot path decodes and checks a header once, not once per token.
_HEADERS: dict[bytes, tuple[str, str]] = {}
_MAX_CACHED_HEADERS = 64


def _read_header(segment: bytes) -> tuple[str, str]:
    """The (alg, kid) of an acceptable JOSE header, or `TokenRejected`."""
    cached = _HEADERS.get(segment)
    if cached is not None:
        return cached
    header = _json_object(_decode_segment(segment))
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGS:  # a list or object is unhashable
        raise TokenRejected("invalid_signature", f"algorithm {alg!r} is not accepted")
    if "crit" in header or "b64" in header:
        raise TokenRejected("malformed", "critical or b64 header extensions are not supported")
    if not isinstance(kid, str) or not kid or len(kid) > 128:
        raise TokenRejected("unknown_key", "the token names no usable key id")
    if len(_HEADERS) >= _MAX_CACHED_HEADERS:  # made-up headers must not grow memory
        _HEADERS.clear()
    _HEADERS[segment] = (alg, kid)
    return alg, kid


def _verify(
    token: str,
    find_key: Callable[[str], VerificationKey | None],
    *,
    issuer: str,
    audience: str,
    leeway: int,
    now: float | None,
) -> _Verified:
    # Each segment is decoded and parsed exactly once, with duplicate members refused; the
    # signature is checked over the exact bytes received, before the claims are parsed.
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected("malformed", "not a token, or larger than 16 KiB")
    try:
        data = token.encode("ascii")  # a compact JWS is ASCII: anything else is not a token
    except UnicodeEncodeError:
        raise TokenRejected("malformed", "not a compact JWS") from None
    parts = data.split(b".")
    if len(parts) != 3:
        raise TokenRejected("malformed", "a JWS compact token has three parts")
    alg, kid = _read_header(parts[0])
    key = find_key(kid)
    if key is None:
        raise TokenRejected("unknown_key", "the token's key is not published by the issuer")
    if key.alg != alg:
        raise TokenRejected("invalid_signature", "the header's algorithm is not the key's")
    signing_input = data[: len(parts[0]) + 1 + len(parts[1])]
    if not key.check(signing_input, _decode_segment(parts[2])):
        raise TokenRejected("invalid_signature", "signature verification failed")
    payload = _decode_segment(parts[1])
    claims = _json_object(payload)
    try:
        check_sync_claims(
            claims,
            issuer=issuer,
            audience=audience,
            now=int(now if now is not None else time.time()),
            leeway=leeway,
        )
    except ClaimsRejected as exc:
        raise TokenRejected(exc.code, str(exc)) from None
    try:
        grants = _parse_grants_cached(claims["grants"])
    except GrammarError as exc:
        raise TokenRejected("malformed", str(exc)) from None
    return _Verified(claims, grants, payload, kid)


# Grants claims already parsed, keyed by their compact JSON. A runtime sees the same few grants
# again and again (each refresh of a client's token carries the grants it had), so most tokens
# and most `authorize` calls skip the grammar checks. A miss parses the JSON form of the key,
# not the value it came from, so a hit and a miss always agree: grants are what their JSON says.
_PARSED_GRANTS: dict[bytes, tuple[Grant, ...]] = {}
_MAX_PARSED_GRANTS = 4096


def _parse_grants_cached(value: Any) -> tuple[Grant, ...]:
    """`parse_grants` of a `grants` claim value, through the cache; raises `GrammarError`."""
    try:
        key = orjson.dumps(value)
    except orjson.JSONEncodeError:  # no JSON form orjson writes (a huge number, a surrogate)
        return parse_grants(value)
    grants = _PARSED_GRANTS.get(key)
    if grants is None:
        grants = parse_grants(orjson.loads(key))
        if len(_PARSED_GRANTS) >= _MAX_PARSED_GRANTS:  # made-up grants must not grow memory
            _PARSED_GRANTS.clear()
        _PARSED_GRANTS[key] = grants
    return grants


def authorize(
    claims: Mapping[str, Any],
    stream: str,
    query_set: str | None = None,
    op: str = "subscribe",
    *,
    stream_org: str | None = None,
) -> Grant:
    """Check verified claims cover `stream`, `query_set` (name or `name@version`) and `op`.

    `stream_org` is the org that holds `stream`, as the caller's own records say: a kind-wide
    grant (`run:*`) covers the stream only when it is the token's `org_id`
    (`stream_org_required` when a kind-wide grant would be needed and it is not given)."""
    try:
        grants = _parse_grants_cached(claims.get("grants"))
    except GrammarError:
        raise GrantDenied("stream_not_granted", "the token carries no valid grants") from None
    if stream_org is None:  # the token's org matters only beside the stream's
        try:
            return match_grant(grants, stream, query_set, op)
        except GrantDecision as exc:
            raise GrantDenied(exc.code, str(exc)) from None
    token_org = claims.get("org_id")
    try:
        return match_grant(
            grants,
            stream,
            query_set,
            op,
            token_org=token_org if type(token_org) is str else None,
            stream_org=stream_org,
        )
    except GrantDecision as exc:
        raise GrantDenied(exc.code, str(exc)) from None


@dataclass(frozen=True)
class FeedSource:
    """One org's revocation feed: its URL (`{control plane}/api/sync/revocations`), a service
    key of that org, and optionally the org's id, so its entries revoke only that org's tokens
    (without it, they apply to every token, as with one feed)."""

    url: str
    api_key: str | None = None
    org_id: str | None = None


class _Revocations:
    """What one revocation feed has said so far, each entry kept until the tokens it covers
    have all expired."""

    def __init__(self) -> None:
        # jti / subject -> `not_before` (epoch seconds): for a jti, no later than the revoked
        # token's own `iat`; for a subject, every covered token's `iat` is before it.
        self.jtis: dict[str, int] = {}
        self.subjects: dict[str, int] = {}
        self.cursor: str | None = None

    def apply(self, entry: Mapping[str, Any]) -> None:
        kind, value = entry.get("kind"), str(entry.get("value"))
        not_before = _epoch(entry.get("not_before"))
        if kind == "jti":
            # Without a usable time, hold the entry for a whole horizon from now.
            self.jtis[value] = not_before if not_before is not None else int(time.time())
        elif kind == "subject" and not_before is not None:
            self.subjects[value] = max(self.subjects.get(value, 0), not_before)

    def prune(self, now: float, horizon: float) -> int:
        """Drop the entries whose every covered token expired (plus leeway) before `now`: a
        token they cover has `iat` at most `not_before`, so it expired by `not_before` plus
        the longest lifetime. Returns how many were dropped."""
        dropped = 0
        for entries in (self.jtis, self.subjects):
            stale = [key for key, not_before in entries.items() if not_before + horizon < now]
            for key in stale:
                del entries[key]
            dropped += len(stale)
        return dropped

    def reason(self, claims: Mapping[str, Any]) -> str | None:
        if self.jtis and claims["jti"] in self.jtis:
            return "revoked"
        if self.subjects:
            not_before = self.subjects.get(claims["sub"])
            if not_before is not None and claims["iat"] < not_before:
                return "revoked"
        return None


class _Feed:
    """One followed feed: where it is, what it said, and the thread following it."""

    def __init__(self, source: FeedSource) -> None:
        self.source = source
        self.headers = {"Authorization": f"Bearer {source.api_key}"} if source.api_key else {}
        self.revocations = _Revocations()
        self.thread: threading.Thread | None = None

    def covers(self, claims: Mapping[str, Any]) -> bool:
        return self.source.org_id is None or claims.get("org_id") == self.source.org_id


def _epoch(value: Any) -> int | None:
    from datetime import datetime

    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


class _FetchNeeded(Exception):
    """A token names a key not in the cache, and looking it up would fetch the JWKS now."""


class VerifiedTokens:
    """Tokens that verified, by their exact text: a token presented again skips its signature
    check, the costliest step of verifying it, but never its expiry. Thread-safe; at most `size`
    tokens, the oldest dropped first, and none longer than `max_token_bytes` when it is given.
    Only tokens that verified are kept, so what fills it is tokens the issuer signed.

    Each entry holds the claims' JSON text, not the claims: every call hands out claims of its
    own, which the caller may change freely, and the cache stays small."""

    def __init__(self, size: int = 10_000, max_token_bytes: int | None = None) -> None:
        self._size = size
        self._max_token_bytes = max_token_bytes
        # token -> (exp, kid, the claims' JSON text)
        self._entries: dict[str, tuple[int, str, bytes]] = {}
        # Writes only: eviction iterates the entries, which no other thread may change
        # meanwhile. Reads need no lock.
        self._lock = threading.Lock()

    def claims(
        self,
        token: str,
        find_key: Callable[[str], VerificationKey | None],
        *,
        issuer: str,
        audience: str,
        leeway: int,
        key_still_valid: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """`verify_token`'s answer for `token`. `key_still_valid(kid)`, when given, is asked of
        a token seen before: one whose key it no longer accepts is verified again (and refused
        as `verify_token` refuses it)."""
        cached = self._entries.get(token) if isinstance(token, str) else None
        if cached is not None:
            exp, kid, payload = cached
            if key_still_valid is None or key_still_valid(kid):
                if exp <= time.time() - leeway:
                    raise TokenRejected("expired", "the token has expired")
                return _json_object(payload)
        verified = _verify(
            token, find_key, issuer=issuer, audience=audience, leeway=leeway, now=None
        )
        if self._max_token_bytes is not None and len(token) > self._max_token_bytes:
            return verified.claims
        with self._lock:
            self._entries[token] = (verified.claims["exp"], verified.kid, verified.payload)
            if len(self._entries) > self._size:  # the oldest goes first
                del self._entries[next(iter(self._entries))]
        return verified.claims

    def __len__(self) -> int:
        return len(self._entries)


class GrantVerifier:
    """Verify sync tokens locally and check their grants. Thread-safe."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str,
        revocations_url: str | None = None,
        api_key: str | None = None,
        poll_interval: float = 10.0,
        leeway: int = 30,
        *,
        feeds: Iterable[FeedSource | tuple[str, str | None]] = (),
        revocation_horizon: float | None = None,
        min_refetch_interval: float = 30.0,
        default_jwks_max_age: float = 300.0,
        jwks_backoff: float = 1.0,
        max_jwks_backoff: float = 60.0,
        cache_size: int = 10_000,
        http: httpx.Client | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.revocations_url = revocations_url
        self.poll_interval = poll_interval
        self.leeway = leeway
        self.revocation_horizon = (
            revocation_horizon if revocation_horizon is not None else MAX_TOKEN_TTL + leeway
        )
        self.min_refetch_interval = min_refetch_interval
        self.default_jwks_max_age = default_jwks_max_age
        self.jwks_backoff = jwks_backoff
        self.max_jwks_backoff = max_jwks_backoff
        self._http = http or httpx.Client(timeout=5.0)
        self._owns_http = http is None
        self._keys: dict[tuple[str, str], VerificationKey] = {}
        self._keys_expire_at = 0.0
        # When the last JWKS fetch started, and when a background refresh may next start
        # (pushed out by failures). Reads need no lock; writes hold `_lock`.
        self._last_fetch = float("-inf")
        self._next_refresh = 0.0
        self._failed_refreshes = 0
        self._refresher: threading.Thread | None = None
        self._lock = threading.Lock()
        # Held by whichever thread is fetching the JWKS: one fetch at a time.
        self._fetch_lock = threading.Lock()
        self._verified = VerifiedTokens(cache_size)
        self._stop = threading.Event()
        sources = [FeedSource(revocations_url, api_key)] if revocations_url is not None else []
        for given in feeds:
            sources.append(given if isinstance(given, FeedSource) else FeedSource(*given))
        self._feeds = [_Feed(source) for source in sources]
        self.poll_revocations()
        for index, feed in enumerate(self._feeds):
            feed.thread = threading.Thread(
                target=self._follow, args=(feed,), name=f"control-revocations-{index}", daemon=True
            )
            feed.thread.start()

    # --- keys -----------------------------------------------------------------------------

    def _fetch_keys(self) -> bool:
        """Fetch the JWKS, with `_fetch_lock` held; whether it worked. A failure keeps the keys
        in hand and pushes the next background refresh out, exponentially up to a cap."""
        started = time.monotonic()
        with self._lock:
            self._last_fetch = started
        try:
            response = self._http.get(self.jwks_url)
            response.raise_for_status()
            keys: dict[tuple[str, str], VerificationKey] = {}
            for jwk in response.json().get("keys", []):
                kid = jwk.get("kid")
                key = key_from_jwk(jwk) if isinstance(kid, str) else None
                if key is not None:
                    keys[(self.issuer, kid)] = key
        except (httpx.HTTPError, ValueError, AttributeError):
            with self._lock:
                self._failed_refreshes += 1
                backoff = self.jwks_backoff * 2.0 ** (self._failed_refreshes - 1)
                self._next_refresh = time.monotonic() + min(backoff, self.max_jwks_backoff)
            log.warning("fetching the JWKS failed; serving the keys in hand")
            return False
        match = _MAX_AGE.search(response.headers.get("cache-control", ""))
        max_age = float(match.group(1)) if match else self.default_jwks_max_age
        with self._lock:
            self._keys = keys
            self._keys_expire_at = started + max_age
            self._failed_refreshes = 0
            self._next_refresh = 0.0
        return True

    def _refresh_if_stale(self) -> None:
        """Start one background refresh once the JWKS max-age has passed; never waits."""
        now = time.monotonic()
        if now < self._keys_expire_at or now < self._next_refresh or self._refresher is not None:
            return
        with self._lock:
            if self._refresher is not None or self._stop.is_set():
                return
            refresher = self._refresher = threading.Thread(
                target=self._refresh, name="control-jwks-refresh", daemon=True
            )
        refresher.start()

    def _refresh(self) -> None:
        try:
            with self._fetch_lock:
                now = time.monotonic()  # another fetch may have just succeeded, or failed
                if now >= self._keys_expire_at and now >= self._next_refresh:
                    self._fetch_keys()
        finally:
            with self._lock:
                self._refresher = None

    def _unknown_kid_may_fetch(self) -> bool:
        # A fetch under way may bring the key; otherwise fetch at most once per interval, so a
        # flood of tokens with made-up kids cannot turn into a flood of fetches.
        return (
            self._fetch_lock.locked()
            or time.monotonic() - self._last_fetch >= self.min_refetch_interval
        )

    def _find_key(self, kid: str) -> VerificationKey | None:
        key = self._keys.get((self.issuer, kid))
        if key is not None:
            self._refresh_if_stale()
            return key
        if not self._unknown_kid_may_fetch():
            return None
        with self._fetch_lock:  # waits for a fetch under way rather than starting another
            key = self._keys.get((self.issuer, kid))
            if key is None and time.monotonic() - self._last_fetch >= self.min_refetch_interval:
                self._fetch_keys()
                key = self._keys.get((self.issuer, kid))
        return key

    def _find_key_without_fetching(self, kid: str) -> VerificationKey | None:
        key = self._keys.get((self.issuer, kid))
        if key is not None:
            self._refresh_if_stale()
            return key
        if self._unknown_kid_may_fetch():
            raise _FetchNeeded
        return None

    # --- revocations ----------------------------------------------------------------------

    def poll_revocations(self) -> int:
        """Read every revocation feed from where it was left, dropping entries past the
        horizon; returns the entries applied. Raises if a feed cannot be read."""
        return sum(self._poll(feed) for feed in self._feeds)

    def _poll(self, feed: _Feed) -> int:
        revocations = feed.revocations
        applied = 0
        while True:
            params = {"after": revocations.cursor} if revocations.cursor else {}
            response = self._http.get(feed.source.url, params=params, headers=feed.headers)
            if response.status_code == 410 and revocations.cursor and _cursor_expired(response):
                # The feed was pruned past this cursor: what was pruned concerns only expired
                # tokens, and what is left is read again from the start (kept entries stay).
                log.info("revocation feed %s: cursor expired; reading it from the start",
                         feed.source.url)  # fmt: skip
                revocations.cursor = None
                continue
            response.raise_for_status()
            page = response.json()
            with self._lock:
                for entry in page.get("items", []):
                    revocations.apply(entry)
                    applied += 1
                revocations.cursor = page.get("next_cursor") or revocations.cursor
            if not page.get("items"):
                break
        with self._lock:
            dropped = revocations.prune(time.time(), self.revocation_horizon)
        if dropped:
            log.debug("dropped %d revocations whose tokens have all expired", dropped)
        return applied

    def _follow(self, feed: _Feed) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self._poll(feed)
            except (httpx.HTTPError, ValueError, AttributeError):
                log.warning("polling the revocation feed %s failed; will retry", feed.source.url)

    def _revoked(self, claims: Mapping[str, Any]) -> str | None:
        for feed in self._feeds:
            if feed.covers(claims):
                reason = feed.revocations.reason(claims)
                if reason is not None:
                    return reason
        return None

    # --- public API -----------------------------------------------------------------------

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or `TokenRejected` with a code."""
        return self._check(token, self._find_key)

    async def verify_async(self, token: str) -> dict[str, Any]:
        """`verify` for an event loop: the one case that fetches (a key never seen, at most
        once per `min_refetch_interval`) runs on a worker thread; every other call returns
        without awaiting anything."""
        try:
            return self._check(token, self._find_key_without_fetching)
        except _FetchNeeded:
            return await asyncio.to_thread(self.verify, token)

    def _check(
        self, token: str, find_key: Callable[[str], VerificationKey | None]
    ) -> dict[str, Any]:
        claims = self._verified.claims(
            token, find_key, issuer=self.issuer, audience=self.audience, leeway=self.leeway
        )
        reason = self._revoked(claims) if self._feeds else None
        if reason is not None:
            raise TokenRejected(reason, "the token has been revoked")
        return claims

    def authorize(
        self,
        claims: Mapping[str, Any],
        stream: str,
        query_set: str | None = None,
        op: str = "subscribe",
        *,
        stream_org: str | None = None,
    ) -> Grant:
        """The grant covering the request, or `GrantDenied` with a code. Pass `stream_org`, the
        org your records say holds `stream`, for a kind-wide grant (`run:*`) to count."""
        return authorize(claims, stream, query_set, op, stream_org=stream_org)

    def close(self) -> None:
        self._stop.set()
        for thread in [feed.thread for feed in self._feeds] + [self._refresher]:
            if thread is not None:
                thread.join(timeout=5)
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> GrantVerifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _cursor_expired(response: httpx.Response) -> bool:
    """Whether a 410 is the feed's `cursor_expired` (and not, say, a retired route)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("code") == "cursor_expired"
