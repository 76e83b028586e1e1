"""Verifying upstream OIDC ID tokens with joserfc (Authlib's JOSE implementation).

Which issuer a token claims is read from its (unverified) `iss` and looked up among the trusted
issuers; only then are that issuer's discovery document and JWKS fetched. Headers the token
supplies (`jku`, `x5u`, `jwk`) are never followed: keys come only from the trusted issuer's own
discovery document. JWKS are cached per issuer and refetched on an unknown `kid`, at most once
per `min_refetch_interval`.

Whoever presents a token makes this service fetch, so fetching is bounded: only registered
issuers, only targets the network policy allows (`control.federation.network`), one fetch per
issuer at a time, a total time budget, a size cap, no redirects, and after a failure no new
attempt for a backoff that doubles with each further failure. What went wrong upstream is
logged here and never told to the caller.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import JWKRegistry, KeySet

from control.federation.network import (
    IPAddress,
    NetworkPolicy,
    Target,
    TargetRefused,
    Unresolved,
)
from control.observability.hooks import federation_fetch, federation_fetch_skipped

log = logging.getLogger("control.federation")

MAX_ID_TOKEN_BYTES = 16 * 1024
MAX_ISSUER_CHARS = 500
# Discovery documents and JWKS are a few KiB; anything near this is not one.
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 100
MAX_ADDRESSES = 4
# The whole fetch (discovery document and JWKS) must finish within this, connects included.
FETCH_BUDGET_SECONDS = 5.0
# After a failed fetch, no new attempt for this long, doubling per further failure up to the
# cap: an unreachable issuer costs a handful of attempts per minute however many tokens name it.
BACKOFF_INITIAL_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0
# Asymmetric key types only: a symmetric key in a public JWKS would be no secret at all.
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})


class UpstreamRejected(Exception):
    """The upstream token is not acceptable; `reason` is a precise, non-secret code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UpstreamUnavailable(Exception):
    """The trusted issuer's keys cannot be had now; `retry_after` is when to try again (s).

    The message is for the server's log only: it may name hosts and upstream errors."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class _FetchFailed(Exception):
    """Why one fetch failed, for the log."""


def usable_text(value: str) -> bool:
    """Whether `value` can be stored and echoed: valid UTF-8 (no lone surrogates), no control
    characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in value)


def unverified_issuer(token: str) -> str:
    if len(token) > MAX_ID_TOKEN_BYTES or token.count(".") != 2:
        raise UpstreamRejected("malformed", "not a compact JWT")
    try:
        payload = json.loads(jws.extract_compact(token.encode()).payload)
    # RecursionError: deeply nested JSON fits in a token.
    except (JoseError, ValueError, UnicodeError, RecursionError):
        raise UpstreamRejected("malformed", "the token cannot be decoded") from None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise UpstreamRejected("malformed", "the token names no issuer")
    if len(issuer) > MAX_ISSUER_CHARS or not usable_text(issuer):
        # It is looked up in the database next; text the driver cannot encode must not get there.
        raise UpstreamRejected("malformed", "the token's issuer is not a usable URL")
    return issuer


@dataclass
class _IssuerKeys:
    keys: KeySet
    fetched_at: float


@dataclass
class _Backoff:
    failures: int
    retry_at: float


