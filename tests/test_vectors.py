"""The shared test vectors of the grant grammar and the SpacetimeDB module (`tests/vectors/`).

`claims.json` is checked here against `control.grants.validate_sync_claims` and in the module
against its TypeScript port (`module/test/vectors.test.ts`), so both sides accept the same tokens,
turn them into the same grant rows and reject the rest with the same code. The module also requires
an `org_id` claim after those checks: `control.grants.accept_sync_claims` is that rule. `views.json`
holds the module's row rules (sweep, revocation, which view a grant opens, op checks, all matched
on (org, stream)); this file applies the same rules in Python, built on `control.grants`, so the
two stay one definition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from control.grants import (
    ClaimsRejected,
    Grant,
    GrantDecision,
    Op,
    accept_sync_claims,
    authorize,
    parse_query_set_ref,
)

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


def test_claims_vectors_cover_every_code() -> None:
    codes = {case["expect"].get("reject") for case in CLAIMS["cases"]} - {None}
    assert codes == REJECT_CODES


def test_claims_vector_names_are_unique() -> None:
    names = [case["name"] for case in CLAIMS["cases"]]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------------------------------
# views.json: the module's row rules, in Python


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
            opened = {(row["org_id"], row["stream"]) for row in mine if opens_view(row, view)}
            shown = sorted(
                item["id"] for item in data[view] if (item["org_id"], item["stream_id"]) in opened
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
        try:
            authorize(grants_of(connection), op_check["stream"], None, op_check["op"])
        except GrantDecision as decision:
            outcome = decision.code
        else:
            outcome = "ok"
        assert outcome == op_check["expect"], op_check


def test_views_vectors_name_known_views() -> None:
    for views in VIEWS["query_set_views"].values():
        assert set(views) <= set(VIEWS["views"])
