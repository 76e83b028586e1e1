"""Staged key rotation and the per-replica key ring.

Every state change happens under the `signing_keys` database lock, and the partial unique index
on `state = 'active'` makes a second active key impossible even if that lock were bypassed.
Each replica keeps a snapshot of the published keys, refreshed every few seconds; it signs only
with the active key of the same snapshot it serves as its JWKS, so it never signs with a key its
own JWKS lacks, and rotation publishes a key at least `key_publish_lead_seconds` before any
replica may sign with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from control.errors import Conflict
from control.keys.crypto import KeyCipher, SigningPrivateKey, generate_private_key, public_jwk
from control.keys.models import PUBLISHED_STATES, KeyState, SigningKey
from control.kit import locks
from control.kit.db import unit_of_work, utcnow
from control.observability.hooks import key_rotated
from control.runtime import VerificationKey, key_from_jwk
from control.settings import Settings

log = logging.getLogger("control.keys")


@dataclass(frozen=True)
class ActiveKey:
    kid: str
    alg: str
    private_key: SigningPrivateKey


@dataclass(frozen=True)
class KeySnapshot:
    """What one replica publishes and signs with, loaded together so they always agree."""

    active: ActiveKey
    jwks: dict[str, Any]
    jwks_body: bytes
    etag: str
    algs: tuple[str, ...]
    loaded_at: datetime
    # kid -> key, for verifying tokens this issuer signed (introspection).
    verification_keys: dict[str, VerificationKey]
    # (kid, state, created_at, activated_at, retiring_at) of each published key: operators' gauges.
    key_states: tuple[tuple[str, str, datetime, datetime | None, datetime | None], ...] = ()


def _new_key(session: Session, settings: Settings, cipher: KeyCipher, state: KeyState) -> str:
    private_key = generate_private_key(settings.signing_alg)
    jwk = public_jwk(private_key, settings.signing_alg)
    now = utcnow()
    session.add(
        SigningKey(
            kid=jwk["kid"],
            alg=settings.signing_alg,
            state=state,
            public_jwk=jwk,
            private_key_encrypted=cipher.encrypt(jwk["kid"], private_key),
            created_at=now,
            activated_at=now if state is KeyState.ACTIVE else None,
        )
    )
    session.flush()
    return str(jwk["kid"])


def _keys_in(session: Session, state: KeyState) -> list[SigningKey]:
    return list(
        session.scalars(
            select(SigningKey).where(SigningKey.state == state).order_by(SigningKey.created_at)
        )
    )


def _check_decrypts(cipher: KeyCipher, keys: list[SigningKey]) -> None:
    """Raise `KeyDecryptionError` unless `cipher` opens every key: proof that the
    key-encryption key is the right one before anything is written under it."""
    for key in keys:
        cipher.decrypt(key.kid, key.private_key_encrypted)


def ensure_keys(session: Session, settings: Settings, cipher: KeyCipher) -> None:
    """On a fresh database: one active key and one pending key, published ahead.

    The keys that sign now or will sign next must decrypt under `cipher` first, so a wrong
    key-encryption key fails here instead of adding a key no other replica can open.
    """
    locks.acquire(session, locks.KEY_RING_LOCK)
    _check_decrypts(
        cipher, _keys_in(session, KeyState.ACTIVE) + _keys_in(session, KeyState.PENDING)
    )
    if not _keys_in(session, KeyState.ACTIVE):
        _new_key(session, settings, cipher, KeyState.ACTIVE)
    if not _keys_in(session, KeyState.PENDING):
        _new_key(session, settings, cipher, KeyState.PENDING)


def rotate(
    session: Session, settings: Settings, cipher: KeyCipher, *, now: datetime | None = None
) -> dict[str, str]:
    """Promote the pending key, retire the active one, publish a new pending key.

    Refuses (409) while the pending key has been published for less than the lead time, since a
    verifier with a cached JWKS would reject tokens signed with it.
    """
    locks.acquire(session, locks.KEY_RING_LOCK)
    # Read the clock only once the lock is held: a rotation that waited for another one must
    # judge the lead time, and stamp `retiring_at`, by when it really happens.
    now = now or utcnow()
    pending = _keys_in(session, KeyState.PENDING)
    if not pending:
        # Nothing written here would survive the rollback of this 409; key maintenance
        # (`ensure_keys`, on start-up and in every replica's refresher) publishes one.
        raise Conflict("no pending key is published; key maintenance publishes one, rotate later")
    candidate = pending[0]
    _check_decrypts(cipher, [candidate])
    published_for = (now - candidate.created_at).total_seconds()
    if published_for < settings.key_publish_lead_seconds:
        wait = int(settings.key_publish_lead_seconds - published_for) + 1
        raise Conflict(
            f"pending key {candidate.kid} has been published for {int(published_for)} s; "
            f"verifiers may not have it yet, rotate in {wait} s"
        )
    old = _keys_in(session, KeyState.ACTIVE)
    session.execute(
        update(SigningKey)
        .where(SigningKey.state == KeyState.ACTIVE)
        .values(state=KeyState.RETIRING, retiring_at=now)
    )
    session.execute(
        update(SigningKey)
        .where(SigningKey.kid == candidate.kid, SigningKey.state == KeyState.PENDING)
        .values(state=KeyState.ACTIVE, activated_at=now)
    )
    new_pending = _new_key(session, settings, cipher, KeyState.PENDING)
    session.expire_all()
    key_rotated(session, active=candidate.kid, pending=new_pending)  # logged once committed
    return {
        "active": candidate.kid,
        "retiring": old[0].kid if old else "",
        "pending": new_pending,
    }


def retire_expired(session: Session, settings: Settings, *, now: datetime | None = None) -> int:
    """Retire keys whose last token has expired (max TTL + leeway after they stopped signing)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.token_ttl_max_seconds + settings.token_leeway_seconds)
    result = session.execute(
        update(SigningKey)
        .where(SigningKey.state == KeyState.RETIRING, SigningKey.retiring_at <= cutoff)
        .values(state=KeyState.RETIRED, retired_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def maintenance_due(session: Session, settings: Settings, now: datetime) -> bool:
    """Cheap read: is there anything for `maintain` to do? (Most refreshes answer no.)"""
    keys = list(session.scalars(select(SigningKey).where(SigningKey.state.in_(PUBLISHED_STATES))))
    by_state: dict[str, list[SigningKey]] = {}
    for key in keys:
        by_state.setdefault(key.state, []).append(key)
    if not by_state.get(KeyState.ACTIVE) or not by_state.get(KeyState.PENDING):
        return True
    retire_after = timedelta(seconds=settings.token_ttl_max_seconds + settings.token_leeway_seconds)
    for key in by_state.get(KeyState.RETIRING, []):
        if key.retiring_at is not None and key.retiring_at + retire_after <= now:
            return True
    return _rotation_due(by_state[KeyState.ACTIVE][0], by_state[KeyState.PENDING][0], settings, now)


def _rotation_due(
    active: SigningKey, pending: SigningKey, settings: Settings, now: datetime
) -> bool:
    interval = settings.key_rotation_interval_seconds
    if interval == 0 or active.activated_at is None:
        return False
    lead_done = (now - pending.created_at).total_seconds() >= settings.key_publish_lead_seconds
    return lead_done and (now - active.activated_at).total_seconds() >= interval


def maintain(session: Session, settings: Settings, cipher: KeyCipher) -> None:
    """Whichever replica gets here first: create missing keys, rotate when due, retire old."""
    ensure_keys(session, settings, cipher)
    now = utcnow()  # after the lock: a replica that waited sees the rotation it waited for
    retire_expired(session, settings, now=now)
    active = _keys_in(session, KeyState.ACTIVE)[0]
    pending = _keys_in(session, KeyState.PENDING)[0]
    if _rotation_due(active, pending, settings, now):
        rotate(session, settings, cipher, now=now)


class KeyRing:
    """This replica's view of the signing keys: the snapshot it signs with and publishes."""

    def __init__(self, settings: Settings, cipher: KeyCipher) -> None:
        self.settings = settings
        self.cipher = cipher
        self._snapshot: KeySnapshot | None = None
        self._decrypted: dict[str, SigningPrivateKey] = {}
        self._lock = threading.Lock()

    @property
    def snapshot(self) -> KeySnapshot:
        if self._snapshot is None:
            raise RuntimeError("the key ring has not been loaded")
        return self._snapshot

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    def is_stale(self) -> bool:
        """Whether the snapshot is older than `stale_after` allows: this replica may have missed
        a rotation the others made, so it must neither sign nor claim to be ready."""
        snapshot = self._snapshot
        if snapshot is None:
            return False
        age = (utcnow() - snapshot.loaded_at).total_seconds()
        return age > stale_after(self.settings)

    def load(self, session: Session) -> KeySnapshot:
        keys = list(
            session.scalars(
                select(SigningKey)
                .where(SigningKey.state.in_(PUBLISHED_STATES))
                .order_by(SigningKey.created_at, SigningKey.kid)
            )
        )
        active = [key for key in keys if key.state == KeyState.ACTIVE]
        if len(active) != 1:
            raise RuntimeError(f"expected exactly one active signing key, found {len(active)}")
        row = active[0]
        private_key = self._decrypted.get(row.kid)
        if private_key is None:
            private_key = self.cipher.decrypt(row.kid, row.private_key_encrypted)
        jwks = {"keys": [dict(key.public_jwk) for key in keys]}
        body = json.dumps(jwks, separators=(",", ":"), sort_keys=True).encode()
        snapshot = KeySnapshot(
            active=ActiveKey(kid=row.kid, alg=row.alg, private_key=private_key),
            jwks=jwks,
            jwks_body=body,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            algs=tuple(sorted({key.alg for key in keys})),
            loaded_at=utcnow(),
            verification_keys={
                kid: key
                for kid, key in ((k.kid, key_from_jwk(k.public_jwk)) for k in keys)
                if key is not None
            },
            key_states=tuple(
                (k.kid, k.state, k.created_at, k.activated_at, k.retiring_at) for k in keys
            ),
        )
        with self._lock:
            self._decrypted = {row.kid: private_key}
            self._snapshot = snapshot
        return snapshot

    def refresh(self, factory: sessionmaker[Session]) -> KeySnapshot:
        """Run key maintenance if due, then reload the snapshot. Called every few seconds."""
        with unit_of_work(factory) as session:
            if maintenance_due(session, self.settings, utcnow()):
                maintain(session, self.settings, self.cipher)
        with unit_of_work(factory) as session:
            return self.load(session)


def stale_after(settings: Settings) -> float:
    """How old a replica's key snapshot may get before it stops signing and is not ready.

    A replica signs and publishes from its snapshot. One that misses a rotation keeps signing
    with the retiring key, which leaves the JWKS `token_ttl_max + leeway` after the rotation:
    a token signed with it more than `leeway` after the rotation may outlive its key. One whose
    snapshot is older than the publish lead may serve a JWKS without the key the others are
    about to sign with. So the bound is the smaller of the two, and never less than three
    refresh intervals, so that one slow refresh is not an outage.
    """
    return max(
        float(min(settings.key_publish_lead_seconds, settings.token_leeway_seconds)),
        3 * settings.key_refresh_seconds,
    )
