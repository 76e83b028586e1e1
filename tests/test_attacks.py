"""The JWT attack suite: every forged, tampered or out-of-policy token is rejected,
with the expected code, by both `control.runtime.GrantVerifier` and `POST /api/sync/introspect`.

The attacks are written once, as data (`ATTACKS`: name, forge function, expected code), and the
same list runs against both targets, on each database backend, against a real `control serve`.
Tokens that must carry the issuer's real signature (claim-level attacks) are signed with the
server's active private key, read from the same database. An attacker HTTP server stands at the
URLs that `jku` / `x5u` headers point to; it must never be asked for anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from control.app import prepare
from control.runtime import GrantVerifier, TokenRejected
from control.state import AppState
from tests.conftest import make_settings
from tests.factories import Api, OrgFixture
from tests.forge import (
    DROP,
    Forgery,
    b64url,
    b64url_decode,
    constant_signer,
    decode_part,
    encode_segment,
    es256_der_signer,
    es256_signer,
    hmac_signer,
    rs256_signer,
    split,
)
from tests.server import Server, running_server

# The attacks walk the verifier's lines the focused tests cover, so in this process they run
# outside coverage's tracer (harness/measurement.py); the server they attack is still measured.
pytestmark = [pytest.mark.e2e, pytest.mark.unmeasured]

LEEWAY = 30
MAX_TOKEN = 16 * 1024
CODES = frozenset(
    {
        "invalid_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "wrong_token_use",
        "unknown_key",
        "revoked",
        "malformed",
    }
)


# --- the attacker's server ------------------------------------------------------------------


class Attacker:
    """An HTTP server at the URLs hostile headers name. Records every request it gets."""

    PREFIX = "/a/"  # attack URLs live under here; /probe is for checking the server is up

    def __init__(self, jwks: dict[str, Any], cert_pem: bytes) -> None:
        self.requests: list[str] = []
        attacker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                attacker.requests.append(self.path)
                if self.path.endswith("jwks.json"):
                    body, kind = json.dumps(jwks).encode(), "application/json"
                else:
                    body, kind = cert_pem, "application/x-pem-file"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.base_url}{self.PREFIX}{path}"

    def attack_requests(self) -> list[str]:
        return [path for path in self.requests if path.startswith(self.PREFIX)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- the world the attacks run in -----------------------------------------------------------


@dataclass
class World:
    issuer: str
    forge: Forgery
    service: Api
    verifier: GrantVerifier
    verifier_urls: list[str]
    attacker: Attacker
    genuine: str  # a token minted by the server for alice
    genuine_other: str  # another one
    pending_kid: str  # a published key that is not the one signing
    revoked_jti: str
    mallory: str  # a principal revoked as a subject
    mallory_not_before: int
    evil_ec: ec.EllipticCurvePrivateKey
    evil_kid: str
    evil_rsa: rsa.RSAPrivateKey
    evil_jwk: dict[str, Any]
    evil_cert_der: bytes
    published_jwk: dict[str, Any]
    public_key: Any = field(repr=False)


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def server(fresh_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        fresh_database_url,
        tmp_path_factory.mktemp("attacks"),
        token_leeway_seconds=str(LEEWAY),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def world(server: Server, fresh_database_url: str) -> Iterator[World]:
    http = httpx.Client(base_url=server.base_url)
    boot = server.bootstrap("acme")
    org = OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)
    alice = org.principal("alice")
    service = org.principal("runtime", kind="service")
    org.principal("mallory")
    org.query_set("run_events", ["run"])
    org.stream("run:attack", owner_id=org.principals["alice"])
    org.allow(relation="owner", query_sets=["run_events"])
    genuine, genuine_other = (
        alice.ok("POST", "/api/sync/token", {"streams": ["run:attack"]}, status=200)
        for _ in range(2)
    )
    revoked_jti = f"revoked-{uuid.uuid4().hex}"
    org.admin.ok("POST", "/api/admin/revocations", {"kind": "jti", "value": revoked_jti})
    revocation = org.admin.ok(
        "POST", "/api/admin/revocations", {"kind": "subject", "value": org.principals["mallory"]}
    )

    # The key the server signs with, from the same database.
    state = AppState.build(make_settings(fresh_database_url, issuer=server.base_url))
    try:
        prepare(state)
        snapshot = state.keyring.snapshot
    finally:
        state.engine.dispose()
    active = snapshot.active
    pending = [kid for kid in snapshot.verification_keys if kid != active.kid]
    assert pending, "the server publishes its next key ahead"
    deadline = time.monotonic() + 10
    while True:
        published = http.get("/.well-known/jwks.json").json()["keys"]
        if any(key["kid"] == active.kid for key in published):
            break
        assert time.monotonic() < deadline, "the server does not publish the active key"
        time.sleep(0.2)
    assert genuine["kid"] == active.kid

    evil_ec = ec.generate_private_key(ec.SECP256R1())
    evil_jwk = dict(ECAlgorithm.to_jwk(evil_ec.public_key(), as_dict=True))
    evil_kid = f"attacker-{uuid.uuid4().hex[:8]}"
    evil_jwk.update(kid=evil_kid, alg="ES256", use="sig")
    cert = _self_signed(evil_ec)
    attacker = Attacker({"keys": [evil_jwk]}, cert.public_bytes(serialization.Encoding.PEM))

    verifier_urls: list[str] = []
    verifier_http = httpx.Client(
        timeout=5.0,
        event_hooks={"request": [lambda request: verifier_urls.append(str(request.url))]},
    )
    verifier = GrantVerifier(
        issuer=server.base_url,
        audience="spacetimedb",
        jwks_url=f"{server.base_url}/.well-known/jwks.json",
        revocations_url=f"{server.base_url}/api/sync/revocations",
        api_key=service.key,
        poll_interval=3600,  # the constructor reads the feed; the tests never need a re-read
        leeway=LEEWAY,
        http=verifier_http,
    )
    key = active.private_key
    try:
        yield World(
            issuer=server.base_url,
            forge=Forgery(
                issuer=server.base_url,
                audience="spacetimedb",
                org_id=org.org_id,
                subject=org.principals["alice"],
                kid=active.kid,
                alg=active.alg,
                key=key,
            ),
            service=service,
            verifier=verifier,
            verifier_urls=verifier_urls,
            attacker=attacker,
            genuine=genuine["token"],
            genuine_other=genuine_other["token"],
            pending_kid=pending[0],
            revoked_jti=revoked_jti,
            mallory=org.principals["mallory"],
            mallory_not_before=int(dt.datetime.fromisoformat(revocation["not_before"]).timestamp()),
            evil_ec=evil_ec,
            evil_kid=evil_kid,
            evil_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            evil_jwk=evil_jwk,
            evil_cert_der=cert.public_bytes(serialization.Encoding.DER),
            published_jwk=next(k for k in published if k["kid"] == active.kid),
            public_key=key.public_key(),
        )
    finally:
        verifier.close()
        verifier_http.close()
        attacker.close()
        http.close()


# --- the two targets ------------------------------------------------------------------------


def via_verifier(world: World, token: str) -> str | None:
    """None when accepted, else the rejection code."""
    try:
        world.verifier.verify(token)
    except TokenRejected as rejected:
        return rejected.code
    return None


def via_introspection(world: World, token: str) -> str | None:
    response = world.service.post("/api/sync/introspect", {"token": token})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    if body["active"]:
        return None
    assert set(body) == {"active", "reason"}, body  # nothing about a rejected token leaks
    return str(body["reason"])


TARGETS: dict[str, Callable[[World, str], str | None]] = {
    "verifier": via_verifier,
    "introspect": via_introspection,
}


# --- forging helpers ------------------------------------------------------------------------

Forge = Callable[[World], str]


def now() -> int:
    return int(time.time())


def with_header(**changes: Any) -> Forge:
    """The real key's signature over a header with `changes` (callables get the world)."""

    def forge(w: World) -> str:
        values = {k: v(w) if callable(v) else v for k, v in changes.items()}
        return w.forge.token(header=w.forge.header(**values))

    return forge


