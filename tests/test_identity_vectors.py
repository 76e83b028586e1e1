"""tests/vectors/identity.json holds what `spacetimedb_identity` computes; the TypeScript
client's `identityOf` is tested against the same file, so both compute SpacetimeDB's Identity
alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.tokens.spacetime_identity import spacetimedb_identity

CASES = json.loads((Path(__file__).parent / "vectors" / "identity.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case['issuer']}|{case['subject']}"[:60])
def test_identity_vectors_are_what_the_service_computes(case: dict[str, str]) -> None:
    identity = spacetimedb_identity(case["issuer"], case["subject"])
    assert identity == case["identity"]
    assert len(identity) == 64 and identity.startswith("c200")


def test_the_vectors_tell_issuers_and_subjects_apart() -> None:
    assert len({case["identity"] for case in CASES}) == len(CASES)
