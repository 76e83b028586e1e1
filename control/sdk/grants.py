"""The grant grammar: the one definition of stream ids, stream selectors, query-set references,
ops, scopes, the `grants` claim and how a grant is matched.

A grant names either one stream (`run:01J9ZK`) or, with the selector `<kind>:*`, every stream of
that kind in the token's org, present and future (a *kind-wide* grant). No other wildcard shape
exists: `run:01*`, `*:*`, `*:x` and `run:*x` are refused like any other malformed stream.

Minting, explain, introspection, `control.runtime` and the SpacetimeDB module's test vectors
(`tests/vectors/`) all use this module, so what the control plane issues is exactly what the
runtime and the module accept.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STREAM_KIND_PATTERN = r"[a-z][a-z0-9_]{0,31}"
STREAM_KEY_PATTERN = r"[A-Za-z0-9._~-]{1,128}"
QUERY_SET_NAME_PATTERN = r"[a-z][a-z0-9_]{0,63}"
STREAM_ID_PATTERN = rf"{STREAM_KIND_PATTERN}:{STREAM_KEY_PATTERN}"
# The key of a kind-wide selector; `*` is no character of a stream key, so a selector is never
# a stream id and a stream id never a selector.
KIND_WIDE_KEY = "*"
# What a grant (and a token request) may name: a stream id, or `<kind>:*`.
STREAM_SELECTOR_PATTERN = rf"{STREAM_KIND_PATTERN}:(?:\*|{STREAM_KEY_PATTERN})"
QUERY_SET_REF_PATTERN = rf"{QUERY_SET_NAME_PATTERN}(@[1-9][0-9]{{0,8}})?"

_STREAM_KIND = re.compile(rf"^{STREAM_KIND_PATTERN}\Z")
_STREAM_ID = re.compile(rf"^({STREAM_KIND_PATTERN}):({STREAM_KEY_PATTERN})\Z")
_STREAM_SELECTOR = re.compile(rf"^({STREAM_KIND_PATTERN}):(\*|{STREAM_KEY_PATTERN})\Z")
_QUERY_SET_NAME = re.compile(rf"^{QUERY_SET_NAME_PATTERN}\Z")
_QUERY_SET_REF = re.compile(rf"^({QUERY_SET_NAME_PATTERN})@([1-9][0-9]{{0,8}})\Z")

# Bounds on a claim we parse, so a hostile token cannot make us do unbounded work.
MAX_GRANTS_PER_CLAIM = 256
MAX_QUERY_SETS_PER_GRANT = 32

TOKEN_USE = "sync"  # noqa: S105 - the claim value, not a secret


class Op(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    APPEND = "append"
    CHECKPOINT = "checkpoint"


OP_SCOPES: Mapping[Op, str] = {
    Op.SUBSCRIBE: "sync.subscribe",
    Op.APPEND: "sync.append",
    Op.CHECKPOINT: "sync.checkpoint.write",
}
OP_ORDER = tuple(Op)
_OP_BY_VALUE: Mapping[str, Op] = {op.value: op for op in Op}


class GrammarError(ValueError):
    """A value does not follow the grant grammar; `code` says which rule it broke."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GrantDecision(ValueError):
    """A grant does not cover a request; `code` is one of the `*_not_granted` codes, or
    `stream_org_required` when only a kind-wide grant could cover the stream and the stream's
    org was not given."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, order=True)
class StreamId:
    """A stream id, or (from `parse_stream_selector`) a kind-wide selector, whose key is `*`."""

    kind: str
    key: str

    @property
    def kind_wide(self) -> bool:
        return self.key == KIND_WIDE_KEY

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}"


def _not_a_stream_id(value: object) -> str:
    return (
        f"{value!r} is not a stream id (`<kind>:<key>`, kind {STREAM_KIND_PATTERN}, "
        f"key {STREAM_KEY_PATTERN})"
    )


def parse_stream_id(value: object) -> StreamId:
    if not isinstance(value, str) or (match := _STREAM_ID.match(value)) is None:
        raise GrammarError("invalid_stream_id", _not_a_stream_id(value))
    return StreamId(match.group(1), match.group(2))


def _not_a_stream_selector(value: object) -> str:
    return (
        f"{value!r} is not a stream id or kind-wide selector (`<kind>:<key>` or `<kind>:*`, "
        f"kind {STREAM_KIND_PATTERN}, key {STREAM_KEY_PATTERN})"
    )


def parse_stream_selector(value: object) -> StreamId:
    """A stream id, or a kind-wide selector `<kind>:*` (its `kind_wide` is true)."""
    if not isinstance(value, str) or (match := _STREAM_SELECTOR.match(value)) is None:
        raise GrammarError("invalid_stream_selector", _not_a_stream_selector(value))
    return StreamId(match.group(1), match.group(2))


def is_kind_wide(stream: str) -> bool:
    """Whether `stream`, a value that follows the selector grammar, is a kind-wide selector."""
    return stream.endswith(":*")


def stream_kind(stream: object) -> str | None:
    """The kind of a stream id; None for anything else, a kind-wide selector included."""
    if not isinstance(stream, str) or (match := _STREAM_ID.match(stream)) is None:
        return None
    return match.group(1)


def selector_covers(selector: str, stream: str) -> bool:
    """Whether a grant naming `selector` names `stream`, orgs aside: the same stream, or a
    kind-wide selector and a stream id of its kind. The org is the caller's to check."""
    if is_kind_wide(selector):
        return stream_kind(stream) == selector[:-2]
    return selector == stream


