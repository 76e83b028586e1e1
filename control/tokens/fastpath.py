"""The token route's path for an API key: authenticate, decide and sign in one call, from one
read, writing nothing.

`MINT_READ` returns the credential, its principal, the org's `policy_rev`, the subject's
revocation floor and the requested streams in one statement; the org's rules are compiled once
per `policy_rev` (`PolicyCache`); the token is signed with this replica's snapshot. The audit
event, and the key's `last_used_at` when it is due, come back as data for the caller to commit
(`control.audit.writer`) before it answers. The checks and their order are those of
`authenticate`, the route's guard, `limited_mint` and `mint`; the answers are the same.

The read is a transaction of its own, begun after the request arrived: a change committed
before it (a revoked key, a disabled principal, a narrowed rule, a deleted stream) is seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from control.audit.writer import SideWrite
from control.identity.caller import Caller
from control.identity.repository import TOUCH_CREDENTIAL
from control.identity.service import caller_of_row, presented_key_hash
from control.keys.service import KeySnapshot
from control.kit.db import utcnow
from control.policy.engine import (
    CompiledPolicy,
    PolicyCache,
    RegisteredStream,
    Subject,
    decide_read,
    named_streams,
)
from control.settings import Settings
from control.tokens.repository import MINT_READ
from control.tokens.schemas import TokenRequest
from control.tokens.service import Outcome, check_request, conclude
from control.views import OrgView


@dataclass(frozen=True)
class FastMint:
    caller: Caller
    outcome: Outcome
    # The audit row's columns (`control.audit.writer.AuditWriter.write`).
    event: dict[str, Any]
    # The key's `last_used_at`, when it is due for an update.
    touch: SideWrite | None


def epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite's aggregate bypasses the column type
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def caller_of(row: Any, now: datetime, roles: frozenset[str]) -> tuple[Caller, SideWrite | None]:
    """The caller of a read's credential row (`caller_of_row`), holding one of `roles` (403
    without, as the route's guard answers), and the key's `last_used_at` when it is due."""
    caller, due = caller_of_row(row, now)
    touch = SideWrite(TOUCH_CREDENTIAL, {"credential_id": row.id, "now": now}) if due else None
    caller.require_any(roles)
    return caller, touch


def mint_params(pepper: bytes, presented: str, body: TokenRequest) -> dict[str, Any]:
    """`MINT_READ`'s parameters; 401 for a credential that cannot be an API key."""
    return {"key_hash": presented_key_hash(pepper, presented), "ids": named_streams(body.streams)}


def grouped_mint_params(params: dict[str, Any]) -> dict[str, Any]:
    """`mint_params` as `MINT_READ_GROUPED` takes them: the stream ids as one JSON array."""
    return {"key_hash": params["key_hash"], "ids_json": orjson.dumps(params["ids"]).decode()}


def cached_policy(rows: Sequence[Any], policies: PolicyCache) -> CompiledPolicy | None:
    """The compiled policy `MINT_READ`'s rows need, when this process holds it; None when it
    must be compiled (or the key is unknown)."""
    if not rows:
        return None
    return policies.current(rows[0].org_id, int(rows[0].policy_rev or 0))


def mint_by_key(
    connection: Connection,
    *,
    pepper: bytes,
    presented: str,
    body: TokenRequest,
    roles: frozenset[str],
    admit: Callable[[Caller], None],
    settings: Settings,
    keys: KeySnapshot,
    policies: PolicyCache,
) -> FastMint:
    """The caller of `presented` (401 as `caller_for_key` says), holding one of `roles` (403),
    admitted by `admit` (which raises to refuse, e.g. the rate limit), and what `mint` would
    decide for it."""
    rows = connection.execute(MINT_READ, mint_params(pepper, presented, body)).all()

    def policy_for(org_id: str, policy_rev: int) -> CompiledPolicy:
        policy = policies.current(org_id, policy_rev)
        if policy is None:  # the policy moved: compile it, in this read's transaction
            with Session(bind=connection) as session:
                policy = policies.get(OrgView(session, org_id), policy_rev)
        return policy

    return decide_mint(
        rows,
        body=body,
        roles=roles,
        admit=admit,
        settings=settings,
        keys=keys,
        policy_for=policy_for,
    )


def decide_mint(
    rows: Sequence[Any],
    *,
    body: TokenRequest,
    roles: frozenset[str],
    admit: Callable[[Caller], None],
    settings: Settings,
    keys: KeySnapshot,
    policy_for: Callable[[str, int], CompiledPolicy],
) -> FastMint:
    """`mint_by_key`'s decision on `MINT_READ`'s rows, however they were read."""
    now = utcnow()
    caller, touch = caller_of(rows[0] if rows else None, now, roles)
    admit(caller)
    ttl = check_request(caller, body, settings)

    policy_rev = int(rows[0].policy_rev or 0)
    policy = policy_for(caller.org_id, policy_rev)
    streams = {
        found.stream_id: RegisteredStream(found.stream_id, found.stream_kind, found.stream_owner_id)
        for found in rows
        if found.stream_id is not None
    }
    subject = Subject(caller.principal_id, caller.kind, caller.roles)
    decisions = decide_read(policy, subject, body.streams, streams, body.query_sets, body.ops)
    floor = epoch(rows[0].subject_floor)
    outcome = conclude(settings, keys, caller, body, ttl, policy_rev, decisions, lambda: floor)
    event = {
        "at": now,
        "actor": caller.principal_id,
        "action": outcome.action,
        "target": caller.principal_id,
        "org_id": caller.org_id,
        "detail": outcome.detail,
    }
    return FastMint(caller, outcome, event, touch)