def with_claims(**changes: Any) -> Forge:
    """The real key's signature over claims with `changes` (callables get the current time)."""

    def forge(w: World) -> str:
        t = now()
        values = {k: v(t) if callable(v) else v for k, v in changes.items()}
        return w.forge.token(payload=w.forge.claims(**values))

    return forge


def with_payload_text(tail: str, **changes: Any) -> Forge:
    """Valid claims (minus `changes`) as exact JSON text, then `tail` appended before `}`."""
    return lambda w: w.forge.token(payload=w.forge.claims_json(**changes) + tail + "}")


def with_header_text(text: Callable[[World], str]) -> Forge:
    return lambda w: w.forge.token(header=text(w))


def hs(digest: str, secret: Callable[[World], bytes], alg: str = "HS256") -> Forge:
    return lambda w: w.forge.token(
        header=w.forge.header(alg=alg), sign=hmac_signer(secret(w), digest)
    )


def evil_signed(**header: Any) -> Forge:
    """Signed by the attacker's EC key, header `changes` applied (callables get the world)."""

    def forge(w: World) -> str:
        values = {k: v(w) if callable(v) else v for k, v in header.items()}
        return w.forge.token(header=w.forge.header(**values), sign=es256_signer(w.evil_ec))

    return forge


def with_signature(signature: Callable[[World, bytes], bytes]) -> Forge:
    """A valid token's header and payload with another signature (given the real one)."""

    def forge(w: World) -> str:
        header, payload, real = split(w.forge.token())
        return f"{header}.{payload}.{b64url(signature(w, b64url_decode(real)))}"

    return forge