def is_stream_kind(value: object) -> bool:
    return isinstance(value, str) and _STREAM_KIND.match(value) is not None


def is_query_set_name(value: object) -> bool:
    return isinstance(value, str) and _QUERY_SET_NAME.match(value) is not None


@dataclass(frozen=True, order=True)
class QuerySetRef:
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def _not_a_query_set_ref(value: object) -> str:
    return f"{value!r} is not a query-set ref `name@version`"


def parse_query_set_ref(value: object) -> QuerySetRef:
    if not isinstance(value, str) or (match := _QUERY_SET_REF.match(value)) is None:
        raise GrammarError("invalid_query_set", _not_a_query_set_ref(value))
    return QuerySetRef(match.group(1), int(match.group(2)))


def _not_an_op(value: object) -> str:
    return f"{value!r} is not an op ({', '.join(OP_ORDER)})"


def parse_op(value: object) -> Op:
    if isinstance(value, str) and value in _OP_BY_VALUE:
        return _OP_BY_VALUE[value]
    raise GrammarError("invalid_op", _not_an_op(value))


def scope_for(ops: Iterable[Op]) -> str:
    """The space-separated `scope` claim for a set of ops, in a stable order."""
    present = set(ops)
    return " ".join(OP_SCOPES[op] for op in OP_ORDER if op in present)


@dataclass(frozen=True)
class Grant:
    """One entry of the `grants` claim: a stream (or a kind-wide selector), the query sets and
    the ops allowed on it."""

    stream: str
    query_sets: tuple[str, ...]
    ops: tuple[Op, ...]

    @property
    def kind_wide(self) -> bool:
        return is_kind_wide(self.stream)

    def to_claim(self) -> dict[str, Any]:
        return {"stream": self.stream, "query_sets": list(self.query_sets), "ops": list(self.ops)}

    def allows(self, query_set: str | None = None, op: Op | str = Op.SUBSCRIBE) -> None:
        """Raise `GrantDecision` unless this grant covers `query_set` (a name, or an exact
        `name@version`) and `op`."""
        if query_set is not None:
            wanted_exact = "@" in query_set
            for ref in self.query_sets:
                if ref == query_set or (not wanted_exact and ref.split("@", 1)[0] == query_set):
                    break
            else:
                raise GrantDecision(
                    "query_set_not_granted", f"{query_set} is not granted on {self.stream}"
                )
        if op not in self.ops:
            raise GrantDecision("op_not_granted", f"{op} is not granted on {self.stream}")


def make_grant(stream: str, query_sets: Iterable[str], ops: Iterable[Op]) -> Grant:
    present = set(ops)
    return Grant(
        stream=stream,
        query_sets=tuple(sorted(set(query_sets))),
        ops=tuple(op for op in OP_ORDER if op in present),
    )


_GRANT_MEMBERS = frozenset(("stream", "query_sets", "ops"))


class _Malformed(GrammarError):
    def __init__(self, why: str) -> None:
        super().__init__("malformed_grants", f"grants claim is malformed: {why}")


