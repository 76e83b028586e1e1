"""A stand-in for SpacetimeDB's reducer-call route, for tests: no SpacetimeDB server runs in this
project's tests, so this loopback HTTP server implements that one route's documented contract and
a Python model of the module's reducers that the control plane and the runtime call.

It is a stand-in, not SpacetimeDB: it serves only

    POST /v1/database/{name}/call/{reducer}

- the body must be `Content-Type: application/json`, a JSON array of the reducer's arguments
  (415 otherwise, 400 when the arguments do not fit the reducer);
- `Authorization: Bearer <token>` is checked as SpacetimeDB checks it: the issuer's
  `/.well-known/openid-configuration`, its `jwks_uri`, the key named by `kid` (ES256 / RS256),
  `iss`, `sub` and integer `iat` required, `exp` with 60 s leeway, `aud` not checked; an invalid
  token is 401. The caller's Identity is blake3 of `iss|sub`, as SpacetimeDB computes it. It
  fetches keys only from the issuer it is told to trust (the control plane under test);
- the module's `client_connected` runs first: the configured control-plane Identity passes,
  anyone else needs a sync token the module accepts (`control.grants.accept_sync_claims`, the
  catalog check, the module's revocations), else 403 `<code>: <message>`;
- the reducer then answers 200 (empty body) when it commits, 530 `<code>: <message>` when it
  fails, 404 for an unknown database or reducer, as SpacetimeDB does.

The reducers follow the module's rules (`module/src/writes.ts`; `tests/test_spacetime_standin.py`
holds this model to the same shared vectors): `revoke_subject(org_id, subject, not_before_unix)`,
`revoke_jti(org_id, jti)`, `append(stream_id, payload, idempotency_key)` and
`append_batch(stream_id, idempotency_keys, payloads)`.

Faults, for the tests: `fail(n, status)` answers the next n calls with `status` (without applying
them, or after applying them with `after_apply=True`, as when a response is lost); `hang(seconds)`
holds each call that long before answering.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt

from control.grants import ClaimsRejected, GrantDecision, accept_sync_claims, authorize
from control.spacetime.catalog import shipped_catalog
from control.tokens.spacetime_identity import spacetimedb_identity

ROUTE = re.compile(r"^/v1/database/([^/]+)/call/([^/]+)\Z")
KEY_CACHE_SECONDS = 300.0
EXP_LEEWAY = 60
REVOCATION_RETENTION_SECONDS = 900 + 60
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._~:-]{1,128}\Z")
MAX_BATCH = 256
MAX_PAYLOAD = 64 * 1024


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Session:
    connection_id: str
    subject: str
    jti: str
    org_id: str
    issued_at: int
    expires_at: int
    grants: tuple[Any, ...] = ()


@dataclass
class Database:
    """One database's module state."""

    issuer: str
    audience: str
    control_plane: str  # Identity hex
    # (org, kind, value, not_before) -> expires_at: what `sync_revocation` holds.
    revocations: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    # Open subscriptions (as `sync_session`), which revocations drop.
    sessions: dict[str, Session] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    heads: dict[tuple[str, str], int] = field(default_factory=dict)
    keys: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (org, stream, seq, key, payload), in append order.
    events: list[tuple[str, str, int, str, str]] = field(default_factory=list)

    # --- the module's rules (module/src/writes.ts) ---------------------------------------

    def revoke(self, org_id: str, kind: str, value: str, not_before: int, now: int) -> list[str]:
        for what in (org_id, value):
            if not 1 <= len(what) <= 200 or "\x00" in what:
                raise Refused(530, "invalid_request: values must be 1 to 200 characters")
        known = any(
            (o, k, v) == (org_id, kind, value) and (kind == "jti" or nb == not_before)
            for (o, k, v, nb) in self.revocations
        )
        if not known:
            start = max(now, not_before) if kind == "subject" else now
            self.revocations[(org_id, kind, value, not_before)] = (
                start + REVOCATION_RETENTION_SECONDS
            )
        dropped = []
        for session in list(self.sessions.values()):
            if self.covers(org_id, kind, value, not_before, session):
                del self.sessions[session.connection_id]
                dropped.append(session.connection_id)
        self.dropped.extend(dropped)
        return dropped

    @staticmethod
    def covers(org_id: str, kind: str, value: str, not_before: int, session: Session) -> bool:
        if session.org_id != org_id:
            return False
        if kind == "jti":
            return session.jti == value
        return session.subject == value and session.issued_at < not_before

    def revoked(self, session: Session) -> bool:
        return any(
            self.covers(org, kind, value, nb, session)
            for (org, kind, value, nb) in self.revocations
        )

    def append(
        self, org_id: str, stream: str, entries: list[tuple[str, str]]
    ) -> list[tuple[str, int, bool]]:
        if not 1 <= len(entries) <= MAX_BATCH:
            raise Refused(530, f"invalid_request: a batch holds 1 to {MAX_BATCH} events")
        for key, payload in entries:
            if not IDEMPOTENCY_KEY.match(key):
                raise Refused(530, "invalid_request: bad idempotency key")
            if len(payload) > MAX_PAYLOAD:
                raise Refused(530, "payload_too_large: payload too long")
        seq = self.heads.get((org_id, stream), 0)
        out = []
        for key, payload in entries:
            first = self.keys.get((org_id, stream, key))
            if first is not None:
                out.append((key, first, True))
                continue
            seq += 1
            self.events.append((org_id, stream, seq, key, payload))
            self.keys[(org_id, stream, key)] = seq
            out.append((key, seq, False))
        self.heads[(org_id, stream)] = seq
        return out

    def stream_events(self, org_id: str, stream: str) -> list[tuple[int, str, str]]:
        return [(s, k, p) for (o, st, s, k, p) in self.events if (o, st) == (org_id, stream)]


