"""The policy engine: which grants a principal receives for the streams it asks for.

Minting and `POST /api/admin/explain` both call `decide`, so an explanation is exactly what a
mint would do. The org's rules and query sets are compiled once per `policy_rev` and cached per
process; a stream lookup is one primary-key read. Nothing scans tables that grow.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from control.errors import ProblemError
from control.grants import Grant, Op, is_kind_wide, make_grant, parse_query_set_ref
from control.observability.hooks import traced
from control.policy.models import GrantRule, QuerySet
from control.policy.repository import POLICY_REV, STREAMS_BY_ID
from control.views import OrgView

# Why a stream was not granted (`denied` entries of a token response, explain's `reason`).
STREAM_NOT_FOUND = "stream_not_found"
NOT_PERMITTED = "not_permitted"
QUERY_SET_NOT_ALLOWED = "query_set_not_allowed"
QUERY_SET_NOT_FOUND = "query_set_not_found"
OP_NOT_ALLOWED = "op_not_allowed"
DENIED_BY_RULE = "denied_by_rule"
KIND_WIDE_NOT_PERMITTED = "kind_wide_not_permitted"
DENIAL_REASONS = (
    STREAM_NOT_FOUND,
    NOT_PERMITTED,
    QUERY_SET_NOT_ALLOWED,
    OP_NOT_ALLOWED,
    DENIED_BY_RULE,
    KIND_WIDE_NOT_PERMITTED,
)


def check_stream_cap(streams: Sequence[str], cap: int) -> None:
    """What a request model cannot check: the configured cap on streams per token (minting and
    explain alike). The models' patterns already hold every stream id to the grant grammar. A
    kind-wide selector (`run:*`) is one entry, and counts as one stream."""
    if len(streams) > cap:
        raise ProblemError(
            "too_many_streams",
            f"a token carries at most {cap} streams; {len(streams)} were requested",
            limit=cap,
        )


class RegisteredStream(NamedTuple):
    """What a decision needs of a registered stream."""

    id: str
    kind: str
    owner_id: str | None


@dataclass(frozen=True)
class Subject:
    principal_id: str
    kind: str
    roles: frozenset[str]


@dataclass(frozen=True)
class CompiledRule:
    id: str
    allow: bool
    relation: str
    stream_ids: frozenset[str]
    query_sets: frozenset[str]
    ops: frozenset[Op]
    max_ttl_seconds: int | None


@dataclass
class CompiledPolicy:
    """One org's rules, indexed by stream kind and then by subject key."""

    policy_rev: int
    # stream kind -> subject key ("p:<id>", "r:<role>", "k:<kind>") -> rules
    rules: dict[str, dict[str, list[CompiledRule]]] = field(default_factory=dict)
    # query set name -> (current version, stream kinds it applies to)
    query_sets: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)

    def rules_for(self, subject: Subject, stream_kind: str) -> list[CompiledRule]:
        by_subject = self.rules.get(stream_kind)
        if not by_subject:
            return []
        keys = [f"p:{subject.principal_id}", f"k:{subject.kind}"]
        keys += [f"r:{role}" for role in subject.roles]
        seen: dict[str, CompiledRule] = {}
        for key in keys:
            for rule in by_subject.get(key, ()):
                seen[rule.id] = rule
        return sorted(seen.values(), key=lambda rule: rule.id)


def compile_policy(view: OrgView, policy_rev: int) -> CompiledPolicy:
    policy = CompiledPolicy(policy_rev=policy_rev)
    rules: dict[str, dict[str, list[CompiledRule]]] = defaultdict(lambda: defaultdict(list))
    for row in view.session.scalars(view.select(GrantRule).order_by(GrantRule.id)):
        rule = CompiledRule(
            id=row.id,
            allow=row.effect == "allow",
            relation=row.stream_relation,
            stream_ids=frozenset(row.stream_ids),
            query_sets=frozenset(row.query_sets),
            ops=frozenset(Op(op) for op in row.ops),
            max_ttl_seconds=row.max_ttl_seconds,
        )
        keys = [f"p:{p}" for p in row.subject_principal_ids]
        keys += [f"r:{r}" for r in row.subject_roles] + [f"k:{k}" for k in row.subject_kinds]
        for key in keys:
            rules[row.stream_kind][key].append(rule)
    policy.rules = {kind: dict(by_subject) for kind, by_subject in rules.items()}
    for name, version, kinds in view.session.execute(
        view.select(QuerySet).with_only_columns(
            QuerySet.name, QuerySet.version, QuerySet.stream_kinds
        )
    ):
        policy.query_sets[name] = (version, frozenset(kinds))
    return policy


