"""The shared test vectors of the grant grammar and the SpacetimeDB module (`tests/vectors/`).

`claims.json` is checked here against `control.grants.validate_sync_claims` and in the module
against its TypeScript port (`module/test/vectors.test.ts`), so both sides accept the same tokens,
turn them into the same grant rows and reject the rest with the same code. The module also requires
an `org_id` claim after those checks: `control.grants.accept_sync_claims` is that rule. `views.json`
holds the module's row rules (sweep, revocation, which view a grant opens, op checks, all matched
on (org, stream), or on (org, kind) for a kind-wide grant); this file applies the same rules in
Python, built on `control.grants`, so the two stay one definition. The runtime library
(`control.runtime`) is held to the same vectors: it accepts and rejects every signed claims vector
as `validate_sync_claims` does, and decides every op check as the module does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from control import runtime
from control.grants import (
    ClaimsRejected,
    Grant,
    GrantDecision,
    Op,
    accept_sync_claims,
    authorize,
    parse_query_set_ref,
    selector_covers,
    validate_sync_claims,
)
from tests.forge import compact, es256_signer

VECTORS = Path(__file__).parent / "vectors"
REJECT_CODES = {
    "malformed",
    "wrong_issuer",
    "wrong_audience",
    "wrong_token_use",
    "expired",
    "not_yet_valid",
}


def _load(name: str) -> dict[str, Any]:
    # Plain `json`: 1800000290.0 stays a float, as in a decoded token.
    document: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return document


CLAIMS = _load("claims.json")
VIEWS = _load("views.json")


def grant_rows(grants: tuple[Grant, ...], org_id: str, expires_at: int) -> list[dict[str, Any]]:
    """The module's `sync_grant` rows: one per (grant, query set) in claim order; a grant with no
    query set gets one row with `query_set: ""`; every row carries the token's org and expires
    with the token."""
    return [
        {
            "org_id": org_id,
            "stream": g.stream,
            "query_set": ref,
            "ops": [str(op) for op in g.ops],
            "expires_at": expires_at,
        }
        for g in grants
        for ref in (g.query_sets or ("",))
    ]


@pytest.mark.parametrize("case", CLAIMS["cases"], ids=lambda case: case["name"])
def test_claims_vector(case: dict[str, Any]) -> None:
    check = {
        **CLAIMS["defaults"],
        **{k: case[k] for k in ("issuer", "audience", "now", "leeway") if k in case},
    }
    expect = case["expect"]
    claims = case["claims"]
    if "reject" in expect:
        assert expect["reject"] in REJECT_CODES
        with pytest.raises(ClaimsRejected) as rejected:
            accept_sync_claims(claims, **check)
        assert rejected.value.code == expect["reject"]
        return
    grants, org_id = accept_sync_claims(claims, **check)
    session = {
        "subject": claims["sub"],
        "jti": claims["jti"],
        "org_id": org_id,
        "issued_at": claims["iat"],
        "expires_at": claims["exp"],
    }
    assert session == expect["session"]
    assert grant_rows(grants, org_id, claims["exp"]) == expect["grant_rows"]


_KEY = ec.generate_private_key(ec.SECP256R1())
_PUBLISHED = runtime.VerificationKey("ES256", _KEY.public_key())


@pytest.mark.parametrize("case", CLAIMS["cases"], ids=lambda case: case["name"])
def test_claims_vector_through_the_runtime(case: dict[str, Any]) -> None:
    """The vector's claims, signed as a token, read by `control.runtime.verify_token`: it accepts
    and rejects exactly as `validate_sync_claims` does (the `org_id` rule is the module's own),
    and each accepted grant covers what it names; a kind-wide one only with the stream's org."""
    check = {
        **CLAIMS["defaults"],
        **{k: case[k] for k in ("issuer", "audience", "now", "leeway") if k in case},
    }
    try:
        grants: tuple[Grant, ...] | None = validate_sync_claims(case["claims"], **check)
    except ClaimsRejected as rejected:
        expected, grants = rejected.code, None
    else:
        expected = "ok"
    # Exact JSON text, as the vector spells it (a float stays a float).
    token = compact(
        {"alg": "ES256", "typ": "JWT", "kid": "k1"},
        json.dumps(case["claims"], separators=(",", ":")),
        es256_signer(_KEY),
    )
    try:
        claims = runtime.verify_token(
            token,
            {"k1": _PUBLISHED}.get,
            issuer=check["issuer"],
            audience=check["audience"],
            leeway=check["leeway"],
            now=check["now"],
        )
    except runtime.TokenRejected as exc:
        outcome = exc.code
    else:
        outcome = "ok"
    if len(token) > runtime.MAX_TOKEN_BYTES:
        expected = "malformed"  # the runtime's own bound on what it reads at all
    assert outcome == expected
    if outcome != "ok":
        return
    org = case["claims"].get("org_id")
    for grant in grants or ():
        op = grant.ops[0]
        if not grant.kind_wide:
            assert runtime.authorize(claims, grant.stream, None, op) is not None
            continue
        stream = f"{grant.stream[:-2]}:any-stream"
        assert runtime.authorize(claims, stream, None, op, stream_org=org).stream == grant.stream
        with pytest.raises(runtime.GrantDenied) as denied:
            runtime.authorize(claims, stream, None, op)
        assert denied.value.code == "stream_org_required"
        with pytest.raises(runtime.GrantDenied) as denied:
            runtime.authorize(claims, stream, None, op, stream_org=f"not-{org}")
        assert denied.value.code == "stream_not_granted"


def test_claims_vectors_cover_kind_wide_grants() -> None:
    accepted = [case for case in CLAIMS["cases"] if "reject" not in case["expect"]]
    assert any(
        row["stream"].endswith(":*") for case in accepted for row in case["expect"]["grant_rows"]
    )
    streams = {
        grant.get("stream")
        for case in CLAIMS["cases"]
        if "reject" in case["expect"] and isinstance(case["claims"].get("grants"), list)
        for grant in case["claims"]["grants"]
        if isinstance(grant, dict)
    }
    assert {"run:01*", "*:*", "*:x", "run:*x"} <= streams


def test_claims_vectors_cover_every_code() -> None:
    codes = {case["expect"].get("reject") for case in CLAIMS["cases"]} - {None}
    assert codes == REJECT_CODES


def test_claims_vector_names_are_unique() -> None:
    names = [case["name"] for case in CLAIMS["cases"]]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------------------------------
# views.json: the module's row rules, in Python


def row_shows(row: dict[str, Any], item: dict[str, Any]) -> bool:
    """Whether a grant row opens a data row: the same org, and the same stream or (a kind-wide
    grant row) a stream of its kind."""
    return bool(
        row["org_id"] == item["org_id"] and selector_covers(row["stream"], item["stream_id"])
    )


def opens_view(row: dict[str, Any], view: str) -> bool:
    if Op.SUBSCRIBE not in row["ops"] or row["query_set"] == "":
        return False
    name = parse_query_set_ref(row["query_set"]).name
    return view in VIEWS["query_set_views"].get(name, [])


def revocation_covers(revocation: dict[str, Any], session: dict[str, Any]) -> bool:
    if revocation["kind"] == "jti":
        return bool(session["jti"] == revocation["value"])
    return bool(
        session["subject"] == revocation["value"]
        and session["issued_at"] < revocation["not_before"]
    )


def live_rows(case: dict[str, Any]) -> list[dict[str, Any]]:
    rows = list(case["grant_rows"])
    if "now" in case:
        rows = [row for row in rows if not row["expires_at"] <= case["now"]]
    for revocation in case.get("revocations", []):
        dropped = {
            session["connection_id"]
            for session in case["sessions"]
            if revocation_covers(revocation, session)
        }
        rows = [row for row in rows if row["connection_id"] not in dropped]
    return rows


def grants_of(rows: list[dict[str, Any]]) -> tuple[Grant, ...]:
    """The grants behind a connection's rows (the inverse of `grant_rows`)."""
    by_stream: dict[str, Grant] = {}
    for row in rows:
        refs = (row["query_set"],) if row["query_set"] else ()
        known = by_stream.get(row["stream"])
        query_sets = (known.query_sets if known else ()) + refs
        by_stream[row["stream"]] = Grant(
            row["stream"], query_sets, tuple(Op(o) for o in row["ops"])
        )
    return tuple(by_stream.values())


@pytest.mark.parametrize("case", VIEWS["cases"], ids=lambda case: case["name"])
def test_views_vector(case: dict[str, Any]) -> None:
    rows = live_rows(case)
    data = {
        "run_event_view": case["stream_event"],
        "run_checkpoint_view": case["stream_checkpoint"],
    }
    assert set(data) == set(VIEWS["views"])
    for identity, per_view in case["expect"].items():
        mine = [row for row in rows if row["identity"] == identity]
        for view, expected_ids in per_view.items():
            opened = [row for row in mine if opens_view(row, view)]
            shown = sorted(
                item["id"] for item in data[view] if any(row_shows(row, item) for row in opened)
            )
            assert shown == expected_ids, (identity, view)
    for op_check in case.get("op_checks", []):
        # A grant of the stream in another org does not count.
        connection = [
            row
            for row in rows
            if row["connection_id"] == op_check["connection_id"]
            and row["org_id"] == op_check["org_id"]
        ]
        org = op_check["org_id"]
        try:
            authorize(
                grants_of(connection),
                op_check["stream"],
                None,
                op_check["op"],
                token_org=org,
                stream_org=org,
            )
        except GrantDecision as decision:
            outcome = decision.code
        else:
            outcome = "ok"
        assert outcome == op_check["expect"], op_check


@pytest.mark.parametrize("case", VIEWS["cases"], ids=lambda case: case["name"])
def test_views_op_checks_through_the_runtime(case: dict[str, Any]) -> None:
    """Each op check as a runtime service makes it: the connection's token (its grants and its
    org) and the org that holds the stream, through `control.runtime.authorize`."""
    rows = live_rows(case)
    for op_check in case.get("op_checks", []):
        connection = [row for row in rows if row["connection_id"] == op_check["connection_id"]]
        orgs = {row["org_id"] for row in connection}
        assert len(orgs) <= 1  # a connection's rows carry its one token's org
        claims = {
            "org_id": orgs.pop() if orgs else "org_none",
            "grants": [grant.to_claim() for grant in grants_of(connection)],
        }
        try:
            runtime.authorize(
                claims, op_check["stream"], None, op_check["op"], stream_org=op_check["org_id"]
            )
        except runtime.GrantDenied as denied:
            outcome = denied.code
        else:
            outcome = "ok"
        assert outcome == op_check["expect"], op_check


def test_views_vectors_cover_kind_wide_grants() -> None:
    """Some vector has a kind-wide grant show a stream that no grant names, and in each such
    vector its holder sees rows of its own org only."""
    tables = {"run_event_view": "stream_event", "run_checkpoint_view": "stream_checkpoint"}
    unnamed_shown = False
    for case in VIEWS["cases"]:
        holders = {row["identity"] for row in case["grant_rows"] if row["stream"].endswith(":*")}
        named = {(row["org_id"], row["stream"]) for row in case["grant_rows"]}
        for identity in holders & set(case["expect"]):
            shown = {
                (item["org_id"], item["stream_id"])
                for view, ids in case["expect"][identity].items()
                for item in case[tables[view]]
                if item["id"] in ids
            }
            orgs = {row["org_id"] for row in case["grant_rows"] if row["identity"] == identity}
            assert {org for org, _ in shown} <= orgs, case["name"]
            unnamed_shown = unnamed_shown or bool(shown - named)
    assert unnamed_shown


def test_views_vectors_name_known_views() -> None:
    for views in VIEWS["query_set_views"].values():
        assert set(views) <= set(VIEWS["views"])