@dataclass
class Call:
    database: str
    reducer: str
    args: Any
    identity: str | None
    status: int


class SpacetimeStandIn:
    """The stand-in server: `with SpacetimeStandIn.running(issuer, audience) as db: ...`."""

    def __init__(self, trusted_issuer: str, audience: str) -> None:
        self.trusted_issuer = trusted_issuer
        self.audience = audience
        self.databases: dict[str, Database] = {}
        self.calls: list[Call] = []
        self.lock = threading.RLock()
        self._faults: list[tuple[int, bool]] = []
        self._hang = 0.0
        self.in_flight = 0  # calls being handled now
        self._stopping = threading.Event()
        self._keys: tuple[float, dict[str, Any]] | None = None
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # --- setup ------------------------------------------------------------------------------

    def add_database(self, name: str, *, control_plane_subject: str = "control-plane") -> Database:
        """A database published with the module and `configure`d for the control plane."""
        identity = spacetimedb_identity(self.trusted_issuer, control_plane_subject)
        with self.lock:
            database = Database(self.trusted_issuer, self.audience, identity)
            self.databases[name] = database
            return database

    def fail(self, count: int, status: int = 500, *, after_apply: bool = False) -> None:
        with self.lock:
            self._faults.extend([(status, after_apply)] * count)

    def hang(self, seconds: float) -> None:
        with self.lock:
            self._hang = seconds

    def calls_to(self, database: str, status: int | None = None) -> list[Call]:
        with self.lock:
            return [
                c
                for c in self.calls
                if c.database == database and (status is None or c.status == status)
            ]

    # --- token checks, as SpacetimeDB makes them -------------------------------------------

    def _jwks(self, issuer: str) -> dict[str, Any]:
        now = time.monotonic()
        if self._keys is not None and now - self._keys[0] < KEY_CACHE_SECONDS:
            return self._keys[1]
        with httpx.Client(timeout=5) as http:
            config = http.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration").json()
            jwks: dict[str, Any] = http.get(config["jwks_uri"]).json()
        if any("kid" not in key for key in jwks.get("keys", [])):
            raise Refused(401, "a JWKS key has no kid")
        self._keys = (now, jwks)
        return jwks

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Refused(401, "Authorization header is not a valid token") from None
        issuer = unverified.get("iss")
        if issuer != self.trusted_issuer:
            # SpacetimeDB would fetch any issuer's keys; the stand-in trusts only the one issuer.
            raise Refused(401, "unknown issuer")
        if header.get("alg") not in ("ES256", "RS256"):
            raise Refused(401, "unsupported algorithm")
        try:
            jwks = self._jwks(issuer)
        except (httpx.HTTPError, ValueError, KeyError):
            raise Refused(401, "cannot fetch the issuer's keys") from None
        match = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")]
        if not match:
            raise Refused(401, "unknown kid")
        try:
            key = jwt.PyJWK(match[0]).key
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                options={"verify_aud": False, "require": ["iss", "sub", "iat"]},
                leeway=EXP_LEEWAY,
            )
        except jwt.PyJWTError:
            raise Refused(401, "invalid token") from None
        if not isinstance(claims.get("iat"), int):
            raise Refused(401, "iat must be an integer")
        return claims

    # --- the module ------------------------------------------------------------------------

    def _connect(self, database: Database, identity: str, claims: dict[str, Any]) -> Session:
        """The module's `client_connected`: 403 `<code>: <message>` when it refuses."""
        if identity == database.control_plane:
            return Session("", claims["sub"], claims.get("jti", ""), "", 0, 0)
        try:
            grants, org_id = accept_sync_claims(
                claims,
                issuer=database.issuer,
                audience=database.audience,
                now=int(time.time()),
                leeway=0,
            )
        except ClaimsRejected as rejected:
            raise Refused(403, f"{rejected.code}: {rejected}") from None
        catalog = shipped_catalog()
        for grant in grants:
            kind = grant.stream.split(":", 1)[0]
            for ref in grant.query_sets:
                if not catalog.serves(ref, kind):
                    raise Refused(403, f"query_set_not_served: {ref} on {grant.stream}")
        session = Session(
            "",
            claims["sub"],
            claims["jti"],
            org_id,
            claims["iat"],
            claims["exp"],
            grants,
        )
        if database.revoked(session):
            raise Refused(403, "revoked: the token has been revoked")
        return session

    def _reduce(
        self, database: Database, session: Session, identity: str, reducer: str, args: Any
    ) -> None:
        now = int(time.time())
        if reducer in ("revoke_subject", "revoke_jti"):
            shapes = {"revoke_subject": (str, str, int), "revoke_jti": (str, str)}
            shape = shapes[reducer]
            if (
                not isinstance(args, list)
                or len(args) != len(shape)
                or not all(
                    isinstance(a, t) and not isinstance(a, bool)
                    for a, t in zip(args, shape, strict=False)
                )
            ):
                raise Refused(400, f"invalid arguments for reducer {reducer}")
            if identity != database.control_plane:
                raise Refused(530, "forbidden: only the control plane identity may revoke")
            if reducer == "revoke_subject":
                database.revoke(args[0], "subject", args[1], args[2], now)
            else:
                database.revoke(args[0], "jti", args[1], 0, now)
            return
        if reducer in ("append", "append_batch"):
            if reducer == "append":
                ok = (
                    isinstance(args, list)
                    and len(args) == 3
                    and all(isinstance(a, str) for a in args)
                )
                if not ok:
                    raise Refused(400, "invalid arguments for reducer append")
                stream, entries = args[0], [(args[2], args[1])]
            else:
                ok = (
                    isinstance(args, list)
                    and len(args) == 3
                    and isinstance(args[0], str)
                    and all(
                        isinstance(x, list) and all(isinstance(i, str) for i in x) for x in args[1:]
                    )
                )
                if not ok:
                    raise Refused(400, "invalid arguments for reducer append_batch")
                if len(args[1]) != len(args[2]):
                    raise Refused(530, "invalid_request: keys and payloads differ in length")
                stream, entries = args[0], list(zip(args[1], args[2], strict=True))
            if session.org_id == "":
                raise Refused(530, f"stream_not_granted: {stream} is not granted")
            if session.expires_at <= now:
                raise Refused(530, f"stream_not_granted: {stream} is not granted")
            try:
                authorize(
                    session.grants,
                    stream,
                    None,
                    "append",
                    token_org=session.org_id,
                    stream_org=session.org_id,
                )
            except GrantDecision as decision:
                raise Refused(530, f"{decision.code}: {decision}") from None
            database.append(session.org_id, stream, entries)
            return
        raise Refused(404, f"no such reducer {reducer}")

    def handle(self, path: str, headers: Any, body: bytes) -> tuple[int, str]:
        with self.lock:
            self.in_flight += 1
        try:
            return self._handle(path, headers, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _handle(self, path: str, headers: Any, body: bytes) -> tuple[int, str]:
        match = ROUTE.match(path)
        if match is None:
            return 404, "Not Found"
        name, reducer = match.groups()
        identity: str | None = None
        status, message = 200, ""
        try:
            if headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                raise Refused(415, "Expected request with `Content-Type: application/json`")
            auth = headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                # SpacetimeDB would mint an anonymous identity; the module refuses it.
                raise Refused(403, "malformed: a sync token is required")
            claims = self._verify(auth.removeprefix("Bearer ").strip())
            identity = spacetimedb_identity(claims["iss"], claims["sub"])
            try:
                args = json.loads(body)
            except ValueError:
                raise Refused(400, "the body is not JSON") from None
            with self.lock:
                faults = self._faults.pop(0) if self._faults else None
                hang = self._hang
            if hang:
                self._stopping.wait(hang)
            if faults is not None and not faults[1]:
                raise Refused(faults[0], "stand-in fault")
            with self.lock:
                database = self.databases.get(name)
                if database is None:
                    raise Refused(404, "No such database.")
                session = self._connect(database, identity, claims)
                self._reduce(database, session, identity, reducer, args)
            if faults is not None:
                raise Refused(faults[0], "stand-in fault after apply")
        except Refused as refused:
            status, message = refused.status, refused.message
        with self.lock:
            self.calls.append(Call(name, reducer, _safe_json(body), identity, status))
        return status, message

    # --- serving ----------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def running(
        cls, trusted_issuer: str, audience: str = "spacetimedb"
    ) -> Iterator[SpacetimeStandIn]:
        standin = cls(trusted_issuer, audience)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(standin))
        server.daemon_threads = True
        standin._server = server
        standin.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(
            target=server.serve_forever, name="spacetime-standin", daemon=True
        )
        thread.start()
        try:
            yield standin
        finally:
            standin._stopping.set()
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def _safe_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _handler(standin: SpacetimeStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, message = standin.handle(self.path, self.headers, body)
            data = message.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the caller gave up waiting (a timeout, or a process that died)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read `standin.calls`

    return Handler
