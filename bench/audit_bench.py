"""Audit log benchmark: durable append rate (1 and 32 writers), append_many(3) latency, verify time.

    .venv/bin/python bench/audit_bench.py [--quick] [--synchronous full|normal]

Prints numbers; asserts nothing. The database lives in a temporary directory on the same disk as
the working directory (fsync cost is the disk's).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from guard_mcp._audit import AuditLog, EventIn, load_audit_key, verify_log
from guard_mcp._audit._store import connect_writer, ensure_audit_key
from guard_mcp._audit._writer import Request, Row, Writer
from guard_mcp._canonical import canonical_json
from guard_mcp._clock import SystemClock
from guard_mcp._config import AuditConfig
from guard_mcp._keys import KeyStore
from guard_mcp._state import StateDir


def _events(i: int) -> list[EventIn]:
    base = {"request_id": f"req-{i:08d}", "actor": "alice", "upstream": "shop", "tool": "shop__refund"}
    return [
        EventIn(
            "call.received",
            **base,
            data={"arguments": {"customer_id": "cus_123", "order_id": f"ord_{i}", "amount": 42, "currency": "EUR"}},
        ),
        EventIn(
            "call.decided",
            **base,
            data={
                "effect": "allow",
                "reason": "within_limit",
                "rule_id": "small-refunds",
                "policy": "shop@3",
                "risk": {"score": 35, "tier": "MEDIUM"},
            },
        ),
        EventIn("permit.issued", **base, data={"jti": f"jti-{i}", "exp": 1_800_000_300, "policy": "shop@3"}),
    ]


async def _open(root: Path, synchronous: str) -> tuple[AuditLog, StateDir]:
    state = StateDir(root).ensure()
    clock = SystemClock()
    keys = KeyStore(state.keys, clock)
    keys.ensure()
    log = await AuditLog.open(state, clock=clock, keys=keys, config=AuditConfig(synchronous=synchronous))  # type: ignore[arg-type]
    return log, state


async def append_rate(root: Path, writers: int, per_writer: int, synchronous: str) -> float:
    log, _ = await _open(root, synchronous)
    result = _events(0)[2]

    async def writer() -> None:
        for _ in range(per_writer):
            await log.append(result)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(writers):
            tg.start_soon(writer)
    elapsed = time.perf_counter() - start
    await log.close()
    return writers * per_writer / elapsed


async def append_many_latency(root: Path, samples: int, synchronous: str) -> list[float]:
    log, _ = await _open(root, synchronous)
    out = []
    for i in range(samples):
        events = _events(i)
        t = time.perf_counter()
        await log.append_many(events)
        out.append(time.perf_counter() - t)
    await log.close()
    return out


def bench_rows(first: int, n: int, ts: int) -> list[Row]:
    """Rows as `AuditLog` prepares them: the data canonicalised once per template, ids spliced in
    (an ASCII id in place of another keeps the text canonical)."""
    templates = [(e.type, canonical_json(dict(e.data)).decode()) for e in _events(0)]
    rows = []
    for i in range(first, first + n):
        call, k = divmod(i, 3)
        kind, data = templates[k]
        rid = f"req-{call:08d}"
        data = data.replace("ord_0", f"ord_{call}").replace("jti-0", f"jti-{call}")
        rows.append(Row(ts, kind, rid, "alice", "shop", "shop__refund", data))
    return rows


def build_log(root: Path, events: int) -> StateDir:
    """A log of `events` events written by the real writer code, in big transactions (fast to build)."""
    state = StateDir(root).ensure()
    clock = SystemClock()
    keys = KeyStore(state.keys, clock)
    keys.ensure()
    key = ensure_audit_key(state)
    writer = Writer(
        connect_writer(state.database, synchronous="normal"),
        hmac_key=key,
        signer=keys.current,
        clock=clock,
        checkpoint_every=1000,
        head_file=root / "audit.head.json",
        where=state.database,
    )
    done = 0
    while done < events:
        n = min(20_000, events - done)
        writer.commit_now(Request(bench_rows(done, n, int(clock.now() * 1000))))
        done += n
    writer.commit_now(Request((), checkpoint=True))
    writer.close()
    return state


def verify_time(root: Path, events: int) -> tuple[float, float, str]:
    t = time.perf_counter()
    state = build_log(root, events)
    built = time.perf_counter() - t
    keys = KeyStore(state.keys, SystemClock()).public_keys(include_retired=True)
    t = time.perf_counter()
    report = verify_log(
        state.database, hmac_key=load_audit_key(state), public_keys=keys, head_file=root / "audit.head.json"
    )
    elapsed = time.perf_counter() - t
    assert report.ok, report.message
    return elapsed, built, report.message


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="Smaller runs (no 1,000,000-event verify).")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        base = Path(tmp)
        sync = args.synchronous
        print(f"synchronous={sync}")
        rate1 = anyio.run(append_rate, base / "w1", 1, int(3000 * scale), sync)
        print(f"append, 1 writer:    {rate1:9,.0f} durable events/s")
        rate32 = anyio.run(append_rate, base / "w32", 32, int(500 * scale), sync)
        print(f"append, 32 writers:  {rate32:9,.0f} durable events/s")
        lat = sorted(anyio.run(append_many_latency, base / "lat", int(3000 * scale), sync))
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"append_many(3), one caller: median {statistics.median(lat) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms")
        for n in (100_000,) if args.quick else (100_000, 1_000_000):
            elapsed, built, _ = verify_time(base / f"v{n}", n)
            print(f"verify {n:>9,} events: {elapsed:6.2f} s  ({n / elapsed:,.0f} events/s; built in {built:.1f} s)")


if __name__ == "__main__":
    main()
