"""Minting sync tokens: decide with the policy engine, sign with this replica's active key.

`mint` returns what happened, a `Minted` token or a `Refused` request, both audited in the
caller's unit of work: a refusal is an answer to commit, not an error to roll back.
"""

from __future__ import annotations

import math
import random
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.orm import Session

from control.audit.service import Auditor
from control.errors import Forbidden, InvalidRequest, ProblemError
from control.grants import (
    TOKEN_USE,
    Op,
    scope_for,
)
from control.identity.caller import Caller
from control.keys.service import KeySnapshot
from control.observability.hooks import traced
from control.policy.engine import (
    KIND_WIDE_NOT_PERMITTED,
    Decision,
    PolicyCache,
    Subject,
    check_stream_cap,
    decide_current,
)
from control.revocations.service import subject_not_before
from control.settings import Settings
from control.tokens.schemas import Denial, TokenRequest, TokenResponse
from control.tokens.signing import sign_jwt
from control.tokens.spacetime_identity import spacetimedb_identity
from control.views import OrgView

# Refresh at about 80 % of the TTL, spread by ±5 % so a fleet does not refresh in lockstep.
REFRESH_FRACTION = 0.80
REFRESH_JITTER = 0.05
# The shape of a principal id (`control.kit.ids.new_id("prn")`).
PRINCIPAL_ID = re.compile(r"prn_[0-9A-Z]{26}")


@dataclass(frozen=True)
class Minted:
    # The response's fields, in the order of `TokenResponse`.
    fields: dict[str, Any]
    claims: dict[str, Any]

    @property
    def response(self) -> TokenResponse:
        return TokenResponse.model_validate(self.fields)

    def body_bytes(self) -> bytes:
        """The response body, serialized once, as `TokenResponse` would serialize it."""
        return orjson.dumps(self.fields, option=orjson.OPT_UTC_Z)


@dataclass(frozen=True)
class Refused:
    """Streams were not granted and the request did not accept a partial token."""

    denied: list[Denial]
    # For a refused kind-wide selector, the rules in its way: what the caller has to ask an
    # admin about, since no single stream of the kind explains the refusal.
    rules_in_the_way: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def problem(self) -> ProblemError:
        def named(denial: Denial) -> str:
            rules = self.rules_in_the_way.get(denial.stream)
            return f"{denial.stream} ({denial.reason}{': ' + ', '.join(rules) if rules else ''})"

        names = ", ".join(named(d) for d in self.denied[:5])
        return ProblemError(
            "stream_not_granted",
            f"not granted: {names}" + (" …" if len(self.denied) > 5 else ""),
            denied=[d.model_dump() for d in self.denied],
        )


