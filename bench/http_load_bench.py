"""Streamable HTTP under load: many concurrent clients calling `echo`, bare pass-through vs the guard.

    bare   `Server.streamable_http_app` pass-through (uvicorn) → echo upstream (stdio)
    guard  `guard-mcp serve --transport http` (full pipeline, read-only echo allowed by the tier
           defaults, durable audit, `synchronous: full`) → echo upstream (stdio)

Every target is a real process on loopback. One load process opens `--clients` sessions per target
(each its own HTTP client), and each session calls `echo` back to back for `--seconds`; targets take
turns, twice each (forward, then reverse order). It reports calls/s, median and p99 latency, and for
the guard the audit commits per call (each one fsync of the WAL), counted inside the guard by
`bench/_counted.py` over the measured window only. `--guard NAME=DIR` adds a guard served from
another checkout (DIR on PYTHONPATH), to compare builds in one run.

    .venv/bin/python bench/http_load_bench.py [--clients 32] [--seconds 5] [--mode legacy|auto]
                                              [--guard NAME=DIR ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _report import percentile  # noqa: E402
from http_bench import ECHO, GUARD_CONFIG, TOKENS, _call, _free_port, _ready, client, guard_token  # noqa: E402


@contextlib.contextmanager
def servers(work: Path, guards: dict[str, Path]) -> Iterator[dict[str, dict[str, Any]]]:
    config = work / "upstreams.yaml"
    config.write_text(GUARD_CONFIG)
    targets: dict[str, dict[str, Any]] = {}
    port = _free_port()
    targets["bare"] = {
        "url": f"http://127.0.0.1:{port}/mcp",
        "tool": "echo",
        "proc": subprocess.Popen(
            [sys.executable, str(BENCH / "_baselines.py"), "bare-http", str(port), "--", *ECHO],
            env={**os.environ, "PYTHONPATH": str(BENCH.parent)},
        ),
    }
    for name, root in guards.items():
        port, counts = _free_port(), work / f"{name}.counts.json"
        TOKENS[f"http://127.0.0.1:{port}/mcp"] = guard_token(config, work / f"{name}-state", str(root))
        targets[name] = {
            "url": f"http://127.0.0.1:{port}/mcp",
            "tool": "echo__echo",
            "counts": counts,
            "proc": subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "_counted.py"),
                    str(counts),
                    "serve",
                    "--transport",
                    "http",
                    "--port",
                    str(port),
                    "--config",
                    str(config),
                    "--state-dir",
                    str(work / f"{name}-state"),
                ],
                env={**os.environ, "PYTHONPATH": str(root)},
                stderr=subprocess.DEVNULL,
            ),
        }
    try:
        yield targets
    finally:
        for t in targets.values():
            t["proc"].terminate()
        for t in targets.values():
            try:
                t["proc"].wait(10)
            except subprocess.TimeoutExpired:
                t["proc"].kill()


def _read_counts(path: Path) -> dict[str, int]:
    try:
        got: dict[str, int] = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet
        return {"snap": 0}
    return got


async def _counts(target: dict[str, Any]) -> dict[str, int] | None:
    """Ask the guard for its commit counts (SIGUSR1) and wait for the new snapshot."""
    path: Path | None = target.get("counts")
    if path is None:
        return None
    before = _read_counts(path)["snap"]
    target["proc"].send_signal(signal.SIGUSR1)
    with anyio.fail_after(10):
        while (got := _read_counts(path))["snap"] <= before:  # noqa: ASYNC110 - another process writes it
            await anyio.sleep(0.01)
    return got


async def _load(target: dict[str, Any], sessions: list[Any], seconds: float) -> tuple[list[float], float]:
    samples: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(c: Any) -> None:
        while time.perf_counter() < deadline:
            samples.append(await _call(c, target["tool"]))

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in sessions:
            tg.start_soon(one, c)
    return samples, time.perf_counter() - start


async def measure(args: argparse.Namespace, targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for t in targets.values():
        await _ready(t["url"], t["tool"])
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        sessions = {
            name: [await stack.enter_async_context(client(t["url"], args.mode)) for _ in range(args.clients)]
            for name, t in targets.items()
        }
        for name, t in targets.items():  # warm-up: every session once, then a short burst
            for c in sessions[name]:
                await _call(c, t["tool"])
            await _load(t, sessions[name], 1.0)
        acc: dict[str, dict[str, Any]] = {n: {"samples": [], "secs": 0.0, "commits": 0, "rows": 0} for n in targets}
        names = list(targets)
        for round_no in range(2):
            for name in names if round_no == 0 else names[::-1]:
                t = targets[name]
                before = await _counts(t)
                samples, secs = await _load(t, sessions[name], args.seconds)
                after = await _counts(t)
                acc[name]["samples"] += samples
                acc[name]["secs"] += secs
                if before is not None and after is not None:
                    acc[name]["commits"] += after["commits"] - before["commits"]
                    acc[name]["rows"] += after["rows"] - before["rows"]
        for name, a in acc.items():
            ordered = sorted(a["samples"])
            row: dict[str, Any] = {
                "calls": len(ordered),
                "calls_per_s": round(len(ordered) / a["secs"], 1),
                "median_ms": round(statistics.median(ordered), 3),
                "p99_ms": round(percentile(ordered, 99), 3),
            }
            if name != "bare":
                row["commits_per_call"] = round(a["commits"] / len(ordered), 3)
                row["rows_per_commit"] = round(a["rows"] / max(a["commits"], 1), 2)
            out[name] = row
    return {
        "benchmark": "http_load",
        "clients": args.clients,
        "seconds": args.seconds,
        "mode": args.mode,
        "cpus": os.cpu_count(),
        "results": out,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="per target per round (two rounds)")
    parser.add_argument("--mode", choices=["legacy", "auto"], default="legacy")
    parser.add_argument(
        "--guard", action="append", default=[], metavar="NAME=DIR", help="also measure a guard served from checkout DIR"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    guards = {"guard": BENCH.parent}
    for spec in args.guard:
        name, _, root = spec.partition("=")
        if not name or not root or name == "bare":
            parser.error(f"bad --guard `{spec}`; write NAME=DIR")
        guards[name] = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="http-load-bench-") as tmp, servers(Path(tmp), guards) as targets:
        data = anyio.run(measure, args, targets)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(
        f"streamable HTTP under load: {data['clients']} concurrent clients ({data['mode']}), `echo` back to back, "
        f"2 x {data['seconds']:g} s per target, {data['cpus']} cpus"
    )
    print(f"{'target':<12} {'calls/s':>9} {'median ms':>10} {'p99 ms':>9} {'commits/call':>13} {'rows/commit':>12}")
    bare = data["results"].get("bare")
    for name, r in data["results"].items():
        print(
            f"{name:<12} {r['calls_per_s']:>9.1f} {r['median_ms']:>10.3f} {r['p99_ms']:>9.3f} "
            f"{r.get('commits_per_call', float('nan')):>13.3f} {r.get('rows_per_commit', float('nan')):>12.2f}"
        )
    for name, r in data["results"].items():
        if name != "bare" and bare:
            print(f"{name}/bare calls/s: {r['calls_per_s'] / bare['calls_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
