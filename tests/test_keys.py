"""Signing keys: encrypted storage, OIDC discovery and JWKS, staged rotation and retirement.

Tokens and key sets are checked with joserfc, a JOSE implementation independent of the one the
service signs with (PyJWT + cryptography), the way SpacetimeDB or any verifier would.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control.app import create_app, prepare
from control.errors import Conflict
from control.keys import service
from control.keys.crypto import SUPPORTED_ALGS, KeyCipher, KeyDecryptionError
from control.keys.models import KeyState, SigningKey
from control.keys.service import KeyRing, KeySnapshot
from control.kit.db import make_engine, unit_of_work, utcnow
from control.settings import Settings
from control.state import AppState
from tests.cli import control_in_process, control_process
from tests.conftest import KEK, PEPPER, make_settings, state_over
from tests.factories import Api, OrgFixture, bootstrap, database_text, table_counts

OTHER_KEK = base64.urlsafe_b64encode(b"w" * 32).decode()
STREAM = "run:01J9ZK"
DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/.well-known/jwks.json"


# --- helpers ---------------------------------------------------------------------------------


def jose_verify(token: str, jwks: dict[str, Any], settings: Settings) -> jose_jwt.Token:
    """Verify signature and claims with joserfc against a JWKS, as an outside verifier does."""
    decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=list(SUPPORTED_ALGS))
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": settings.issuer},
        aud={"essential": True, "value": settings.audience},
        exp={"essential": True},
        token_use={"essential": True, "value": "sync"},
    ).validate(decoded.claims)
    return decoded


def kids(jwks: dict[str, Any]) -> list[str]:
    return [key["kid"] for key in jwks["keys"]]


def header_kid(token: str) -> str:
    return str(pyjwt.get_unverified_header(token)["kid"])


@dataclass
class Rig:
    """One replica served over the test transaction, an operator org and a member who mints."""

    state: AppState
    client: TestClient
    org: OrgFixture
    _member: Api | None = field(default=None)

    @property
    def settings(self) -> Settings:
        return self.state.settings

    def member(self) -> Api:
        if self._member is None:
            self._member = self.org.principal("alice")
            self.org.query_set("run_events", ["run"])
            self.org.stream(STREAM)
            self.org.allow(query_sets=["run_events"])
        return self._member

    def mint(self) -> str:
        response = self.member().post("/api/sync/token", {"streams": [STREAM]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert header_kid(body["token"]) == body["kid"]
        return str(body["token"])

    def jwks(self) -> dict[str, Any]:
        response = self.client.get(JWKS)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def reload(self) -> KeySnapshot:
        with unit_of_work(self.state.sessions) as session:
            return self.state.keyring.load(session)

    def rotate(self, now: datetime | None = None) -> dict[str, str]:
        with unit_of_work(self.state.sessions) as session:
            return service.rotate(session, self.settings, self.state.keyring.cipher, now=now)

    def retire(self, now: datetime) -> int:
        with unit_of_work(self.state.sessions) as session:
            return service.retire_expired(session, self.settings, now=now)

    def states(self) -> dict[str, str]:
        with self.state.sessions() as session:
            return {row.kid: row.state for row in session.scalars(select(SigningKey))}

    def row(self, kid: str) -> SigningKey:
        with self.state.sessions() as session:
            row = session.get(SigningKey, kid)
            assert row is not None
            return row

    def after_lead(self, extra: float = 1) -> datetime:
        """A moment by which every pending key now published has passed the lead time."""
        return utcnow() + timedelta(seconds=self.settings.key_publish_lead_seconds + extra)


@pytest.fixture
def make_rig(
    database_url: str, engine: Engine, connection: Connection
) -> Iterator[Callable[..., Rig]]:
    """`make_rig(**settings_overrides)`: one replica per test (the first org is the operator's)."""
    with ExitStack() as stack:

        def build(**overrides: object) -> Rig:
            state = state_over(make_settings(database_url, **overrides), engine, connection)
            app = create_app(state=state, background=False)
            client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
            return Rig(state=state, client=client, org=bootstrap(state, client, "org-a"))

        yield build


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


# --- first start, JWKS and discovery -------------------------------------------------------


def test_first_start_creates_one_active_and_one_pending_key(rig: Rig) -> None:
    states = sorted(rig.states().values())
    assert states == ["active", "pending"]
    snapshot = rig.state.keyring.snapshot
    active = [kid for kid, state in rig.states().items() if state == "active"]
    assert snapshot.active.kid == active[0]
    assert snapshot.active.alg == "ES256"
    assert sorted(kids(rig.jwks())) == sorted(rig.states())


def test_jwks_publishes_public_parts_only_with_thumbprint_kids(rig: Rig) -> None:
    jwks = rig.jwks()
    assert len(jwks["keys"]) == 2
    imported = KeySet.import_key_set(jwks)
    for jwk, key in zip(jwks["keys"], imported.keys, strict=True):
        assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("EC", "P-256", "sig", "ES256")
        assert not key.is_private
        # The kid is the RFC 7638 thumbprint, as joserfc computes it independently.
        assert jwk["kid"] == key.thumbprint()


def test_discovery_document(rig: Rig) -> None:
    response = rig.client.get(DISCOVERY)
    assert response.status_code == 200
    document = response.json()
    issuer = "http://127.0.0.1:8080"
    assert document["issuer"] == issuer
    assert document["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert document["token_endpoint"] == f"{issuer}/api/sync/token"
    assert document["introspection_endpoint"] == f"{issuer}/api/sync/introspect"
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    assert {"iss", "sub", "aud", "exp", "iat", "jti", "token_use", "grants", "org_id"} <= set(
        document["claims_supported"]
    )
    # The jwks_uri path is the one this replica serves.
    assert rig.client.get(document["jwks_uri"].removeprefix(issuer)).status_code == 200


def test_discovery_issuer_is_exactly_as_configured(make_rig: Callable[..., Rig]) -> None:
    issuer = "https://auth.example.com/tenants/acme"
    rig = make_rig(issuer=issuer)
    document = rig.client.get(DISCOVERY).json()
    assert document["issuer"] == issuer
    assert document["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    token = rig.mint()
    assert jose_verify(token, rig.jwks(), rig.settings).claims["iss"] == issuer


@pytest.mark.parametrize("path", [DISCOVERY, JWKS])
def test_discovery_documents_are_cacheable_with_etag(rig: Rig, path: str) -> None:
    first = rig.client.get(path)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "public, max-age=300"
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert rig.client.get(path).headers["etag"] == etag  # stable while nothing changes

    for presented in (etag, f'"stale", {etag}'):
        cached = rig.client.get(path, headers={"If-None-Match": presented})
        assert cached.status_code == 304
        assert cached.content == b""
        assert cached.headers["etag"] == etag
        assert cached.headers["cache-control"] == "public, max-age=300"

    stale = rig.client.get(path, headers={"If-None-Match": '"something-else"'})
    assert stale.status_code == 200
    assert stale.json() == first.json()


def test_cache_lifetime_follows_settings(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(jwks_max_age_seconds=60)
    for path in (DISCOVERY, JWKS):
        assert rig.client.get(path).headers["cache-control"] == "public, max-age=60"


def test_jwks_etag_changes_when_the_key_set_changes(rig: Rig) -> None:
    before = rig.client.get(JWKS).headers["etag"]
    rig.rotate(now=rig.after_lead())
    rig.reload()
    after = rig.client.get(JWKS)
    assert after.headers["etag"] != before
    assert rig.client.get(JWKS, headers={"If-None-Match": before}).status_code == 200


def test_token_verifies_with_an_independent_jose_implementation(rig: Rig) -> None:
    token = rig.mint()
    decoded = jose_verify(token, rig.jwks(), rig.settings)
    assert decoded.header == {
        "alg": "ES256",
        "typ": "JWT",
        "kid": rig.state.keyring.snapshot.active.kid,
    }
    assert decoded.claims["grants"][0]["stream"] == STREAM
    # joserfc really checks: a forged signature fails.
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(BadSignatureError):
        jose_verify(forged, rig.jwks(), rig.settings)


# --- staged rotation -------------------------------------------------------------------------


def test_rotation_is_staged_and_old_tokens_keep_verifying(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(key_publish_lead_seconds=0)
    jwks_before = rig.jwks()
    states = rig.states()
    old_active = next(kid for kid, state in states.items() if state == "active")
    pending = next(kid for kid, state in states.items() if state == "pending")
    old_token = rig.mint()
    assert header_kid(old_token) == old_active  # the pending key signs nothing

    response = rig.org.admin.post("/api/admin/keys/rotate")
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["active"], result["retiring"]) == (pending, old_active)
    new_pending = result["pending"]
    assert {item["kid"]: item["state"] for item in result["items"]} == {
        old_active: "retiring",
        pending: "active",
        new_pending: "pending",
    }

    rig.reload()  # what the refresher does every few seconds
    jwks_after = rig.jwks()
    assert sorted(kids(jwks_after)) == sorted([old_active, pending, new_pending])
    # A token signed before the rotation still verifies against the JWKS after it.
    assert jose_verify(old_token, jwks_after, rig.settings).header["kid"] == old_active
    # New tokens carry the new kid, and that key was in the JWKS before it signed anything.
    new_token = rig.mint()
    assert header_kid(new_token) == pending
    assert pending in kids(jwks_before)
    jose_verify(new_token, jwks_before, rig.settings)  # a verifier's cached copy suffices
    jose_verify(new_token, jwks_after, rig.settings)


def test_the_new_active_key_was_published_for_the_lead_time(rig: Rig) -> None:
    lead = rig.settings.key_publish_lead_seconds
    assert lead == 600  # the default
    pending = next(kid for kid, state in rig.states().items() if state == "pending")
    created = rig.row(pending).created_at
    with pytest.raises(Conflict):
        rig.rotate(now=created + timedelta(seconds=lead - 1))
    result = rig.rotate(now=created + timedelta(seconds=lead))
    assert result["active"] == pending
    row = rig.row(pending)
    assert row.activated_at is not None
    assert (row.activated_at - row.created_at).total_seconds() >= lead


def test_rotate_before_the_lead_time_is_a_409_and_changes_nothing(rig: Rig) -> None:
    states = rig.states()
    response = rig.org.admin.post("/api/admin/keys/rotate")
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "conflict"
    assert "published for" in problem["detail"]
    assert rig.states() == states


def test_rotate_without_a_pending_key_is_a_409_and_writes_nothing(rig: Rig) -> None:
    with unit_of_work(rig.state.sessions) as session:
        session.execute(delete(SigningKey).where(SigningKey.state == KeyState.PENDING))
    states = rig.states()
    with pytest.raises(Conflict, match="no pending key"):
        rig.rotate(now=rig.after_lead())
    assert rig.states() == states
    # Key maintenance (start-up, the refresher) publishes the missing pending key.
    snapshot = rig.state.keyring.refresh(rig.state.sessions)
    assert len(snapshot.jwks["keys"]) == 2
    assert sorted(rig.states().values()) == ["active", "pending"]


def test_retiring_key_is_published_until_max_ttl_plus_leeway(rig: Rig) -> None:
    old_token = rig.mint()
    old_kid = header_kid(old_token)
    at = rig.after_lead()
    rig.rotate(now=at)
    assert rig.row(old_kid).retiring_at == at
    grace = timedelta(
        seconds=rig.settings.token_ttl_max_seconds + rig.settings.token_leeway_seconds
    )
    assert grace == timedelta(seconds=930)

    assert rig.retire(at + grace - timedelta(seconds=1)) == 0
    rig.reload()
    assert old_kid in kids(rig.jwks())
    jose_verify(old_token, rig.jwks(), rig.settings)

    assert rig.retire(at + grace) == 1
    assert rig.states()[old_kid] == "retired"
    assert rig.row(old_kid).retired_at == at + grace
    rig.reload()
    jwks = rig.jwks()
    assert old_kid not in kids(jwks)
    assert len(jwks["keys"]) == 2
    # A verifier holding only the current JWKS no longer accepts the retired key.
    with pytest.raises(JoseError):
        jose_verify(old_token, jwks, rig.settings)
    listed = rig.org.admin.ok("GET", "/api/admin/keys")["items"]
    assert {item["kid"]: item["state"] for item in listed}[old_kid] == "retired"


def test_automatic_rotation_when_due(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(key_rotation_interval_seconds=3600)
    settings = rig.settings
    first_active = rig.state.keyring.snapshot.active.kid
    pending = next(kid for kid, state in rig.states().items() if state == "pending")
    with rig.state.sessions() as session:
        assert not service.maintenance_due(session, settings, utcnow())
    assert rig.state.keyring.refresh(rig.state.sessions).active.kid == first_active

    # An hour and a bit later (the keys are aged instead of waiting).
    past = utcnow() - timedelta(seconds=3601)
    with unit_of_work(rig.state.sessions) as session:
        session.execute(update(SigningKey).values(created_at=past))
        session.execute(
            update(SigningKey).where(SigningKey.state == KeyState.ACTIVE).values(activated_at=past)
        )
    with rig.state.sessions() as session:
        assert service.maintenance_due(session, settings, utcnow())
    snapshot = rig.state.keyring.refresh(rig.state.sessions)
    assert snapshot.active.kid == pending
    states = rig.states()
    assert states[first_active] == "retiring"
    assert sorted(states.values()) == ["active", "pending", "retiring"]
    assert header_kid(rig.mint()) == pending
    # Just rotated: nothing more to do until the next interval.
    with rig.state.sessions() as session:
        assert not service.maintenance_due(session, settings, utcnow())


def test_automatic_rotation_can_be_disabled(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(key_rotation_interval_seconds=0)
    active = rig.state.keyring.snapshot.active.kid
    past = utcnow() - timedelta(days=400)
    with unit_of_work(rig.state.sessions) as session:
        session.execute(update(SigningKey).values(created_at=past, activated_at=past))
    assert rig.state.keyring.refresh(rig.state.sessions).active.kid == active


def test_refresh_retires_expired_keys(rig: Rig) -> None:
    old = rig.state.keyring.snapshot.active.kid
    rig.rotate(now=rig.after_lead())
    rig.reload()
    assert old in kids(rig.jwks())
    with unit_of_work(rig.state.sessions) as session:
        session.execute(
            update(SigningKey)
            .where(SigningKey.kid == old)
            .values(retiring_at=utcnow() - timedelta(seconds=931))
        )
    snapshot = rig.state.keyring.refresh(rig.state.sessions)
    assert old not in kids(snapshot.jwks)
    assert old not in kids(rig.jwks())
    assert rig.states()[old] == "retired"


def test_a_replica_never_signs_with_a_key_absent_from_its_jwks(rig: Rig) -> None:
    """Two replicas on one database, one refreshing late, through rotations and retirements."""
    fresh = rig.state.keyring
    stale = KeyRing(rig.settings, KeyCipher(rig.settings.key_encryption_key_bytes()))
    with rig.state.sessions() as session:
        stale.load(session)
    step = timedelta(seconds=rig.settings.key_publish_lead_seconds + 1)
    first_jwks_with: dict[str, int] = dict.fromkeys(kids(fresh.snapshot.jwks), 0)
    retired = 0
    for step_no in range(1, 7):
        now = utcnow() + step * step_no
        rig.rotate(now=now)
        retired += rig.retire(now)
        rig.reload()
        if step_no % 2 == 0:  # the other replica picks up only every other change
            with rig.state.sessions() as session:
                stale.load(session)
        for kid in kids(fresh.snapshot.jwks):
            first_jwks_with.setdefault(kid, step_no)
        for ring in (fresh, stale):
            assert ring.snapshot.active.kid in kids(ring.snapshot.jwks)
        # What the slow replica signs still verifies against what the fast one publishes.
        claims = {
            "iss": rig.settings.issuer,
            "aud": rig.settings.audience,
            "exp": int(utcnow().timestamp()) + 300,
            "token_use": "sync",
        }
        active = stale.snapshot.active
        token = pyjwt.encode(
            claims, active.private_key, algorithm=active.alg, headers={"kid": active.kid}
        )
        jose_verify(token, fresh.snapshot.jwks, rig.settings)
        # And over HTTP: the minted kid is in the JWKS this replica serves, published earlier.
        minted_kid = header_kid(rig.mint())
        assert minted_kid in kids(rig.jwks())
        assert first_jwks_with[minted_kid] < step_no
    assert retired >= 3  # the loop went through real retirements


def test_two_active_keys_are_impossible(rig: Rig) -> None:
    pending = next(kid for kid, state in rig.states().items() if state == "pending")
    with rig.state.sessions() as session, pytest.raises(IntegrityError):
        session.execute(
            update(SigningKey).where(SigningKey.kid == pending).values(state=KeyState.ACTIVE)
        )
    assert sorted(rig.states().values()) == ["active", "pending"]


# --- encryption at rest ----------------------------------------------------------------------


def test_database_holds_no_plaintext_private_key(rig: Rig, session: Session) -> None:
    rig.mint()
    cipher = rig.state.keyring.cipher
    rows = list(session.scalars(select(SigningKey)))
    assert len(rows) == 2
    dump = database_text(session)
    blobs = [bytes(row.private_key_encrypted) for row in rows]
    for row in rows:
        private_key = cipher.decrypt(row.kid, bytes(row.private_key_encrypted))
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        scalar = private_key.private_numbers().private_value.to_bytes(32, "big")
        jwk_d = base64.urlsafe_b64encode(scalar).decode().rstrip("=")
        for blob in blobs:
            assert der not in blob
            assert scalar not in blob
        for text in (jwk_d, scalar.hex(), repr(scalar), pem.splitlines()[1]):
            assert text not in dump
        assert "d" not in row.public_jwk
    # The database alone opens nothing: another key-encryption key fails on every row.
    other = KeyCipher(base64.urlsafe_b64decode(OTHER_KEK + "="))
    for row in rows:
        with pytest.raises(KeyDecryptionError):
            other.decrypt(row.kid, bytes(row.private_key_encrypted))


def test_ciphertext_is_bound_to_its_kid(rig: Rig, session: Session) -> None:
    first, second = list(session.scalars(select(SigningKey)))
    with pytest.raises(KeyDecryptionError):
        rig.state.keyring.cipher.decrypt(first.kid, bytes(second.private_key_encrypted))


def test_wrong_key_encryption_key_fails_start_up(
    rig: Rig, database_url: str, engine: Engine, connection: Connection, session: Session
) -> None:
    before = table_counts(session)
    wrong = state_over(
        make_settings(database_url, key_encryption_key=OTHER_KEK), engine, connection
    )
    with pytest.raises(KeyDecryptionError, match="CONTROL_KEY_ENCRYPTION_KEY"):
        prepare(wrong)
    assert not wrong.keyring.loaded
    app = create_app(state=wrong, background=False)
    with pytest.raises(KeyDecryptionError, match="CONTROL_KEY_ENCRYPTION_KEY"):  # noqa: SIM117
        with TestClient(app):
            pass  # pragma: no cover - start-up fails
    assert table_counts(session) == before


def test_wrong_key_encryption_key_adds_no_key_nobody_else_can_open(
    rig: Rig, database_url: str, engine: Engine, connection: Connection
) -> None:
    """With the pending key missing, a replica with the wrong key must not create one."""
    with unit_of_work(rig.state.sessions) as session:
        session.execute(delete(SigningKey).where(SigningKey.state == KeyState.PENDING))
    states = rig.states()
    wrong = state_over(
        make_settings(database_url, key_encryption_key=OTHER_KEK), engine, connection
    )
    with pytest.raises(KeyDecryptionError):
        prepare(wrong)
    with pytest.raises(KeyDecryptionError):
        wrong.keyring.refresh(wrong.sessions)
    assert rig.states() == states


def test_rotation_under_the_wrong_key_encryption_key_changes_nothing(rig: Rig) -> None:
    states = rig.states()
    wrong = KeyCipher(base64.urlsafe_b64decode(OTHER_KEK + "="))
    with pytest.raises(KeyDecryptionError), unit_of_work(rig.state.sessions) as session:
        service.rotate(session, rig.settings, wrong, now=rig.after_lead())
    assert rig.states() == states


# --- the admin key routes ----------------------------------------------------------------------


def test_key_routes_need_the_operator_role(
    client: TestClient, org_a: OrgFixture, org_b: OrgFixture
) -> None:
    assert org_a.admin.get("/api/admin/keys").status_code == 200
    member = org_a.principal("member-of-a")
    org_b_member = org_b.principal("member-of-b")
    for api in (org_b.admin, member, org_b_member):
        for method, path in (("GET", "/api/admin/keys"), ("POST", "/api/admin/keys/rotate")):
            response = api.request(method, path)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["code"] == "forbidden"
    for method, path in (("GET", "/api/admin/keys"), ("POST", "/api/admin/keys/rotate")):
        response = client.request(method, path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_list_keys_shows_states_and_never_private_material(rig: Rig) -> None:
    rig.rotate(now=rig.after_lead())
    response = rig.org.admin.get("/api/admin/keys")
    assert response.status_code == 200
    body = response.json()
    assert sorted(item["state"] for item in body["items"]) == ["active", "pending", "retiring"]
    for item in body["items"]:
        assert item["alg"] == "ES256"
        assert item["created_at"]
        assert set(item["public_jwk"]) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert not set(item) & {"private_key", "private_key_encrypted", "d"}
    assert "private" not in response.text.lower()
    with rig.state.sessions() as session:
        for row in session.scalars(select(SigningKey)):
            blob = bytes(row.private_key_encrypted)
            for encoded in (base64.b64encode(blob), base64.urlsafe_b64encode(blob), blob.hex()):
                text = encoded if isinstance(encoded, str) else encoded.decode()
                assert text.rstrip("=")[:40] not in response.text


# --- RS256 -----------------------------------------------------------------------------------


def test_rs256_is_selectable(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(signing_alg="RS256")
    jwks = rig.jwks()
    assert len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert set(jwk) == {"kty", "n", "e", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
    assert isinstance(rig.state.keyring.snapshot.active.private_key, rsa.RSAPrivateKey)
    document = rig.client.get(DISCOVERY).json()
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    token = rig.mint()
    decoded = jose_verify(token, jwks, rig.settings)
    assert decoded.header["alg"] == "RS256"
    # Rotation keeps the algorithm.
    rig.rotate(now=rig.after_lead())
    rig.reload()
    assert {jwk["alg"] for jwk in rig.jwks()["keys"]} == {"RS256"}
    jose_verify(rig.mint(), rig.jwks(), rig.settings)
    jose_verify(token, rig.jwks(), rig.settings)


def test_switching_algorithm_goes_through_rotation(
    rig: Rig, database_url: str, engine: Engine, connection: Connection
) -> None:
    """ES256 keys already published keep verifying while RS256 keys take over."""
    es_token = rig.mint()
    rs = state_over(make_settings(database_url, signing_alg="RS256"), engine, connection)
    with unit_of_work(rs.sessions) as session:
        service.rotate(session, rs.settings, rs.keyring.cipher, now=rig.after_lead())
    with unit_of_work(rs.sessions) as session:
        # The ES256 pending key is active now; the new pending key is RS256.
        snapshot = rs.keyring.load(session)
        service.rotate(session, rs.settings, rs.keyring.cipher, now=rig.after_lead(2))
    assert snapshot.active.alg == "ES256"
    rig.reload()
    assert rig.state.keyring.snapshot.active.alg == "RS256"
    document = rig.client.get(DISCOVERY).json()
    assert document["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    jose_verify(es_token, rig.jwks(), rig.settings)
    assert pyjwt.get_unverified_header(rig.mint())["alg"] == "RS256"


# --- the command line ------------------------------------------------------------------------


def _cli_env(db: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONTROL_")}
    env.update(
        CONTROL_DATABASE_URL=f"sqlite:///{db}",
        CONTROL_KEY_ENCRYPTION_KEY=KEK,
        CONTROL_CREDENTIAL_PEPPER=PEPPER,
        CONTROL_DEV_SECRETS_FILE=str(db.parent / "secrets.json"),
    )
    env.update(extra)
    return env


def _control(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return control_process(args, env, cwd)


def _key_rows(db: Path) -> list[tuple[str, str, bytes]]:
    engine = make_engine(f"sqlite:///{db}")
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(SigningKey.kid, SigningKey.state, SigningKey.private_key_encrypted).order_by(
                    SigningKey.kid
                )
            )
            return [(kid, state, bytes(blob)) for kid, state, blob in rows]
    finally:
        engine.dispose()


def test_cli_keys_rotate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "control.db"
    env = _cli_env(db, CONTROL_KEY_PUBLISH_LEAD_SECONDS="0")
    # The first command runs as a real `control` process, the others as `main` in this one.
    assert _control(tmp_path, env, "db", "upgrade").returncode == 0

    first = control_in_process(monkeypatch, ("keys", "rotate"), env, tmp_path)
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    second = control_in_process(monkeypatch, ("keys", "rotate"), env, tmp_path)
    assert second.returncode == 0, second.stderr
    two = json.loads(second.stdout)
    assert two["retiring"] == one["active"]
    assert two["active"] == one["pending"]
    states = {kid: state for kid, state, _ in _key_rows(db)}
    assert states == {
        one["retiring"]: "retiring",
        one["active"]: "retiring",
        two["active"]: "active",
        two["pending"]: "pending",
    }

    # With the default lead time the fresh pending key is too new: 409 → exit 1, no change.
    rows = _key_rows(db)
    early = control_in_process(monkeypatch, ("keys", "rotate"), _cli_env(db), tmp_path)
    assert early.returncode == 1
    assert "conflict" in early.stderr
    assert _key_rows(db) == rows


def test_cli_refuses_a_wrong_key_encryption_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "control.db"
    env = _cli_env(db, CONTROL_KEY_PUBLISH_LEAD_SECONDS="0")
    # The first command, and `serve`, run as real `control` processes; the others as `main` in
    # this one. `serve` stays a process: one that did not refuse would serve until the timeout
    # fails the test (in this process, it would hang the run), and it reconfigures logging.
    assert _control(tmp_path, env, "db", "upgrade").returncode == 0
    assert control_in_process(monkeypatch, ("keys", "rotate"), env, tmp_path).returncode == 0
    rows = _key_rows(db)

    wrong = {**env, "CONTROL_KEY_ENCRYPTION_KEY": OTHER_KEK}
    for args in (
        ("keys", "rotate"),
        ("serve", "--port", "0"),
        ("token", "mint", "--principal", "nobody", "--stream", STREAM),
    ):
        if args[0] == "serve":
            result = _control(tmp_path, wrong, *args)
        else:
            result = control_in_process(monkeypatch, args, wrong, tmp_path)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "CONTROL_KEY_ENCRYPTION_KEY" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    # Nothing was written under the wrong key: the rows are byte for byte the same.
    assert _key_rows(db) == rows
    assert len(rows) == 3
