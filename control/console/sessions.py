"""Console sessions: an admin API key exchanged for a server-side session.

The browser holds a random session id in an `HttpOnly`, `SameSite=Strict` cookie scoped to
`/console`; the database holds only its SHA-256 and the credential it was opened with. Every
request resolves the caller afresh from that credential, by the same rules as an API key: a
revoked, expired or deleted key, or a disabled principal, ends the session at once. Forms carry
a synchronizer token derived from the session id under the credential pepper, so a page of one
session cannot post for another and a cross-site form cannot post at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, delete, or_, select
from sqlalchemy.orm import Session

from control.console.models import ConsoleSession
from control.identity.authority import ADMIN_ROLE, OPERATOR_ROLE
from control.identity.caller import Caller, effective_roles
from control.identity.models import Credential, Org, Principal
from control.identity.repository import PRINCIPAL_COLUMNS
from control.kit.db import utcnow
from control.settings import Settings

SESSION_COOKIE = "control_console"
# Before sign-in there is no session to tie a form to: the sign-in form's token is tied to this
# short-lived random cookie instead (a cross-site page can neither read nor send it).
SIGN_IN_COOKIE = "control_console_sign_in"
COOKIE_PATH = "/console"
SESSION_ID_BYTES = 32
# Roles that may open a console session; each page's table entry says which it needs.
CONSOLE_ROLES = frozenset({ADMIN_ROLE, OPERATOR_ROLE})
# `last_seen_at` is written at most this often: a burst of page loads is one write.
TOUCH_RESOLUTION = timedelta(seconds=15)

_sessions = cast(Table, ConsoleSession.__table__).c
_credentials = cast(Table, Credential.__table__).c
_principals = cast(Table, Principal.__table__).c
_orgs = cast(Table, Org.__table__).c

# The session and everything its caller is made of, in one read.
SESSION_CALLER = (
    select(
        _sessions.id_hash,
        _sessions.last_seen_at,
        _sessions.expires_at,
        _credentials.id.label("credential_id"),
        _credentials.revoked_at,
        _credentials.expires_at.label("credential_expires_at"),
        *PRINCIPAL_COLUMNS,
    )
    .join_from(
        cast(Table, ConsoleSession.__table__),
        cast(Table, Credential.__table__),
        _credentials.id == _sessions.credential_id,
    )
    .join(cast(Table, Principal.__table__), _principals.id == _credentials.principal_id)
    .join(cast(Table, Org.__table__), _orgs.id == _principals.org_id)
)


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def form_token(pepper: bytes, purpose: str, secret: str) -> str:
    """The synchronizer token of the forms of one session (or one sign-in cookie)."""
    message = f"console-{purpose}\x00{secret}".encode()
    return hmac.new(pepper, message, hashlib.sha256).hexdigest()


def token_matches(pepper: bytes, purpose: str, secret: str | None, presented: str | None) -> bool:
    if not secret or not presented:
        return False
    return hmac.compare_digest(form_token(pepper, purpose, secret), presented)


@dataclass(frozen=True)
class Signed:
    """A live console session: who it acts as, and its id (for its forms' tokens)."""

    caller: Caller
    session_id: str


def open_session(session: Session, caller: Caller, settings: Settings) -> str:
    """Store a new session for `caller` (signed in with an API key); its id, for the cookie.
    Ended sessions of every org are swept out here: sign-ins are rare, the sweep indexed."""
    assert caller.credential_id is not None
    now = utcnow()
    idle = timedelta(seconds=settings.console_idle_timeout_seconds)
    session.execute(
        delete(ConsoleSession).where(
            or_(ConsoleSession.expires_at <= now, ConsoleSession.last_seen_at <= now - idle)
        )
    )
    session_id = new_session_id()
    session.add(
        ConsoleSession(
            id_hash=hash_session_id(session_id),
            credential_id=caller.credential_id,
            org_id=caller.org_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=settings.console_absolute_timeout_seconds),
        )
    )
    session.flush()
    return session_id


def session_caller(session: Session, session_id: str, settings: Settings) -> Caller | None:
    """The caller of a live session, or None (and the session deleted) when it has ended:
    idle or absolute timeout, or its credential no longer authenticates."""
    if not session_id or len(session_id) > 100:
        return None
    id_hash = hash_session_id(session_id)
    row = session.execute(SESSION_CALLER.where(_sessions.id_hash == id_hash)).one_or_none()
    if row is None:
        return None
    now = utcnow()
    idle = timedelta(seconds=settings.console_idle_timeout_seconds)
    ended = (
        row.expires_at <= now
        or row.last_seen_at + idle <= now
        or row.revoked_at is not None
        or row.disabled
        or (row.credential_expires_at is not None and row.credential_expires_at <= now)
    )
    roles = effective_roles(row.roles, operator_org=row.is_operator)
    if ended or not roles & CONSOLE_ROLES:
        session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == id_hash))
        return None
    if now - row.last_seen_at >= TOUCH_RESOLUTION:
        stored = session.get(ConsoleSession, id_hash)
        if stored is not None:
            stored.last_seen_at = now
    return Caller(
        principal_id=row.principal_id,
        org_id=row.org_id,
        kind=row.kind,
        roles=roles,
        credential_id=row.credential_id,
    )


def end_session(session: Session, session_id: str) -> bool:
    """Delete a session; whether there was one."""
    result = session.execute(
        delete(ConsoleSession).where(ConsoleSession.id_hash == hash_session_id(session_id))
    )
    return bool(getattr(result, "rowcount", 0))