def tampered_genuine(change: Callable[[World, dict[str, Any]], None]) -> Forge:
    """A token the server minted, its payload changed, its original signature kept."""

    def forge(w: World) -> str:
        header, payload, signature = split(w.genuine)
        claims = decode_part(payload)
        change(w, claims)
        return f"{header}.{encode_segment(claims)}.{signature}"

    return forge


def sized(size: int) -> Forge:
    """A validly signed token of exactly `size` characters (padded with an extra claim)."""

    def forge(w: World) -> str:
        # A base64url segment cannot have every length: try a header with and without `typ`.
        for header in (w.forge.header(), w.forge.header(typ=DROP)):
            low, high = 0, size
            while low <= high:
                middle = (low + high) // 2
                token = w.forge.token(header=header, payload=w.forge.claims(pad="x" * middle))
                if len(token) == size:
                    return token
                if len(token) < size:
                    low = middle + 1
                else:
                    high = middle - 1
        raise AssertionError(f"no token of exactly {size} characters")

    return forge


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def public_pem(w: World) -> bytes:
    return bytes(
        w.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def public_der(w: World) -> bytes:
    return bytes(
        w.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def public_point(w: World) -> bytes:
    # What SpacetimeDB's HS verification would use as the HMAC secret for an EC key.
    return bytes(
        w.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def swap_signature(w: World) -> str:
    header, payload, _ = split(w.forge.token())
    return f"{header}.{payload}.{split(w.genuine_other)[2]}"


def reencoded_genuine(w: World) -> str:
    """The same claims in other JSON bytes (spaces after separators): the signature covers
    bytes, not meaning."""
    header, payload, signature = split(w.genuine)
    return f"{header}.{encode_segment(json.dumps(decode_part(payload)))}.{signature}"


def _widen(_w: World, claims: dict[str, Any]) -> None:
    claims["grants"][0]["ops"] = ["subscribe", "append", "checkpoint"]


def _to_mallory(w: World, claims: dict[str, Any]) -> None:
    claims["sub"] = w.mallory


def _renew(_w: World, claims: dict[str, Any]) -> None:
    claims["exp"] += 3600


# --- the attacks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    forge: Forge
    expected: str


A = Attack
SIG, KEY, BAD = "invalid_signature", "unknown_key", "malformed"
EXPIRED, NYV, ISS, AUD = "expired", "not_yet_valid", "wrong_issuer", "wrong_audience"
USE, REV = "wrong_token_use", "revoked"


def unsigned(**header: Any) -> Forge:
    """No signature at all, header `changes` applied."""
    return lambda w: w.forge.token(header=w.forge.header(**header), sign=constant_signer(b""))


OTHER_ALGS = {
    "null": None,
    "empty": "",
    "lower_case_es256": "es256",
    "es256_trailing_space": "ES256 ",
    "ES384": "ES384",
    "ES512": "ES512",
    "ES256K": "ES256K",
    "EdDSA": "EdDSA",
    "PS256": "PS256",
    "RS512": "RS512",
    "HS256": "HS256",
    "list": ["ES256"],
    "object": {"alg": "ES256"},
}


ATTACKS: list[Attack] = [
    # --- alg: none, and every algorithm other than the key's ---------------------------------
    A("alg_none_empty_signature", unsigned(alg="none"), SIG),
    A("alg_none_without_kid", unsigned(alg="none", kid=DROP), SIG),
    A("alg_none_with_a_real_signature", with_header(alg="none"), SIG),
    A("alg_None_capitalised", unsigned(alg="None"), SIG),
    A("alg_NONE_upper_case", unsigned(alg="NONE"), SIG),
    A("alg_nOnE_mixed_case", unsigned(alg="nOnE"), SIG),
    A("alg_missing", with_header(alg=DROP), SIG),
    *(
        A(f"alg_{name}_with_real_signature", with_header(alg=alg), SIG)
        for name, alg in OTHER_ALGS.items()
    ),
    # --- HS256 signed with the published public key (algorithm confusion) --------------------
    A("hs256_secret_public_key_pem", hs("sha256", public_pem), SIG),
    A("hs256_secret_public_key_der", hs("sha256", public_der), SIG),
    A("hs256_secret_public_point", hs("sha256", public_point), SIG),
    A(
        "hs256_secret_published_jwk_json",
        hs("sha256", lambda w: json.dumps(w.published_jwk).encode()),
        SIG,
    ),
    A("hs256_secret_kid", hs("sha256", lambda w: w.forge.kid.encode()), SIG),
    A("hs384_secret_public_key_pem", hs("sha384", public_pem, "HS384"), SIG),
    A("hs512_secret_public_key_pem", hs("sha512", public_pem, "HS512"), SIG),
    A(
        "rs256_header_on_the_ec_kid",
        lambda w: w.forge.token(header=w.forge.header(alg="RS256"), sign=rs256_signer(w.evil_rsa)),
        SIG,
    ),
    # --- kid unknown, empty, path-like, SQL-like, ...  (signed with the real key) ------------
    A("kid_unknown", with_header(kid="k-" + uuid.uuid4().hex), KEY),
    A("kid_empty", with_header(kid=""), KEY),
    A("kid_missing", with_header(kid=DROP), KEY),
    A("kid_null", with_header(kid=None), KEY),
    A("kid_integer", with_header(kid=1), KEY),
    A("kid_list_of_the_real_kid", with_header(kid=lambda w: [w.forge.kid]), KEY),
    A("kid_object", with_header(kid=lambda w: {"kid": w.forge.kid}), KEY),
    A("kid_path_traversal", with_header(kid="../../../../../../etc/passwd"), KEY),
    A("kid_absolute_path", with_header(kid="/dev/null"), KEY),
    A("kid_windows_path", with_header(kid="..\\..\\..\\windows\\win.ini"), KEY),
    A("kid_path_after_real_kid", with_header(kid=lambda w: f"{w.forge.kid}/../x"), KEY),
    A("kid_file_url", with_header(kid="file:///etc/passwd"), KEY),
    A("kid_sql_tautology", with_header(kid="' OR '1'='1"), KEY),
    A(
        "kid_sql_union",
        with_header(kid="x' UNION SELECT private_key_encrypted FROM signing_keys --"),
        KEY,
    ),
    A("kid_sql_drop", with_header(kid="x'; DROP TABLE signing_keys; --"), KEY),
    A("kid_nul_byte", with_header(kid=lambda w: w.forge.kid + "\x00"), KEY),
    A("kid_trailing_space", with_header(kid=lambda w: w.forge.kid + " "), KEY),
    A("kid_case_changed", with_header(kid=lambda w: w.forge.kid.swapcase()), KEY),
    A("kid_10000_chars", with_header(kid="k" * 10_000), KEY),
    A("kid_attacker_url", with_header(kid=lambda w: w.attacker.url("jwks.json")), KEY),
    # --- jku / x5u / jwk / x5c pointing elsewhere: never followed ---------------------------
    A(
        "jku_attacker_jwks_attacker_kid",
        evil_signed(jku=lambda w: w.attacker.url("jwks.json"), kid=lambda w: w.evil_kid),
        KEY,
    ),
    A("jku_attacker_jwks_real_kid", evil_signed(jku=lambda w: w.attacker.url("jwks.json")), SIG),
    A(
        "jku_attacker_jwks_no_kid",
        evil_signed(jku=lambda w: w.attacker.url("jwks.json"), kid=DROP),
        KEY,
    ),
    A(
        "x5u_attacker_cert_attacker_kid",
        evil_signed(x5u=lambda w: w.attacker.url("cert.pem"), kid=lambda w: w.evil_kid),
        KEY,
    ),
    A("x5u_attacker_cert_real_kid", evil_signed(x5u=lambda w: w.attacker.url("cert.pem")), SIG),
    A(
        "jwk_embedded_attacker_kid",
        evil_signed(jwk=lambda w: w.evil_jwk, kid=lambda w: w.evil_kid),
        KEY,
    ),
    A("jwk_embedded_real_kid", evil_signed(jwk=lambda w: w.evil_jwk), SIG),
    A("jwk_embedded_no_kid", evil_signed(jwk=lambda w: w.evil_jwk, kid=DROP), KEY),
    A(
        "x5c_attacker_cert_real_kid",
        evil_signed(x5c=lambda w: [base64.b64encode(w.evil_cert_der).decode()]),
        SIG,
    ),
    A(
        "x5c_attacker_cert_no_kid",
        evil_signed(x5c=lambda w: [base64.b64encode(w.evil_cert_der).decode()], kid=DROP),
        KEY,
    ),
    A(
        "jku_x5u_jwk_together_real_kid",
        evil_signed(
            jku=lambda w: w.attacker.url("jwks.json"),
            x5u=lambda w: w.attacker.url("cert.pem"),
            jwk=lambda w: w.evil_jwk,
        ),
        SIG,
    ),
    A(
        "rs256_attacker_key_embedded_jwk",
        lambda w: w.forge.token(
            header=w.forge.header(
                alg="RS256",
                kid=w.evil_kid,
                jku=w.attacker.url("jwks.json"),
                jwk={
                    "kty": "RSA",
                    "kid": w.evil_kid,
                    "e": "AQAB",
                    "n": b64url(w.evil_rsa.public_key().public_numbers().n.to_bytes(256, "big")),
                },
            ),
            sign=rs256_signer(w.evil_rsa),
        ),
        KEY,
    ),
    # --- payload or header tampered, signature kept; signatures that are not the key's -------
    A("tampered_genuine_widened_ops", tampered_genuine(_widen), SIG),
    A("tampered_genuine_other_subject", tampered_genuine(_to_mallory), SIG),
    A("tampered_genuine_renewed_exp", tampered_genuine(_renew), SIG),
    A(
        "tampered_genuine_other_stream",
        tampered_genuine(lambda _w, c: c["grants"][0].__setitem__("stream", "run:other")),
        SIG,
    ),
    A("genuine_payload_reencoded_same_claims", reencoded_genuine, SIG),
    A(
        "tampered_genuine_header",
        lambda w: (
            f"{encode_segment({**decode_part(split(w.genuine)[0]), 'typ': 'at+jwt'})}."
            f"{split(w.genuine)[1]}.{split(w.genuine)[2]}"
        ),
        SIG,
    ),
    A("signature_of_another_token", swap_signature, SIG),
    A("signature_by_attacker_key_real_kid", evil_signed(), SIG),
    A(
        "signature_by_real_key_kid_of_other_published_key",
        with_header(kid=lambda w: w.pending_kid),
        SIG,
    ),
    A("signature_empty", with_signature(lambda _w, _s: b""), SIG),
    A("signature_truncated", with_signature(lambda _w, s: s[:32]), SIG),
    A("signature_extended", with_signature(lambda _w, s: s + b"\x00"), SIG),
    A("signature_zero_r_s_psychic", with_signature(lambda _w, _s: bytes(64)), SIG),
    A("signature_random", with_signature(lambda _w, _s: uuid.uuid4().bytes * 4), SIG),
    A("signature_bit_flipped", with_signature(lambda _w, s: s[:-1] + bytes([s[-1] ^ 1])), SIG),
    A("signature_der_encoded", lambda w: w.forge.token(sign=es256_der_signer(w.forge.key)), SIG),
    A("signature_not_base64url", lambda w: w.forge.token().rsplit(".", 1)[0] + ".!!!!", BAD),
    # --- time -------------------------------------------------------------------------------
    A("expired", with_claims(exp=lambda t: t - LEEWAY - 60), EXPIRED),
    A("expired_long_ago", with_claims(iat=1, nbf=1, exp=2), EXPIRED),
    A("expired_exp_before_iat", with_claims(exp=lambda t: t - LEEWAY - 1), EXPIRED),
    A("nbf_in_the_future", with_claims(nbf=lambda t: t + LEEWAY + 60), NYV),
    A("iat_in_the_future", with_claims(iat=lambda t: t + LEEWAY + 60, exp=lambda t: t + 600), NYV),
    A(
        "iat_in_the_future_without_nbf",
        with_claims(nbf=DROP, iat=lambda t: t + LEEWAY + 60, exp=lambda t: t + 600),
        NYV,
    ),
    A("nbf_far_future", with_claims(nbf=4_000_000_000, exp=4_000_000_300), NYV),
    # --- issuer -----------------------------------------------------------------------------
    A("iss_other", with_claims(iss="https://evil.example"), ISS),
    A(
        "iss_trailing_slash",
        lambda w: w.forge.token(payload=w.forge.claims(iss=w.issuer + "/")),
        ISS,
    ),
    A("iss_upper_case", lambda w: w.forge.token(payload=w.forge.claims(iss=w.issuer.upper())), ISS),
    A(
        "iss_https",
        lambda w: w.forge.token(
            payload=w.forge.claims(iss=w.issuer.replace("http://", "https://"))
        ),
        ISS,
    ),
    A(
        "iss_trailing_space",
        lambda w: w.forge.token(payload=w.forge.claims(iss=w.issuer + " ")),
        ISS,
    ),
    A(
        "iss_with_path",
        lambda w: w.forge.token(payload=w.forge.claims(iss=w.issuer + "/evil")),
        ISS,
    ),
    A("iss_spacetimedb_local", with_claims(iss="localhost"), ISS),
    A("iss_list", lambda w: w.forge.token(payload=w.forge.claims(iss=[w.issuer])), ISS),
    A("iss_null", with_claims(iss=None), ISS),
    A("iss_empty", with_claims(iss=""), ISS),
    # --- audience ---------------------------------------------------------------------------
    A("aud_other", with_claims(aud="other-database"), AUD),
    A("aud_upper_case", with_claims(aud="SPACETIMEDB"), AUD),
    A("aud_empty", with_claims(aud=""), AUD),
    A("aud_list_of_others", with_claims(aud=["other", "another"]), AUD),
    A("aud_empty_list", with_claims(aud=[]), AUD),
    A("aud_nested_list", with_claims(aud=[["spacetimedb"]]), AUD),
    A("aud_null", with_claims(aud=None), AUD),
    A("aud_trailing_slash", with_claims(aud="spacetimedb/"), AUD),
    # --- every required claim missing, and required claims of the wrong shape ---------------
    *(
        A(f"missing_{name}", with_claims(**{name: DROP}), BAD)
        for name in ("iss", "sub", "aud", "iat", "exp", "jti", "token_use", "grants")
    ),
    A("sub_empty", with_claims(sub=""), BAD),
    A("sub_129_bytes", with_claims(sub="s" * 129), BAD),
    A("sub_not_a_string", with_claims(sub=42), BAD),
    A("jti_empty", with_claims(jti=""), BAD),
    A("jti_not_a_string", with_claims(jti=7), BAD),
    A("grants_not_a_list", with_claims(grants={"stream": "run:attack"}), BAD),
    A(
        "grants_bad_stream_id",
        with_claims(grants=[{"stream": "run", "query_sets": [], "ops": ["subscribe"]}]),
        BAD,
    ),
    # --- token_use --------------------------------------------------------------------------
    A("token_use_refresh", with_claims(token_use="refresh"), USE),
    A("token_use_id", with_claims(token_use="id"), USE),
    A("token_use_capitalised", with_claims(token_use="Sync"), USE),
    A("token_use_trailing_space", with_claims(token_use="sync "), USE),
    A("token_use_empty", with_claims(token_use=""), USE),
    A("token_use_null", with_claims(token_use=None), USE),
    A("token_use_list", with_claims(token_use=["sync"]), USE),
    # --- revocation -------------------------------------------------------------------------
    A("revoked_jti", lambda w: w.forge.token(payload=w.forge.claims(jti=w.revoked_jti)), REV),
    A(
        "subject_revoked_after_issue",
        lambda w: w.forge.token(
            payload=w.forge.claims(
                sub=w.mallory, iat=w.mallory_not_before - 5, nbf=w.mallory_not_before - 5
            )
        ),
        REV,
    ),
    A(
        "subject_revoked_token_issued_long_before",
        lambda w: w.forge.token(
            payload=w.forge.claims(
                sub=w.mallory, iat=w.mallory_not_before - 3600, nbf=w.mallory_not_before - 3600
            )
        ),
        REV,
    ),
    # --- size -------------------------------------------------------------------------------
    A("oversized_16KiB_plus_one", sized(MAX_TOKEN + 1), BAD),
    A("oversized_17KiB", sized(17 * 1024), BAD),
    A("oversized_unsigned_garbage", lambda _w: "a" * 9000 + "." + "b" * 9000 + ".c", BAD),
    # --- duplicate JSON members -------------------------------------------------------------
    A(
        "header_duplicate_alg_none_last",
        with_header_text(
            lambda w: f'{{"alg":"{w.forge.alg}","typ":"JWT","kid":"{w.forge.kid}","alg":"none"}}'
        ),
        BAD,
    ),
    A(
        "header_duplicate_alg_none_first",
        with_header_text(
            lambda w: f'{{"alg":"none","typ":"JWT","kid":"{w.forge.kid}","alg":"{w.forge.alg}"}}'
        ),
        BAD,
    ),
    A(
        "header_duplicate_kid",
        with_header_text(
            lambda w: f'{{"alg":"{w.forge.alg}","kid":"{w.evil_kid}","kid":"{w.forge.kid}"}}'
        ),
        BAD,
    ),
    A(
        "header_duplicate_kid_escaped",
        with_header_text(
            lambda w: f'{{"alg":"{w.forge.alg}","kid":"{w.forge.kid}","k\\u0069d":"{w.evil_kid}"}}'
        ),
        BAD,
    ),
    A("payload_duplicate_sub", with_payload_text(',"sub":"someone-else"'), BAD),
    A("payload_duplicate_sub_escaped", with_payload_text(',"s\\u0075b":"someone-else"'), BAD),
    A("payload_duplicate_exp", with_payload_text(',"exp":4000000000'), BAD),
    A("payload_duplicate_iss", with_payload_text(',"iss":"https://evil.example"'), BAD),
    A("payload_duplicate_aud", with_payload_text(',"aud":"other-database"'), BAD),
    A(
        "payload_duplicate_grants",
        with_payload_text(',"grants":[{"stream":"run:other","query_sets":[],"ops":["append"]}]'),
        BAD,
    ),
    A(
        "payload_duplicate_member_inside_a_grant",
        with_payload_text(
            ',"grants":[{"stream":"run:attack","stream":"run:other","query_sets":[],'
            '"ops":["subscribe"]}]',
            grants=DROP,
        ),
        BAD,
    ),
    # --- exp (and iat, nbf) not an integer --------------------------------------------------
    A("exp_float_whole", with_claims(exp=lambda t: float(t + 300)), BAD),
    A("exp_float_fraction", with_claims(exp=lambda t: t + 300.5), BAD),
    A(
        "exp_exponent_notation",
        lambda w: w.forge.token(
            payload=w.forge.claims_json(exp=DROP) + f',"exp":{(now() + 300) / 1e9}e9}}'
        ),
        BAD,
    ),
    A("exp_string", with_claims(exp=lambda t: str(t + 300)), BAD),
    A("exp_true", with_claims(exp=True), BAD),
    A("exp_null", with_claims(exp=None), BAD),
    A("exp_list", with_claims(exp=lambda t: [t + 300]), BAD),
    A("exp_object", with_claims(exp=lambda t: {"value": t + 300}), BAD),
    A("exp_nan", with_payload_text(',"exp":NaN', exp=DROP), BAD),
    A("exp_infinity", with_payload_text(',"exp":Infinity', exp=DROP), BAD),
    A("exp_1e400", with_payload_text(',"exp":1e400', exp=DROP), BAD),
    A("exp_5000_digits", with_payload_text(',"exp":' + "9" * 5000, exp=DROP), BAD),
    A("iat_float", with_claims(iat=lambda t: t + 0.5), BAD),
    A("nbf_string", with_claims(nbf=lambda t: str(t)), BAD),
    # --- structure --------------------------------------------------------------------------
    A("two_segments", lambda w: w.forge.token().rsplit(".", 1)[0], BAD),
    A("four_segments", lambda w: w.forge.token() + ".e30", BAD),
    A("header_not_base64url", lambda w: "!!!!." + w.forge.token().split(".", 1)[1], BAD),
    A("header_not_json", lambda w: w.forge.token(header=b"\xff\xfe not json"), BAD),
    A("header_json_array", lambda w: w.forge.token(header=f'["{w.forge.alg}"]'), BAD),
    A(
        "header_deeply_nested",
        with_header_text(
            lambda w: f'{{"alg":"{w.forge.alg}","kid":"{w.forge.kid}","x":{nested(5000)}}}'
        ),
        BAD,
    ),
    A("header_crit", with_header(crit=["exp"]), BAD),
    A("header_b64_false", with_header(b64=False), BAD),
    A("payload_not_json", lambda w: w.forge.token(payload="not json"), BAD),
    A("payload_json_array", lambda w: w.forge.token(payload='["sync"]'), BAD),
    A("payload_deeply_nested", with_payload_text(f',"x":{nested(5000)}'), BAD),
]


# The same token must be accepted by both targets: proof that the forger writes tokens the
# service takes, so each attack above fails for the reason it names.
CONTROLS: list[tuple[str, Forge]] = [
    ("minted_by_the_server", lambda w: w.genuine),
    ("forged_with_the_issuer_key", lambda w: w.forge.token()),
    ("exactly_16KiB", sized(MAX_TOKEN)),
    ("expired_within_leeway", with_claims(exp=lambda t: t - LEEWAY + 10)),
    ("nbf_within_leeway", with_claims(nbf=lambda t: t + LEEWAY - 10)),
    ("aud_list_with_the_audience", with_claims(aud=["other", "spacetimedb"])),
    ("unknown_claims_kept", with_claims(hex_identity=None, extra={"a": [1, 2]})),
    (
        "revoked_subject_token_issued_after",
        lambda w: w.forge.token(
            payload=w.forge.claims(
                sub=w.mallory, iat=w.mallory_not_before, nbf=w.mallory_not_before
            )
        ),
    ),
]


@pytest.fixture
def no_foreign_requests(world: World) -> Iterator[None]:
    seen = len(world.verifier_urls)
    yield
    assert world.attacker.attack_requests() == [], "a hostile header was followed"
    foreign = [u for u in world.verifier_urls[seen:] if not u.startswith(world.issuer + "/")]
    assert foreign == [], "the verifier asked someone other than the issuer"


@pytest.mark.usefixtures("no_foreign_requests")
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
def test_attack_is_rejected(world: World, attack: Attack, target: str) -> None:
    token = attack.forge(world)
    assert TARGETS[target](world, token) == attack.expected


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("control", CONTROLS, ids=[name for name, _ in CONTROLS])
def test_control_is_accepted(world: World, control: tuple[str, Forge], target: str) -> None:
    token = control[1](world)
    assert TARGETS[target](world, token) is None


@pytest.mark.parametrize(
    "layout",
    [{"separators": (",", ":")}, {"indent": 1}],
    ids=["compact", "indented"],
)
def test_a_cached_token_reads_back_exactly(world: World, layout: dict[str, Any]) -> None:
    # The verifier keeps each token's signed JSON; a cache hit must give the claims the first
    # verification gave, whichever decoder read them (a number beyond 64 bits stays an int).
    claims = world.forge.claims(x=2**70, y=[1.5, "\u00fc"])
    token = world.forge.token(payload=json.dumps(claims, **layout))
    first = world.verifier.verify(token)
    again = world.verifier.verify(token)
    assert first == again == claims
    assert type(again["x"]) is int


def test_the_attacker_server_answers(world: World) -> None:
    """Zero requests at the attacker's URLs means something only if it is there to ask."""
    response = httpx.get(f"{world.attacker.base_url}/probe/jwks.json", timeout=5)
    assert response.json()["keys"][0]["kid"] == world.evil_kid
    assert world.attacker.attack_requests() == []


def test_attack_list() -> None:
    names = [attack.name for attack in ATTACKS]
    assert len(names) == len(set(names)), "attack names are unique"
    assert len(ATTACKS) >= 30
    assert {attack.expected for attack in ATTACKS} == CODES, "every rejection code is exercised"


def test_summary_every_attack_rejected_by_both_targets(
    server: Server, world: World, backend_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole list once more against both targets, counted: the number the issue asks for."""
    tried = rejected = 0
    wrong: list[str] = []
    for attack in ATTACKS:
        for target, check in TARGETS.items():
            tried += 1
            code = check(world, attack.forge(world))
            if code == attack.expected:
                rejected += 1
            else:
                wrong.append(f"{attack.name} via {target}: {code!r}, expected {attack.expected}")
    assert world.attacker.attack_requests() == []
    assert "Traceback" not in server.log(), "an attack made the server fail"
    with capsys.disabled():  # shown in every run, not only on failure
        print(
            f"\nJWT attack suite [{backend_name}]: {len(ATTACKS)} attacks x {len(TARGETS)} targets"
            f" = {tried} tried, {rejected} rejected with the expected code"
        )
    assert wrong == []
    assert rejected == tried == len(ATTACKS) * len(TARGETS)


@pytest.fixture(scope="module")
def backend_name(fresh_database_url: str) -> str:
    return "sqlite" if fresh_database_url.startswith("sqlite") else "postgresql"
