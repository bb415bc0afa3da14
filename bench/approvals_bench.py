"""Cost of the approval store, and how fast a waiting call sees a decision made in another process.

    .venv/bin/python bench/approvals_bench.py [--n 500] [--rounds 10]

Prints median and p99 per store operation in microseconds (SQLite in WAL mode, synchronous=FULL,
on the local disk of the temporary directory), then the wake-up latency of `wait_for_decision`
when `guard-mcp approvals approve` runs as a separate process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from guard_mcp._approvals import ApprovalStore, wait_for_decision
from guard_mcp._canonical import payload_hash
from guard_mcp._clock import SystemClock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._models import (
    ActionBundle,
    Actor,
    BlastRadius,
    Category,
    Decision,
    Effect,
    Reversibility,
    Risk,
    Sensitivity,
    Tier,
)
from guard_mcp._state import StateDir

DECISION = Decision(
    effect=Effect.APPROVE, rule_id="r", reason="approval_required", policy="shop@1", approvers="finance"
)


def refund(i: int) -> ActionBundle:
    args = {"order_id": f"ord_{i}", "customer_id": "cus_456", "amount": 350.0, "currency": "EUR", "reason": "x"}
    return ActionBundle(
        request_id=f"req-{i}",
        action="refund.create",
        upstream="shop",
        tool="refund",
        actor=Actor(principal="bench", session="s1"),
        arguments=args,
        payload_hash=payload_hash(args),
        resource="customer_id",
        category=Category.FINANCIAL,
        reversibility=Reversibility.NONE,
        blast_radius=BlastRadius.SINGLE,
        sensitivity=Sensitivity.CONFIDENTIAL,
        risk=Risk(score=55, tier=Tier.MEDIUM),
        environment="bench",
    )


def report(label: str, samples: list[float], unit: str = "us") -> None:
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{label:<52} median {statistics.median(samples):9.1f} {unit}   p99 {p99:9.1f} {unit}")


async def measure(label: str, op: Callable[[int], Awaitable[object]], n: int) -> None:
    samples = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await op(i)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    report(label, samples)


async def store_ops(state: StateDir, n: int) -> None:
    store = await ApprovalStore.open(state, clock=SystemClock(), config=ApprovalsConfig())
    bundles = [refund(i) for i in range(n)]
    ids: list[str] = []

    async def create(i: int) -> None:
        ids.append((await store.create(bundles[i], DECISION, tool="shop__refund")).id)

    await measure("create", create, n)
    await measure("get", lambda i: store.get(ids[i]), n)
    await measure(
        "find_reusable (miss, on every approve-rule call)",
        lambda i: store.find_reusable(tool="shop__refund", payload_hash=bundles[i].payload_hash, principal="bench"),
        n,
    )
    await measure(
        "grants.check (miss, on every approve-rule call)",
        lambda i: store.grants.check(bundles[i], DECISION, "shop__refund", "s1"),
        n,
    )
    await measure("decide (approve)", lambda i: store.decide(ids[i], approve=True, approver="local:ops"), n)
    await measure("consume", lambda i: store.consume(ids[i], payload_hash=bundles[i].payload_hash), n)
    await store.close()


async def wake(state: StateDir, config: Path, rounds: int) -> None:
    store = await ApprovalStore.open(state, clock=SystemClock(), config=ApprovalsConfig())
    samples = []
    for i in range(rounds):
        approval = await store.create(refund(10_000 + i), DECISION, tool="shop__refund")
        code = (
            "import sys, time; from guard_mcp.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    print(time.time(), file=sys.stderr)\n"
        )
        cmd = [
            sys.executable,
            "-c",
            code,
            "approvals",
            "approve",
            approval.id,
            "--config",
            str(config),
            "--state-dir",
            str(state.root),
        ]
        async with anyio.create_task_group() as tg:
            proc = await anyio.open_process(cmd)
            result = await wait_for_decision(store, approval.id, timeout=30, poll=0.25)
            woke = time.time()
            await proc.wait()
            assert proc.stderr is not None
            decided_after = float((await proc.stderr.receive()).decode().split()[-1])
            tg.cancel_scope.cancel()
        assert result.state.value == "approved"
        # `decided_after` is taken after the CLI committed and closed, so this slightly understates.
        samples.append(max(0.0, woke - decided_after) * 1000)
    await store.close()
    report("cross-process wake-up after `approvals approve`", samples, "ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = StateDir(Path(tmp) / "state").ensure()
        config = Path(tmp) / "upstreams.yaml"
        config.write_text("upstreams: {}\n")
        anyio.run(store_ops, state, opts.n)
        anyio.run(wake, state, config, opts.rounds)


if __name__ == "__main__":
    main()
