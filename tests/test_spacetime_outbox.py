"""The outbox's housekeeping and pacing, in-process on both backends: pruning never lets an id
be handed out again, backoff never overflows, and the push target's URL is one an operator can
be shown and the control plane's token can travel to."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select

from control.kit.db import unit_of_work, utcnow
from control.settings import SettingsError, load_settings
from control.spacetime.delivery import Deliverer, Tuning, backoff
from control.spacetime.models import Delivery, OutboxEntry
from control.state import AppState

ORG = "org_OUTBOXTEST"


def test_pruning_keeps_the_newest_entry(state: AppState) -> None:
    """Every entry is old and delivered, yet the newest stays: on SQLite its id would be
    handed out again, at or below what the databases have, and never delivered."""
    settings = state.settings.model_copy(
        update={"spacetimedb_url": "http://127.0.0.1:9", "spacetimedb_databases": "a,b"}
    )
    deliverer = Deliverer(settings, state.sessions, lambda: state.keyring.snapshot, "replica")
    try:
        old = utcnow() - timedelta(days=2)
        with unit_of_work(state.sessions) as session:
            entries = [
                OutboxEntry(
                    org_id=ORG,
                    revocation_cursor=index,
                    reducer="revoke_jti",
                    args=[ORG, f"jti-{index}"],
                    created_at=old,
                )
                for index in range(3)
            ]
            session.add_all(entries)
            session.flush()
            newest = max(entry.id for entry in entries)
            for database in ("a", "b"):
                session.add(Delivery(database=database, delivered_id=newest, attempts=0))
        assert deliverer.prune() == 2
        with unit_of_work(state.sessions) as session:
            left = session.scalars(select(OutboxEntry.id).where(OutboxEntry.org_id == ORG))
            assert list(left) == [newest]
    finally:
        deliverer.close()


def test_a_lease_outlives_the_slowest_call_it_covers(state: AppState) -> None:
    """A call may take CONTROL_SPACETIMEDB_TIMEOUT_SECONDS: the lease taken for it lasts
    longer, or another replica could deliver later entries while its answer is on the way."""
    settings = state.settings.model_copy(
        update={
            "spacetimedb_url": "http://127.0.0.1:9",
            "spacetimedb_databases": "slow",
            "spacetimedb_timeout_seconds": 60.0,
        }
    )
    tuning = Tuning(lease_seconds=1.0)
    deliverer = Deliverer(
        settings, state.sessions, lambda: state.keyring.snapshot, "replica", tuning=tuning
    )
    try:
        before = utcnow()
        assert deliverer._claim("slow") == 0  # the lease is held only while delivering
        with unit_of_work(state.sessions) as session:
            lease_until = session.scalars(
                select(Delivery.lease_until).where(Delivery.database == "slow")
            ).one()
        assert lease_until is not None
        assert lease_until.replace(tzinfo=None) >= (before + timedelta(seconds=120)).replace(
            tzinfo=None
        )
    finally:
        deliverer.close()


def test_backoff_is_capped_however_long_the_outage() -> None:
    tuning = Tuning()
    for attempts in (1, 10, 1024, 10_000):
        assert 0 < backoff(attempts, tuning) <= tuning.backoff_cap_seconds


def _secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@pytest.mark.parametrize(
    ("url", "env", "problem"),
    [
        ("https://user:pass@spacetime.example.com", "dev", "CONTROL_SPACETIMEDB_URL"),
        ("http://spacetime.example.com", "prod", "CONTROL_SPACETIMEDB_URL must be an https URL"),
    ],
)
def test_the_push_target_url_is_refused_when_unsafe(url: str, env: str, problem: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(
            _env_file=None,
            env=env,
            issuer="https://control.example.com",
            key_encryption_key=_secret(),
            credential_pepper=_secret(),
            spacetimedb_url=url,
            spacetimedb_databases="sync",
        )
    assert any(line.startswith(problem) for line in refused.value.problems), refused.value
    assert "pass" not in str(refused.value)


def test_an_https_push_target_is_accepted_in_prod() -> None:
    settings = load_settings(
        _env_file=None,
        env="prod",
        issuer="https://control.example.com",
        key_encryption_key=_secret(),
        credential_pepper=_secret(),
        spacetimedb_url="https://spacetime.example.com",
        spacetimedb_databases="sync",
    )
    assert settings.spacetimedb_targets() == ("sync",)