class PolicyCache:
    """Compiled policies per org, valid for exactly one `policy_rev`."""

    def __init__(self) -> None:
        self._by_org: dict[str, CompiledPolicy] = {}
        self._lock = threading.Lock()

    def current(self, org_id: str, policy_rev: int) -> CompiledPolicy | None:
        """The org's compiled policy when it is the one of `policy_rev`, else None."""
        cached = self._by_org.get(org_id)
        return cached if cached is not None and cached.policy_rev == policy_rev else None

    def get(self, view: OrgView, policy_rev: int) -> CompiledPolicy:
        cached = self._by_org.get(view.org_id)
        if cached is not None and cached.policy_rev == policy_rev:
            return cached
        compiled = compile_policy(view, policy_rev)
        with self._lock:
            current = self._by_org.get(view.org_id)
            if current is None or current.policy_rev <= policy_rev:
                self._by_org[view.org_id] = compiled
        return compiled


@dataclass(frozen=True)
class Decision:
    stream: str
    allowed: bool
    query_sets: tuple[str, ...]
    ops: tuple[Op, ...]
    reason: str | None
    rule_ids: tuple[str, ...]
    max_ttl_seconds: int | None = None

    def grant(self) -> Grant:
        return make_grant(self.stream, self.query_sets, self.ops)


def _denied(stream: str, reason: str, rule_ids: Iterable[str] = ()) -> Decision:
    return Decision(stream, False, (), (), reason, tuple(sorted(set(rule_ids))))


def _requested_names(query_sets: Sequence[str] | None) -> dict[str, int | None] | None:
    """Requested query sets by name, with the exact version when one was named."""
    if query_sets is None:
        return None
    wanted: dict[str, int | None] = {}
    for value in query_sets:
        if "@" in value:
            ref = parse_query_set_ref(value)
            wanted[ref.name] = ref.version
        else:
            wanted[value] = None
    return wanted


def decide(
    view: OrgView,
    policy: CompiledPolicy,
    subject: Subject,
    streams: Sequence[str],
    query_sets: Sequence[str] | None = None,
    ops: Sequence[Op] | None = None,
) -> list[Decision]:
    """One decision per requested stream or kind-wide selector (in request order, duplicates
    once)."""
    # A selector is decided by the rules alone: it names no row, and whatever streams the org
    # holds now, it also covers those registered later.
    named = named_streams(streams)
    rows = {
        row.id: RegisteredStream(row.id, row.kind, row.owner_id)
        for row in (view.execute(STREAMS_BY_ID, ids=named) if named else ())
    }
    return decide_read(policy, subject, streams, rows, query_sets, ops)


def named_streams(streams: Sequence[str]) -> list[str]:
    """The stream ids a decision reads rows for: every requested one but kind-wide selectors."""
    return [stream_id for stream_id in dict.fromkeys(streams) if not is_kind_wide(stream_id)]


def decide_read(
    policy: CompiledPolicy,
    subject: Subject,
    streams: Sequence[str],
    rows: dict[str, RegisteredStream],
    query_sets: Sequence[str] | None = None,
    ops: Sequence[Op] | None = None,
) -> list[Decision]:
    """`decide` with the org's rows of `named_streams(streams)` already read (the token route
    reads them in the same statement as its caller): what is absent from `rows` is not found."""
    wanted_ops = frozenset(ops) if ops else frozenset({Op.SUBSCRIBE})
    wanted_sets = _requested_names(query_sets)
    stream_ids = list(dict.fromkeys(streams))
    return [
        _decide_kind_wide(policy, subject, stream_id, wanted_sets, wanted_ops)
        if is_kind_wide(stream_id)
        else _decide_stream(
            policy, subject, stream_id, rows.get(stream_id), wanted_sets, wanted_ops
        )
        for stream_id in stream_ids
    ]


def _decide_stream(
    policy: CompiledPolicy,
    subject: Subject,
    stream_id: str,
    stream: RegisteredStream | None,
    wanted_sets: dict[str, int | None] | None,
    wanted_ops: frozenset[Op],
) -> Decision:
    if stream is None:  # unregistered, or another org's: the same answer
        return _denied(stream_id, STREAM_NOT_FOUND)
    allows: list[CompiledRule] = []
    denies: list[CompiledRule] = []
    for rule in policy.rules_for(subject, stream.kind):
        if rule.relation == "owner" and stream.owner_id != subject.principal_id:
            continue
        if rule.relation == "ids" and stream.id not in rule.stream_ids:
            continue
        (allows if rule.allow else denies).append(rule)
    if not allows:
        return _denied(stream_id, NOT_PERMITTED, (rule.id for rule in denies))
    return _decide_sets_and_ops(
        policy, stream_id, stream.kind, allows, denies, wanted_sets, wanted_ops
    )