class UpstreamVerifier:
    """Per-replica cache of trusted issuers' keys, and ID-token verification."""

    def __init__(
        self,
        *,
        http: httpx.Client | None = None,
        max_age: float = 300.0,
        min_refetch_interval: float = 30.0,
        leeway: int = 60,
        backoff_initial: float = BACKOFF_INITIAL_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        fetch_budget: float = FETCH_BUDGET_SECONDS,
    ) -> None:
        # Built on first use: most replicas never fetch an issuer's keys, and a client's TLS
        # context costs tens of milliseconds to load.
        self._given_http = http
        self._made_http: httpx.Client | None = None
        self.max_age = max_age
        self.min_refetch_interval = min_refetch_interval
        self.leeway = leeway
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.fetch_budget = fetch_budget
        self._keys: dict[str, _IssuerKeys] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._fetching: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        if self._given_http is not None:
            return self._given_http
        with self._lock:
            if self._made_http is None:
                self._made_http = httpx.Client(
                    timeout=self.fetch_budget,
                    follow_redirects=False,
                    # No proxy from the environment: it would connect on our behalf to a
                    # target this module never checked.
                    trust_env=False,
                    # Connections go to checked addresses with the name only in SNI and Host;
                    # a pooled connection is keyed by address, so one made for one name must
                    # not serve another.
                    limits=httpx.Limits(max_keepalive_connections=0),
                )
            return self._made_http

    # --- fetching ---------------------------------------------------------------------------

    def _get_json(self, url: str, policy: NetworkPolicy, deadline: float) -> Any:
        """GET a JSON document from a checked address: no redirects, within the deadline,
        at most MAX_DOCUMENT_BYTES."""
        try:
            target = policy.resolve(policy.parse(url))
        except (TargetRefused, Unresolved) as exc:
            raise _FetchFailed(f"{url}: {exc}") from None
        body = b""
        # A name may resolve to several addresses (IPv4 and IPv6) of which only some listen:
        # try the next on a refused connection, as a resolver-driven client would.
        for attempt, address in enumerate(target.addresses[:MAX_ADDRESSES], start=1):
            try:
                body = self._get_body(target, address, deadline)
                break
            except httpx.ConnectError as exc:
                if attempt == min(len(target.addresses), MAX_ADDRESSES):
                    raise _FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from None
            except httpx.HTTPError as exc:
                raise _FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from None
            except _FetchFailed as exc:
                raise _FetchFailed(f"{url}: {exc}") from None
        try:
            return json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise _FetchFailed(f"{url}: not JSON ({type(exc).__name__})") from None

    def _get_body(self, target: Target, address: IPAddress, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _FetchFailed("out of time")
        request_url, headers, extensions = _pinned(target, address)
        chunks: list[bytes] = []
        size = 0
        with self._http().stream(
            "GET",
            request_url,
            headers=headers,
            extensions=extensions,
            timeout=httpx.Timeout(remaining),
            follow_redirects=False,
        ) as response:
            if response.status_code != 200:
                raise _FetchFailed(f"HTTP {response.status_code}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                # Identity was asked for; a compressed body could inflate past any cap.
                raise _FetchFailed(f"unrequested content-encoding {encoding!r}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
                raise _FetchFailed(f"{declared} bytes is too large")
            # Read no further than the cap: the rest is never received, let alone buffered.
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise _FetchFailed(f"more than {MAX_DOCUMENT_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise _FetchFailed("out of time")
                chunks.append(chunk)
        return b"".join(chunks)

    @federation_fetch
    def _fetch(self, issuer: str, policy: NetworkPolicy) -> _IssuerKeys:
        deadline = time.monotonic() + self.fetch_budget
        document = self._get_json(f"{issuer}/.well-known/openid-configuration", policy, deadline)
        if not isinstance(document, dict):
            raise _FetchFailed("the discovery document is not a JSON object")
        if document.get("issuer") != issuer:
            raise _FetchFailed("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _FetchFailed("the discovery document has no jwks_uri")
        if issuer.startswith("https:") and not jwks_uri.startswith("https:"):
            raise _FetchFailed("the jwks_uri is not https like its issuer")
        keys = _import_keys(self._get_json(jwks_uri, policy, deadline))
        entry = _IssuerKeys(keys, time.monotonic())
        with self._lock:
            self._keys[issuer] = entry
            self._backoff.pop(issuer, None)
        return entry

    def _usable(self, entry: _IssuerKeys | None, kid: str | None, now: float) -> bool:
        """Whether the cached keys serve this token without a fetch."""
        if entry is None or now - entry.fetched_at > self.max_age:
            return False
        known = kid is None or any(key.kid == kid for key in entry.keys.keys)
        # An unknown kid may mean the issuer rotated its keys: refetch, but not too often.
        return known or now - entry.fetched_at <= self.min_refetch_interval

    def _fetch_lock(self, issuer: str) -> threading.Lock:
        with self._lock:
            return self._fetching.setdefault(issuer, threading.Lock())

    def _keys_for(self, issuer: str, kid: str | None, policy: NetworkPolicy) -> KeySet:
        entry = self._keys.get(issuer)
        if self._usable(entry, kid, time.monotonic()):
            assert entry is not None
            return entry.keys
        # One fetch per issuer at a time: concurrent tokens naming it wait for that fetch and
        # take its outcome rather than each sending their own.
        lock = self._fetch_lock(issuer)
        if not lock.acquire(timeout=self.fetch_budget * 2):
            raise UpstreamUnavailable(f"{issuer}: still fetching", math.ceil(self.fetch_budget))
        try:
            now = time.monotonic()
            entry = self._keys.get(issuer)
            if self._usable(entry, kid, now):
                assert entry is not None
                return entry.keys
            backoff = self._backoff.get(issuer)
            if backoff is not None and now < backoff.retry_at:
                fresh = entry is not None and now - entry.fetched_at <= self.max_age
                if fresh:
                    assert entry is not None
                    return entry.keys  # the refetch for an unknown kid can wait
                federation_fetch_skipped()
                raise UpstreamUnavailable(
                    f"{issuer}: backing off after {backoff.failures} failed fetches",
                    math.ceil(backoff.retry_at - now),
                )
            try:
                return self._fetch(issuer, policy).keys
            except _FetchFailed as exc:
                failures = 1 if backoff is None else backoff.failures + 1
                # The exponent is bounded: an issuer down for days must not overflow it.
                doublings = min(failures - 1, 32)
                delay = min(self.backoff_initial * 2**doublings, self.backoff_max)
                with self._lock:
                    self._backoff[issuer] = _Backoff(failures, time.monotonic() + delay)
                log.warning(
                    "cannot fetch the keys of trusted issuer %s (failure %d, next attempt in "
                    "%.0f s): %s",
                    issuer,
                    failures,
                    delay,
                    exc,
                )
                raise UpstreamUnavailable(f"{issuer}: {exc}", math.ceil(delay)) from None
        finally:
            lock.release()

    # --- verifying ----------------------------------------------------------------------------

    def verify(
        self,
        token: str,
        *,
        issuer: str,
        audiences: Sequence[str],
        algorithms: Sequence[str],
        network: NetworkPolicy | None = None,
    ) -> dict[str, Any]:
        """Verified claims of an ID token from `issuer` for one of `audiences`."""
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, UnicodeError, RecursionError):
            raise UpstreamRejected("malformed", "the token cannot be decoded") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in algorithms:
            raise UpstreamRejected("invalid_algorithm", "the token's algorithm is not accepted")
        policy = network or NetworkPolicy.strict()
        keys = self._keys_for(issuer, kid if isinstance(kid, str) else None, policy)
        if isinstance(kid, str) and not any(key.kid == kid for key in keys.keys):
            raise UpstreamRejected("unknown_key", "the issuer does not publish the token's key")
        try:
            decoded = jwt.decode(token, keys, algorithms=list(algorithms))
            now = int(time.time())
            registry = jwt.JWTClaimsRegistry(
                now=now,
                leeway=self.leeway,
                iss={"essential": True, "value": issuer},
                aud={"essential": True, "values": list(audiences)},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
            )
            registry.validate(decoded.claims)
        except BadSignatureError:
            raise UpstreamRejected("invalid_signature", "signature verification failed") from None
        except ExpiredTokenError:
            raise UpstreamRejected("expired", "the token has expired") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            claim = getattr(exc, "claim", "")
            reason = {"aud": "wrong_audience", "iss": "wrong_issuer"}.get(claim, "invalid_claims")
            name = claim if claim in _REGISTERED_CLAIMS else "a"
            raise UpstreamRejected(reason, f"claim {name!r} is not acceptable") from None
        except (JoseError, ValueError, TypeError, RecursionError):
            # A validly signed token whose contents joserfc cannot handle.
            raise UpstreamRejected("invalid_token", "the token cannot be verified") from None
        claims = dict(decoded.claims)
        for name in ("iat", "nbf"):
            value = claims.get(name)
            if isinstance(value, int | float) and value > now + self.leeway:
                raise UpstreamRejected("not_yet_valid", f"`{name}` is in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 1 <= len(sub) <= 255 or not usable_text(sub):
            raise UpstreamRejected("invalid_claims", "`sub` is not a usable subject")
        return claims

    def close(self) -> None:
        client = self._made_http if self._given_http is None else self._given_http
        if client is not None:
            client.close()


_REGISTERED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})


def _pinned(target: Target, address: IPAddress) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request for `target` sent to `address`, which was checked, with the name kept in
    the Host header and TLS's SNI (and so in certificate verification)."""
    url = target.url.copy_with(host=str(address))
    default_port = 443 if target.url.scheme == "https" else 80
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != default_port:
        host_header = f"{host_header}:{target.port}"
    headers = {
        "Host": host_header,
        "Accept": "application/json",
        "Accept-Encoding": "identity",
    }
    extensions: dict[str, Any] = {}
    if target.url.scheme == "https":
        extensions["sni_hostname"] = target.host
    return url, headers, extensions


def _import_keys(document: Any) -> KeySet:
    if not isinstance(document, dict):
        raise _FetchFailed("the JWKS is not a JSON object")
    published = document.get("keys")
    if not isinstance(published, list):
        raise _FetchFailed("the JWKS has no `keys` list")
    keys = []
    for data in published[:MAX_KEYS]:
        if not isinstance(data, dict) or data.get("kty") not in _KEY_TYPES:
            continue
        if data.get("use", "sig") != "sig":
            continue
        try:
            keys.append(JWKRegistry.import_key(data))
        # joserfc and cryptography raise a grab-bag of types (ValueError, TypeError,
        # binascii.Error, JoseError, ...) for keys they cannot read; one odd key must neither
        # break the set nor become a 500.
        except Exception as exc:
            log.info("skipping a key the JWKS publishes that cannot be imported: %r", exc)
    if not keys:
        raise _FetchFailed("the JWKS has no usable signing key")
    return KeySet(keys)