def _timestamp(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def check_request(caller: Caller, body: TokenRequest, settings: Settings) -> int:
    """What is checked before any decision: the stream cap, the TTL's bounds and the device id.
    Returns the requested (or default) TTL."""
    check_stream_cap(body.streams, settings.max_streams_per_token)
    ttl = body.ttl_seconds if body.ttl_seconds is not None else settings.token_ttl_default_seconds
    if not settings.token_ttl_min_seconds <= ttl <= settings.token_ttl_max_seconds:
        raise InvalidRequest(
            f"`ttl_seconds` must be between {settings.token_ttl_min_seconds} and "
            f"{settings.token_ttl_max_seconds}",
            errors=[{"loc": ["body", "ttl_seconds"], "message": "out of range"}],
        )
    if body.device_id is not None and body.device_id != caller.principal_id:
        # `sid` is the caller's own label for its session. A device is its own session; any
        # other principal may label its sessions freely, but not with another principal's id,
        # which a reader of `sid` could take for that principal's device.
        if caller.kind == "device":
            raise Forbidden("a device credential may only name its own device id")
        if PRINCIPAL_ID.fullmatch(body.device_id):
            raise Forbidden("`device_id` may not name another principal")
    return ttl


@dataclass(frozen=True)
class Outcome:
    """What a mint decided, and the audit event that must be durable before it is answered."""

    result: Minted | Refused
    action: str
    detail: dict[str, Any]


def mint(
    session: Session,
    caller: Caller,
    body: TokenRequest,
    *,
    settings: Settings,
    keys: KeySnapshot,
    policies: PolicyCache,
    actor: str,
) -> Minted | Refused:
    """Decide and sign; or, when a stream is not granted and the request is strict, refuse."""
    ttl = check_request(caller, body, settings)
    view = OrgView(session, caller.org_id)
    subject = Subject(caller.principal_id, caller.kind, caller.roles)
    policy_rev, decisions = decide_current(
        view, policies, subject, body.streams, body.query_sets, body.ops
    )
    outcome = conclude(
        settings,
        keys,
        caller,
        body,
        ttl,
        policy_rev,
        decisions,
        lambda: subject_not_before(view, caller.principal_id),
    )
    Auditor(session, actor, caller.org_id).record(
        outcome.action, caller.principal_id, outcome.detail
    )
    return outcome.result


def conclude(
    settings: Settings,
    keys: KeySnapshot,
    caller: Caller,
    body: TokenRequest,
    ttl: int,
    policy_rev: int,
    decisions: list[Decision],
    floor: Callable[[], int | None],
) -> Outcome:
    """Refuse or sign, given the decisions; `floor` gives the subject's revocation floor
    (epoch seconds), asked only when a token is signed."""
    granted = [d for d in decisions if d.allowed]
    denied = [
        Denial(stream=d.stream, reason=d.reason or "not_permitted")
        for d in decisions
        if not d.allowed
    ]
    if denied and (not body.allow_partial or not granted):
        in_the_way = {
            d.stream: d.rule_ids
            for d in decisions
            if d.reason == KIND_WIDE_NOT_PERMITTED and d.rule_ids
        }
        detail = {
            "denied": [
                d.model_dump()
                | ({"rule_ids": list(in_the_way[d.stream])} if d.stream in in_the_way else {})
                for d in denied
            ],
            "requested": len(decisions),
            "policy_rev": policy_rev,
        }
        return Outcome(Refused(denied, in_the_way), "token.denied", detail)
    return _sign(settings, keys, caller, body, granted, denied, ttl, policy_rev, floor())


@traced("token.sign")
def _sign(
    settings: Settings,
    keys: KeySnapshot,
    caller: Caller,
    body: TokenRequest,
    granted: list[Decision],
    denied: list[Denial],
    ttl: int,
    policy_rev: int,
    floor: int | None,
) -> Outcome:
    ttl = min([ttl, *(d.max_ttl_seconds for d in granted if d.max_ttl_seconds is not None)])
    iat = math.floor(datetime.now(UTC).timestamp())
    # A subject revoked earlier in this second: stamp the revocation's second, or the new token
    # would read as issued before the revocation (see control.revocations.service).
    if floor is not None and iat < floor <= iat + 1:
        iat = floor
    exp = iat + ttl
    grants = [decision.grant() for decision in granted]
    ops: set[Op] = {op for grant in grants for op in grant.ops}
    jti = secrets.token_urlsafe(16)
    grant_claims = [grant.to_claim() for grant in grants]
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": caller.principal_id,
        "aud": settings.audience,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": jti,
        "token_use": TOKEN_USE,
        "org_id": caller.org_id,
        "scope": scope_for(ops),
        "grants": grant_claims,
        "policy_rev": policy_rev,
    }
    if body.device_id is not None:
        claims["sid"] = body.device_id
    active = keys.active
    token = sign_jwt(claims, active.private_key, active.alg, active.kid)
    refresh_fraction = REFRESH_FRACTION + random.uniform(-REFRESH_JITTER, REFRESH_JITTER)
    denied_out = [{"stream": d.stream, "reason": d.reason} for d in denied]
    detail = {
        "jti": jti,
        "kid": active.kid,
        "exp": exp,
        "grants": [f"{g.stream} {','.join(g.query_sets)} {','.join(g.ops)}" for g in grants],
        "denied": denied_out,
        "policy_rev": policy_rev,
    }
    # The response as plain data: serialized once (`body_bytes`), or validated into the model
    # by the paths that still answer with it. Field order is the model's.
    fields: dict[str, Any] = {
        "token": token,
        "token_type": "Bearer",
        "expires_in": exp - iat,
        "expires_at": _timestamp(exp),
        "refresh_after": _timestamp(iat + int(ttl * refresh_fraction)),
        "issuer": settings.issuer,
        "audience": settings.audience,
        "subject": caller.principal_id,
        "identity": spacetimedb_identity(settings.issuer, caller.principal_id),
        "org_id": caller.org_id,
        "kid": active.kid,
        "jti": jti,
        "grants": grant_claims,
        "denied": denied_out,
        "policy_rev": policy_rev,
    }
    return Outcome(Minted(fields=fields, claims=claims), "token.mint", detail)