def _decide_kind_wide(
    policy: CompiledPolicy,
    subject: Subject,
    selector: str,
    wanted_sets: dict[str, int | None] | None,
    wanted_ops: frozenset[Op],
) -> Decision:
    """A kind-wide grant: every stream of the kind in the org, present and future.

    Given only when the rules give the subject the kind across the whole org (an allow rule with
    relation `org`) and no deny rule of the kind reaches the subject, whatever its relation: a
    deny rule on some streams would take those out of "every stream", and an `owner` or `ids`
    rule gives only some. Otherwise `kind_wide_not_permitted`, naming the rules in the way (the
    deny rules, or else the `owner`/`ids` allow rules). What is granted is what the org-wide
    rules give, which is what every stream of the kind gets, so explicit grants and a kind-wide
    one never disagree on a stream."""
    kind = selector[:-2]
    rules = policy.rules_for(subject, kind)
    denies = [rule.id for rule in rules if not rule.allow]
    if denies:
        return _denied(selector, KIND_WIDE_NOT_PERMITTED, denies)
    org_wide = [rule for rule in rules if rule.allow and rule.relation == "org"]
    if not org_wide:
        return _denied(selector, KIND_WIDE_NOT_PERMITTED, (rule.id for rule in rules))
    return _decide_sets_and_ops(policy, selector, kind, org_wide, [], wanted_sets, wanted_ops)


def _decide_sets_and_ops(
    policy: CompiledPolicy,
    stream_id: str,
    kind: str,
    allows: list[CompiledRule],
    denies: list[CompiledRule],
    wanted_sets: dict[str, int | None] | None,
    wanted_ops: frozenset[Op],
) -> Decision:
    """The query sets and ops the matching rules give a stream (or selector) of `kind`."""

    # Query sets that still exist and apply to this stream kind (policy may have moved on).
    def applicable(names: Iterable[str]) -> set[str]:
        return {n for n in names if n in policy.query_sets and kind in policy.query_sets[n][1]}

    allowed_sets = applicable(name for rule in allows for name in rule.query_sets)
    allowed_ops = {op for rule in allows for op in rule.ops}
    deny_ids = [rule.id for rule in denies]
    for rule in denies:
        if not rule.query_sets and not rule.ops:
            return _denied(stream_id, DENIED_BY_RULE, deny_ids)
    denied_sets = {name for rule in denies for name in rule.query_sets}
    denied_ops = {op for rule in denies for op in rule.ops}

    if wanted_sets is None:
        chosen_sets = allowed_sets - denied_sets
    else:
        # A name the org never defined is a typo to point at, not a permission to withhold.
        if any(name not in policy.query_sets for name in wanted_sets):
            return _denied(stream_id, QUERY_SET_NOT_FOUND)
        requested_here = {
            name: version
            for name, version in wanted_sets.items()
            if kind in policy.query_sets[name][1]
        }
        # Denials name the allow rules that matched and fell short: what to change to allow.
        allow_ids = [rule.id for rule in allows]
        if not requested_here and wanted_sets:
            return _denied(stream_id, QUERY_SET_NOT_ALLOWED, allow_ids)
        for name, version in requested_here.items():
            if name not in allowed_sets:
                return _denied(stream_id, QUERY_SET_NOT_ALLOWED, allow_ids)
            if name in denied_sets:
                return _denied(stream_id, DENIED_BY_RULE, deny_ids)
            if version is not None and version != policy.query_sets[name][0]:
                return _denied(stream_id, QUERY_SET_NOT_ALLOWED, allow_ids)
        chosen_sets = set(requested_here)
    for op in wanted_ops:
        if op not in allowed_ops:
            return _denied(stream_id, OP_NOT_ALLOWED, (rule.id for rule in allows))
        if op in denied_ops:
            return _denied(stream_id, DENIED_BY_RULE, deny_ids)

    used = [rule for rule in allows if rule.ops & wanted_ops]
    ttls = [rule.max_ttl_seconds for rule in used if rule.max_ttl_seconds is not None]
    refs = tuple(sorted(f"{name}@{policy.query_sets[name][0]}" for name in chosen_sets))
    return Decision(
        stream=stream_id,
        allowed=True,
        query_sets=refs,
        ops=tuple(op for op in Op if op in wanted_ops),
        reason=None,
        rule_ids=tuple(sorted({rule.id for rule in used} | set(deny_ids))),
        max_ttl_seconds=min(ttls) if ttls else None,
    )


@traced("policy.decide")
def decide_current(
    view: OrgView,
    policies: PolicyCache,
    subject: Subject,
    streams: Sequence[str],
    query_sets: Sequence[str] | None = None,
    ops: Sequence[Op] | None = None,
) -> tuple[int, list[Decision]]:
    """Decide under the org's current policy: the one entry point of minting and explain, so
    an explanation is exactly what a mint would do. Returns the `policy_rev` used."""
    policy_rev = current_policy_rev(view)
    policy = policies.get(view, policy_rev)
    return policy_rev, decide(view, policy, subject, streams, query_sets, ops)


def current_policy_rev(view: OrgView) -> int:
    return int(view.execute(POLICY_REV).scalar() or 0)
