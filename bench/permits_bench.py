"""Cost of a permit: minting on the guard, verifying on the upstream, and its size on the wire.

    .venv/bin/python bench/permits_bench.py [--n 2000]

Prints median and p99 per operation in microseconds. PyJWT's own encode/decode of the same claims
are printed as a reference point; the guard signs and parses with `cryptography` directly.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jwt

from guard_mcp._canonical import payload_hash
from guard_mcp._clock import SystemClock
from guard_mcp._keys import KeyStore
from guard_mcp._models import ActionBundle, Actor, Decision, Effect
from guard_mcp._permits import PermitIssuer
from guard_mcp.verify import PERMIT_TYP, PermitVerifier, SqliteReplayStore

ARGS = {"customer_id": "cus_42", "amount": 350, "reason": "damaged in transit"}


def measure(label: str, op: Callable[[int], object], n: int) -> None:
    for i in range(min(200, n)):  # warm caches and the allocator
        op(i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        op(i)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{label:<52} median {statistics.median(samples):8.1f} us   p99 {p99:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    n = parser.parse_args().n

    root = Path(tempfile.mkdtemp(prefix="permits-bench-"))
    clock = SystemClock()
    keys = KeyStore(root / "keys", clock, environment="production")
    keys.ensure()
    issuer = PermitIssuer(keys, issuer="guard-mcp", environment="production", clock=clock)
    bundle = ActionBundle(
        request_id="req-1",
        action="refund.create",
        upstream="shop",
        tool="refund",
        actor=Actor(principal="alice@example.com"),
        arguments=ARGS,
        payload_hash=payload_hash(ARGS),
        category="financial",
        reversibility="none",
        blast_radius="single",
        sensitivity="confidential",
        environment="production",
    )
    auto = Decision(effect=Effect.ALLOW, rule_id="small-refunds", reason="rule_matched", policy="shop@3")
    approved = Decision(effect=Effect.APPROVE, rule_id="large-refunds", reason="needs_approval", policy="shop@3")

    auto_token = issuer.mint(bundle, auto).token
    approved_token = issuer.mint(bundle, approved, approver="bob@example.com").token
    print(f"permit size: {len(auto_token)} bytes auto-allowed, {len(approved_token)} bytes with an approver")

    n_tokens = n + 200
    tokens = [issuer.mint(bundle, auto).token for _ in range(n_tokens)]
    tokens_b = [issuer.mint(bundle, auto).token for _ in range(n_tokens)]
    tokens_c = [issuer.mint(bundle, auto).token for _ in range(n_tokens)]

    measure("mint (guard)", lambda i: issuer.mint(bundle, auto), n)
    signing = keys.current()
    claims = issuer.mint(bundle, auto).claims
    measure(
        "  reference: PyJWT encode, same claims",
        lambda i: jwt.encode(
            claims, signing.private_key, algorithm="ES256", headers={"kid": signing.kid, "typ": PERMIT_TYP}
        ),
        n,
    )
    measure("payload_hash of the arguments", lambda i: payload_hash(ARGS), n)

    mem = PermitVerifier(keys.jwks(), issuer="guard-mcp", audience="shop", environment="production")
    measure("verify, memory replay store", lambda i: mem.verify(tokens[i], action="refund.create", arguments=ARGS), n)

    keys.write_public_jwks(root / "jwks.json")
    for durable, batch in ((True, tokens_b), (False, tokens_c)):
        with SqliteReplayStore(root / f"jti-{durable}.db", durable=durable) as store:
            disk = PermitVerifier(
                root / "jwks.json", issuer="guard-mcp", audience="shop", environment="production", replay_store=store
            )
            measure(
                f"verify, JWKS file + SQLite store (durable={durable})",
                lambda i, v=disk, b=batch: v.verify(b[i], action="refund.create", arguments=ARGS),
                n,
            )

    public = keys.public_keys()[signing.kid]
    measure(
        "  reference: PyJWT decode (signature + claims)",
        lambda i: jwt.decode(auto_token, public, algorithms=["ES256"], audience="shop", issuer="guard-mcp"),
        n,
    )

    replayed = PermitVerifier(keys.jwks(), issuer="guard-mcp", audience="shop", environment="production")
    replayed.verify(auto_token, action="refund.create", arguments=ARGS)
    measure(
        "refuse a replayed permit", lambda i: replayed.verify(auto_token, action="refund.create", arguments=ARGS), n
    )
    huge = auto_token.replace(".", "." + "A" * (1 << 20), 1)
    measure("refuse a 1 MB token", lambda i: mem.verify(huge, action="refund.create", arguments=ARGS), n)
    forged = auto_token[:-8] + "AAAAAAAA"
    measure("refuse a bad signature", lambda i: mem.verify(forged, action="refund.create", arguments=ARGS), n)


if __name__ == "__main__":
    main()
