"""How `control.runtime` reads a token's bytes: the compact-JSON fast path and the standard
decoder behind it must agree, duplicates and non-JSON numbers are refused on both, and the
cache of parsed grants never changes what a claim means.

These run without a server or database: `verify_token` with a key in hand.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from control.grants import parse_grants
from control.runtime import TokenRejected, VerificationKey, verify_token
from control.sdk import runtime
from tests.forge import Forgery, b64url, es256_signer, split

ISSUER = "https://control.test"
AUDIENCE = "spacetimedb"
KEY = ec.generate_private_key(ec.SECP256R1())
PUBLISHED = VerificationKey("ES256", KEY.public_key())
FORGE = Forgery(
    issuer=ISSUER,
    audience=AUDIENCE,
    org_id="org_1",
    subject="prn_1",
    kid="k1",
    alg="ES256",
    key=KEY,
)


def verify(token: str) -> dict[str, Any]:
    return verify_token(token, {"k1": PUBLISHED}.get, issuer=ISSUER, audience=AUDIENCE)


def code_of(token: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        verify(token)
    return caught.value.code


def payload_text(claims: dict[str, Any], tail: str = "", **dumps: Any) -> str:
    text = json.dumps(claims, **dumps)
    return text[:-1] + tail + "}"


@pytest.mark.parametrize(
    "dumps",
    [
        {"separators": (",", ":")},  # compact: the fast path
        {},  # ", " and ": " separators: the standard decoder
        {"indent": 2},
        {"separators": (",", ":"), "ensure_ascii": True},
    ],
    ids=["compact", "spaced", "indented", "ascii_escaped"],
)
def test_every_json_layout_gives_the_same_claims(dumps: dict[str, Any]) -> None:
    claims = FORGE.claims(sub="prn_ü", scope="sync.subscribe sync.append")
    assert verify(FORGE.token(payload=json.dumps(claims, **dumps))) == claims


@pytest.mark.parametrize(
    "tail",
    [',"sub":"other"', ', "sub" : "other"', ',"s\\u0075b":"other"'],
    ids=["compact", "spaced", "escaped"],
)
def test_a_duplicate_member_is_refused_in_any_layout(tail: str) -> None:
    assert code_of(FORGE.token(payload=payload_text(FORGE.claims(), tail))) == "malformed"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_refused_even_outside_the_registered_claims(constant: str) -> None:
    payload = payload_text(FORGE.claims(), f',"x":{constant}', separators=(",", ":"))
    assert code_of(FORGE.token(payload=payload)) == "malformed"


def test_a_number_beyond_64_bits_is_read_exactly_by_the_standard_decoder() -> None:
    # orjson reads such a number as a float; the re-serialization check sends it to the
    # standard decoder, which keeps it an integer.
    huge = 2**70
    token = FORGE.token(payload=payload_text(FORGE.claims(), f',"x":{huge}'))
    assert verify(token)["x"] == huge


@pytest.mark.parametrize("segment", [1, 2], ids=["payload", "signature"])
def test_the_standard_base64_alphabet_is_not_base64url(segment: int) -> None:
    for attempt in range(200):
        parts = list(split(FORGE.token(payload=FORGE.claims(jti=f"jti-{attempt}-~~~?>"))))
        if "-" in parts[segment] or "_" in parts[segment]:
            break
    else:  # pragma: no cover - 200 tokens without one `-` or `_` in a segment
        pytest.fail("no segment with a base64url-only character")
    parts[segment] = parts[segment].replace("-", "+").replace("_", "/")
    if segment == 1:  # signed as sent, so only the alphabet is wrong
        parts[2] = b64url(es256_signer(KEY)(f"{parts[0]}.{parts[1]}".encode()))
    assert code_of(".".join(parts)) == "malformed"


def test_a_non_ascii_token_is_malformed() -> None:
    header, payload, signature = split(FORGE.token())
    assert code_of(f"{header}.{payload}é.{signature}") == "malformed"


def test_grants_read_from_the_cache_are_the_grants_of_the_claim() -> None:
    first = FORGE.claims(
        grants=[{"stream": "run:a", "query_sets": ["run_events@1"], "ops": ["subscribe"]}]
    )
    reordered = FORGE.claims(
        grants=[{"ops": ["subscribe"], "stream": "run:a", "query_sets": ["run_events@1"]}]
    )
    other = FORGE.claims(
        grants=[{"stream": "run:a", "query_sets": ["run_events@1"], "ops": ["append"]}]
    )
    for claims in (first, reordered, first, other, other):
        token = FORGE.token(payload=claims)
        verified = runtime._verify(
            token, {"k1": PUBLISHED}.get, issuer=ISSUER, audience=AUDIENCE, leeway=30, now=None
        )
        assert verified.grants == parse_grants(claims["grants"])


def test_authorize_reads_grants_by_their_json_whether_cached_or_not() -> None:
    # A tuple is a JSON array: hand-built claims mean what their JSON says, on a cache miss
    # (the first call) exactly as on a hit.
    stream = "run:tuple-test"
    as_tuples = {
        "grants": [{"stream": stream, "query_sets": ("run_events@1",), "ops": ("append",)}]
    }
    runtime._PARSED_GRANTS.clear()
    for _ in range(2):
        assert runtime.authorize(as_tuples, stream, "run_events", "append").stream == stream
    with pytest.raises(runtime.GrantDenied):
        runtime.authorize({"grants": {"not": "a list"}}, stream)
    with pytest.raises(runtime.GrantDenied):
        runtime.authorize({"grants": [{"stream": stream, "query_sets": {1}, "ops": []}]}, stream)


def test_an_invalid_grants_claim_is_refused_every_time_and_never_cached() -> None:
    invalid = [{"stream": "run:a", "query_sets": ["run_events@1"], "ops": ["fly"]}]
    for _ in range(3):
        assert code_of(FORGE.token(payload=FORGE.claims(grants=invalid))) == "malformed"
    assert json.dumps(invalid, separators=(",", ":")).encode() not in runtime._PARSED_GRANTS


def test_the_grants_cache_is_bounded() -> None:
    for index in range(runtime._MAX_PARSED_GRANTS + 10):
        stream = f"run:s{index}"
        runtime._parse_grants_cached([{"stream": stream, "query_sets": [], "ops": ["append"]}])
        assert len(runtime._PARSED_GRANTS) <= runtime._MAX_PARSED_GRANTS


@pytest.mark.parametrize(
    ("sub", "accepted"),
    [
        ("a" * 128, True),
        ("a" * 129, False),
        ("\U0001f600" * 32, True),  # 32 characters, 128 UTF-8 bytes
        ("\U0001f600" * 32 + "a", False),  # 129 bytes
        ("ü" * 64, True),
        ("ü" * 65, False),
        ("", False),
    ],
    ids=[
        "128_ascii",
        "129_ascii",
        "128_bytes_emoji",
        "129_bytes_emoji",
        "128_bytes",
        "130_bytes",
        "empty",
    ],
)
def test_sub_is_one_to_128_utf8_bytes(sub: str, accepted: bool) -> None:
    token = FORGE.token(payload=FORGE.claims(sub=sub))
    if accepted:
        assert verify(token)["sub"] == sub
    else:
        assert code_of(token) == "malformed"


def test_a_lone_surrogate_in_sub_is_malformed() -> None:
    payload = payload_text(FORGE.claims(sub="placeholder"), "").replace(
        '"placeholder"', '"\\ud800"'
    )
    assert code_of(FORGE.token(payload=payload)) == "malformed"


def test_an_audience_list_is_searched() -> None:
    assert verify(FORGE.token(payload=FORGE.claims(aud=["other", AUDIENCE])))["aud"][1] == AUDIENCE
    assert code_of(FORGE.token(payload=FORGE.claims(aud=["other"]))) == "wrong_audience"
    assert code_of(FORGE.token(payload=FORGE.claims(aud=[]))) == "wrong_audience"


def test_forge_writes_base64url_without_padding() -> None:
    # The alphabet tests above rely on the forger's encoding being base64url.
    assert b64url(b"\xfb\xff") == "-_8"