def parse_grants(value: object) -> tuple[Grant, ...]:
    """Parse a `grants` claim strictly: any deviation from the shape rejects the whole claim."""
    if type(value) is not list:
        raise _Malformed("not a list")
    if len(value) > MAX_GRANTS_PER_CLAIM:
        raise _Malformed(f"more than {MAX_GRANTS_PER_CLAIM} grants")
    grants: list[Grant] = []
    seen: set[str] = set()
    for entry in value:
        if type(entry) is not dict or len(entry) != 3 or not entry.keys() >= _GRANT_MEMBERS:
            raise _Malformed("each grant is exactly {stream, query_sets, ops}")
        grant = _parse_entry(entry["stream"], entry["query_sets"], entry["ops"])
        if grant.stream in seen:
            raise _Malformed(f"{grant.stream} appears twice")
        seen.add(grant.stream)
        grants.append(grant)
    return tuple(grants)


def _parse_entry(stream: object, query_sets: object, ops: object) -> Grant:
    """One entry of a `grants` claim; a value that matches its pattern is already canonical."""
    if type(stream) is not str or _STREAM_SELECTOR.match(stream) is None:
        raise _Malformed(_not_a_stream_selector(stream))
    if type(query_sets) is not list or len(query_sets) > MAX_QUERY_SETS_PER_GRANT:
        raise _Malformed(f"query_sets of {stream} is not a list of at most 32 refs")
    if type(ops) is not list or not ops:
        raise _Malformed(f"ops of {stream} is not a non-empty list")
    for ref in query_sets:
        if type(ref) is not str or _QUERY_SET_REF.match(ref) is None:
            raise _Malformed(_not_a_query_set_ref(ref))
    parsed_ops: list[Op] = []
    for op in ops:
        parsed = _OP_BY_VALUE.get(op) if type(op) is str else None
        if parsed is None:
            raise _Malformed(_not_an_op(op))
        parsed_ops.append(parsed)
    if len(set(query_sets)) != len(query_sets) or len(set(parsed_ops)) != len(parsed_ops):
        raise _Malformed(f"duplicate query set or op on {stream}")
    return Grant(stream, tuple(query_sets), tuple(parsed_ops))


def authorize(
    grants: Sequence[Grant],
    stream: str,
    query_set: str | None = None,
    op: Op | str = Op.SUBSCRIBE,
    *,
    token_org: str | None = None,
    stream_org: str | None = None,
) -> Grant:
    """The grant covering `stream`, `query_set` and `op`, or `GrantDecision` saying what not.

    A grant naming `stream` itself covers it. A kind-wide grant (`run:*`) covers a stream of its
    kind only in the token's org (`token_org`), and the grants cannot tell which org holds a
    stream: the caller says, as `stream_org`. Without it, a stream only a kind-wide grant could
    cover is `stream_org_required`. A `stream_org` other than `token_org` is
    `stream_not_granted` whatever the grants name: no grant reaches into another org.
    """
    refused: GrantDecision | None = None
    for grant in grants:
        if grant.stream == stream:
            # A selector names streams but is none: asking about `run:*` itself finds nothing.
            if (stream_org is not None and stream_org != token_org) or grant.kind_wide:
                break
            try:
                grant.allows(query_set, op)
            except GrantDecision as exc:
                refused = exc
                break
            return grant
    kind = stream_kind(stream)
    wide = (
        next((g for g in grants if g.kind_wide and g.stream[:-2] == kind), None) if kind else None
    )
    if wide is None:
        raise refused or GrantDecision("stream_not_granted", f"{stream} is not granted")
    if stream_org is None:
        raise GrantDecision(
            "stream_org_required",
            f"{stream} is covered only by the kind-wide grant {wide.stream}, which holds in the "
            "token's org alone: name the org that holds the stream (stream_org)",
        )
    if token_org is None or stream_org != token_org:
        raise GrantDecision("stream_not_granted", f"{stream} is not granted")
    wide.allows(query_set, op)
    return wide


