"""Token verification rates of `control.runtime.GrantVerifier`, beside the raw ES256 verify rate.

Mints distinct tokens from a real `control serve` (SQLite, one uvicorn worker) over HTTP, points
a `GrantVerifier` at the server's JWKS, and measures in alternating rounds, in one process:

- raw: `cryptography`'s ECDSA P-256 `public_key.verify(der_signature, signing_input, ...)` on
  the very same tokens (signature converted from the JWS r||s form beforehand, so only the
  verify itself is timed): the floor any ES256 verifier pays;
- first-seen: `GrantVerifier.verify` of tokens it has not seen (a fresh verifier per round,
  its JWKS already fetched with a token outside the measured set);
- cached: `GrantVerifier.verify` of the same tokens again;
- authorize: `GrantVerifier.authorize(claims, stream, query_set, op)` on verified claims.

    .venv/bin/python bench/verify.py [--tokens 2000] [--rounds 9] [--seconds 1]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm
from loadgen import QUERY_SET, World, database, make_world, run_phase, serving

from control.runtime import GrantVerifier, TokenRejected

TARGET_FIRST_SEEN_RATIO = 0.80
TARGET_AUTHORIZE_RATE = 100_000


def b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass
class Rate:
    """`count` operations in `wall` seconds of elapsed time and `cpu` seconds of this process's
    CPU time (the CPU figure is the one a noisy neighbour disturbs least)."""

    count: int
    wall: float
    cpu: float

    @property
    def per_second(self) -> float:
        return self.count / self.wall

    @property
    def per_cpu_second(self) -> float:
        return self.count / self.cpu if self.cpu > 0 else float("nan")


def timed(operation: Callable[[], int]) -> Rate:
    # Start each phase with no garbage pending, so that a phase pays for the collections its own
    # allocations cause and not for a full collection that earlier rounds' leftovers trigger
    # (which otherwise lands in the same round of every run, at about 2/3 of the usual rate).
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    count = operation()
    return Rate(count, time.perf_counter() - wall, time.process_time() - cpu)


def mint_tokens(world: World, count: int) -> list[str]:
    """`count` distinct tokens minted over HTTP by the member."""
    requests = [world.mint_request([stream]) for stream in world.streams]
    bodies: list[bytes] = []
    started = time.perf_counter()
    result = run_phase(
        "mint",
        world.port,
        lambda seq: requests[seq % len(requests)],
        concurrency=4,
        seconds=120,
        max_requests=count,
        server_pid=world.server.process.pid,
        on_body=bodies.append,
    )
    if result.errors or len(bodies) != count:
        raise RuntimeError(f"minting failed: {result.errors}, {len(bodies)} tokens")
    print(
        f"minted {len(bodies)} tokens over HTTP in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    return [json.loads(body)["token"] for body in bodies]


def measure(args: argparse.Namespace, world: World, tokens: list[str]) -> dict[str, list[Rate]]:
    issuer = world.server.base_url
    primer, tokens = tokens[0], tokens[1:]
    jwks = world.http.get("/.well-known/jwks.json").json()

    # The raw inputs, prepared outside the timed loop: key, DER signature, signing input.
    keys = {jwk["kid"]: ECAlgorithm.from_jwk(jwk) for jwk in jwks["keys"]}
    raw_inputs = []
    for token in tokens:
        header, payload, signature = token.split(".")
        rs = b64url(signature)
        der = encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))
        kid = json.loads(b64url(header))["kid"]
        raw_inputs.append((keys[kid], der, f"{header}.{payload}".encode()))
    ecdsa = ec.ECDSA(hashes.SHA256())
    # Each token's own stream, for `authorize` to find among its grants.
    streams = [json.loads(b64url(t.split(".")[1]))["grants"][0]["stream"] for t in tokens]

    def raw_verify() -> int:
        for public_key, der, signing_input in raw_inputs:
            public_key.verify(der, signing_input, ecdsa)
        return len(raw_inputs)

    results: dict[str, list[Rate]] = {"raw": [], "first": [], "cached": [], "authorize": []}
    for round_number in range(args.rounds):
        fetches: list[str] = []
        http = httpx.Client(
            timeout=5.0,
            event_hooks={"request": [lambda r, seen=fetches: seen.append(str(r.url))]},
        )
        verifier = GrantVerifier(
            issuer=issuer,
            audience="spacetimedb",
            jwks_url=f"{issuer}/.well-known/jwks.json",
            http=http,
        )
        verifier.verify(primer)  # fetches the JWKS; not one of the measured tokens
        claims: list[dict[str, Any]] = []

        def first_seen(v: GrantVerifier = verifier, out: list[dict[str, Any]] = claims) -> int:
            out.extend(v.verify(token) for token in tokens)
            return len(tokens)

        def cached(v: GrantVerifier = verifier) -> int:
            for token in tokens:
                v.verify(token)
            return len(tokens)

        def authorize(v: GrantVerifier = verifier, verified: list[dict[str, Any]] = claims) -> int:
            count, deadline = 0, time.perf_counter() + args.seconds
            while time.perf_counter() < deadline and count < 10_000_000:
                for token_claims, stream in zip(verified, streams, strict=True):
                    v.authorize(token_claims, stream, QUERY_SET, "subscribe")
                count += len(verified)
            return count

        # Alternate which of the pair runs first.
        pair = [("raw", raw_verify), ("first", first_seen)]
        for name, operation in pair if round_number % 2 == 0 else pair[::-1]:
            results[name].append(timed(operation))
        results["cached"].append(timed(cached))
        results["authorize"].append(timed(authorize))
        if fetches != [verifier.jwks_url]:
            raise RuntimeError(f"expected one JWKS fetch, the verifier made {fetches}")
        verifier.close()
        http.close()
        print(
            f"  round {round_number + 1}: raw {results['raw'][-1].per_second:8.0f}/s  "
            f"first-seen {results['first'][-1].per_second:8.0f}/s  "
            f"cached {results['cached'][-1].per_second:9.0f}/s  "
            f"authorize {results['authorize'][-1].per_second:9.0f}/s",
            flush=True,
        )

    # Both paths refuse a signature that does not match.
    with GrantVerifier(issuer, "spacetimedb", f"{issuer}/.well-known/jwks.json") as verifier:
        header, payload, signature = tokens[0].split(".")
        forged = f"{header}.{payload}.{tokens[1].split('.')[2]}"
        try:
            verifier.verify(forged)
            raise AssertionError("GrantVerifier accepted another token's signature")
        except TokenRejected as exc:
            if exc.code != "invalid_signature":
                raise
    public_key, der, signing_input = raw_inputs[0]
    try:
        public_key.verify(der, signing_input + b"x", ecdsa)
        raise AssertionError("raw verify accepted another input")
    except InvalidSignature:
        pass
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2000, help="distinct tokens to verify")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0, help="authorize phase length")
    args = parser.parse_args()

    print(
        "verify benchmark: every figure is one thread of this process, measured while the "
        f"server (which only minted the tokens and serves the JWKS) sits idle; "
        f"{os.cpu_count()} shared cores.",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="control-bench-") as tmp:
        workdir = Path(tmp)
        with (
            database("sqlite", workdir) as url,
            serving(url, workdir, token_ttl_default_seconds="900") as server,
        ):
            world = make_world(server, 100)
            tokens = mint_tokens(world, args.tokens + 1)
            if len(set(tokens)) != len(tokens):
                raise RuntimeError("the minted tokens are not distinct")
            results = measure(args, world, tokens)

    def med(name: str, cpu: bool = False) -> float:
        return statistics.median([r.per_cpu_second if cpu else r.per_second for r in results[name]])

    pairs = list(zip(results["first"], results["raw"], strict=True))
    first_ratio = statistics.median([f.per_second / r.per_second for f, r in pairs])
    first_ratio_cpu = statistics.median([f.per_cpu_second / r.per_cpu_second for f, r in pairs])
    print(
        f"\nFigures: {args.tokens} distinct ES256 tokens, median of {args.rounds} rounds "
        "(ops/CPU-s: per second of this process's CPU time, less sensitive to neighbours)"
    )
    print(f"{'':<44} {'ops/s':>11} {'us/op':>8} {'ops/CPU-s':>11}")
    for label, name in (
        ("raw cryptography ES256 verify", "raw"),
        ("GrantVerifier.verify, first-seen token", "first"),
        ("GrantVerifier.verify, cached token", "cached"),
        ("GrantVerifier.authorize, verified claims", "authorize"),
    ):
        rate = med(name)
        print(f"{label:<44} {rate:>11,.0f} {1e6 / rate:>8.2f} {med(name, True):>11,.0f}")
    print("\nRatios and targets")
    print(
        f"first-seen verify / raw ES256 verify: {first_ratio:.1%} (per CPU-second "
        f"{first_ratio_cpu:.1%}); target >= {TARGET_FIRST_SEEN_RATIO:.0%}: "
        f"{'MET' if first_ratio >= TARGET_FIRST_SEEN_RATIO else 'MISSED'}"
    )
    authorize_rate = med("authorize")
    print(
        f"warm authorize: {authorize_rate:,.0f}/s; target >= {TARGET_AUTHORIZE_RATE:,}/s: "
        f"{'MET' if authorize_rate >= TARGET_AUTHORIZE_RATE else 'MISSED'}"
    )
    print(
        f"cached verify is {med('cached') / med('first'):.1f}x first-seen; first-seen costs "
        f"{1e6 / med('first') - 1e6 / med('raw'):.1f} us per token beyond the raw verify"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