class ClaimsRejected(ValueError):
    """A token's claims are not those of a valid sync token for this issuer and audience."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


REQUIRED_CLAIMS = ("iss", "sub", "aud", "iat", "exp", "jti", "token_use", "grants")
_REQUIRED_CLAIM_SET = frozenset(REQUIRED_CLAIMS)


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    # `type(...) is int`: bool is an int in Python, and a JSON `true` is not a timestamp.
    if type(value) is not int:
        raise ClaimsRejected("malformed", f"`{name}` must be an integer")
    return value


def check_sync_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: int,
    leeway: int = 0,
) -> None:
    """Every check of `validate_sync_claims` but the grants' grammar, in the same order."""
    if not claims.keys() >= _REQUIRED_CLAIM_SET:
        missing = next(name for name in REQUIRED_CLAIMS if name not in claims)
        raise ClaimsRejected("malformed", f"`{missing}` claim is missing")
    sub, jti = claims["sub"], claims["jti"]
    if type(sub) is not str or not sub:
        raise ClaimsRejected("malformed", "`sub` must be a string of 1 to 128 bytes")
    # At most 128 UTF-8 bytes; a string of up to 32 characters cannot exceed that.
    if len(sub) > 32:
        try:
            sub_bytes = len(sub.encode())
        except UnicodeEncodeError:  # a lone surrogate is not UTF-8
            raise ClaimsRejected("malformed", "`sub` must be valid UTF-8") from None
        if sub_bytes > 128:
            raise ClaimsRejected("malformed", "`sub` must be a string of 1 to 128 bytes")
    elif not sub.isascii():
        try:
            sub.encode()
        except UnicodeEncodeError:
            raise ClaimsRejected("malformed", "`sub` must be valid UTF-8") from None
    if type(jti) is not str or not jti:
        raise ClaimsRejected("malformed", "`jti` must be a non-empty string")
    # NUL is no character of any identifier we issue, and databases refuse it in text.
    if "\x00" in sub or "\x00" in jti:
        raise ClaimsRejected("malformed", "`sub` and `jti` must not contain NUL")
    exp, iat = _int_claim(claims, "exp"), _int_claim(claims, "iat")
    nbf = _int_claim(claims, "nbf") if "nbf" in claims else iat
    if claims["iss"] != issuer:
        raise ClaimsRejected("wrong_issuer", "the token was issued by another issuer")
    aud = claims["aud"]
    if aud != audience and (type(aud) is not list or audience not in aud):
        raise ClaimsRejected("wrong_audience", "the token is for another audience")
    if claims["token_use"] != TOKEN_USE:
        raise ClaimsRejected("wrong_token_use", "the token is not a sync token")
    if exp <= now - leeway:
        raise ClaimsRejected("expired", "the token has expired")
    if max(nbf, iat) > now + leeway:
        raise ClaimsRejected("not_yet_valid", "the token is not valid yet")


def validate_sync_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: int,
    leeway: int = 0,
) -> tuple[Grant, ...]:
    """Check a decoded sync token's claims and return its grants.

    The same checks, with the same codes, run in `control.runtime` and in the SpacetimeDB
    module's `client_connected` (`tests/vectors/claims.json` holds the shared cases).
    """
    check_sync_claims(claims, issuer=issuer, audience=audience, now=now, leeway=leeway)
    return grants_of(claims)


MAX_ORG_ID_BYTES = 128


def org_id_of(claims: Mapping[str, Any]) -> str:
    """The token's org, as the SpacetimeDB module requires it before writing grant rows (its
    rows carry the org): a string of 1 to 128 UTF-8 bytes without NUL, else `malformed`."""
    org = claims.get("org_id")
    try:
        size = len(org.encode()) if type(org) is str else 0
    except UnicodeEncodeError:  # a lone surrogate is not UTF-8
        size = 0
    if not 1 <= size <= MAX_ORG_ID_BYTES or "\x00" in str(org):
        raise ClaimsRejected(
            "malformed", f"`org_id` must be a string of 1 to {MAX_ORG_ID_BYTES} bytes, no NUL"
        )
    return str(org)


def accept_sync_claims(
    claims: Mapping[str, Any], *, issuer: str, audience: str, now: int, leeway: int = 0
) -> tuple[tuple[Grant, ...], str]:
    """What the module's `client_connected` accepts: `validate_sync_claims`, then the org."""
    grants = validate_sync_claims(claims, issuer=issuer, audience=audience, now=now, leeway=leeway)
    return grants, org_id_of(claims)


def grants_of(claims: Mapping[str, Any]) -> tuple[Grant, ...]:
    """The parsed `grants` claim of checked claims; `ClaimsRejected("malformed")` if invalid."""
    try:
        return parse_grants(claims["grants"])
    except GrammarError as exc:
        raise ClaimsRejected("malformed", str(exc)) from None
