"""What the guard costs over streamable HTTP: one Python SDK client, sequential `echo` calls, in both
protocol eras, against a bare pass-through and against `guard-mcp serve --transport http`.

    bare   client → `Server.streamable_http_app` of a pass-through on the SDK's low-level Server
           (uvicorn, 127.0.0.1) → echo upstream (stdio)
    guard  client → `guard-mcp serve --transport http` (full pipeline, tier defaults allow the read-only
           echo, durable audit) → echo upstream (stdio)

Both servers are real processes on loopback, started once; each era opens one client per target, warms
up, and measures in alternating blocks. Besides the client's latency it reports each server process's
CPU time per call (utime + stime from /proc), so time spent waiting shows as latency without CPU.

What it found first: `guard-mcp serve --transport http` left Nagle's algorithm on for every
connection (its listening socket, from `socket.create_server`, has proto 0, and asyncio sets
TCP_NODELAY only when proto says TCP). A 2026-07-28 call is answered as plain JSON, which uvicorn
writes as two segments, head then body; the body waited for the client's ACK of the head, which
Linux delays by up to 40 ms: head→result took 43 ms at the client, 3 ms with TCP_NODELAY. The
handshake era's answer is an SSE stream whose head is written as soon as the request arrives and its
result event only once the call has run, so little of the wait showed there.
`_transports._no_delay` now sets TCP_NODELAY on each accepted connection.

    .venv/bin/python bench/http_bench.py [--calls 100] [--warmup 20] [--block 25] [--modes legacy,auto] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
from _report import percentile
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

BENCH = Path(__file__).resolve().parent
ECHO = [sys.executable, "-m", "guard_mcp.demo.echo"]
PAYLOAD = {"text": "ping"}
GUARD_CONFIG = """\
guard:
  environment: development
upstreams:
  echo:
    command: ${PYTHON}
    args: [-m, guard_mcp.demo.echo]
    tools:
      echo: {action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# url -> the bearer token that guard requires (every HTTP client of a guard sends one, loopback included)
TOKENS: dict[str, str] = {}


def guard_token(config: Path, state_dir: Path, pythonpath: str) -> str:
    """The bearer token a guard serving from `state_dir` requires (made now when there is none yet)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "guard_mcp.cli",
            "serve",
            "--print-token",
            "--json",
            "--config",
            str(config),
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    token: str = json.loads(proc.stdout)["token"]
    return token


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children: the upstream's own work is not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def servers(work: Path) -> Iterator[dict[str, tuple[str, subprocess.Popen[bytes]]]]:
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    config = work / "upstreams.yaml"
    config.write_text(GUARD_CONFIG)
    bare_port, guard_port = _free_port(), _free_port()
    TOKENS[f"http://127.0.0.1:{guard_port}/mcp"] = guard_token(config, work / "guard-state", str(BENCH.parent))
    procs = {
        "bare": (
            f"http://127.0.0.1:{bare_port}/mcp",
            subprocess.Popen(
                [sys.executable, str(BENCH / "_baselines.py"), "bare-http", str(bare_port), "--", *ECHO], env=env
            ),
        ),
        "guard": (
            f"http://127.0.0.1:{guard_port}/mcp",
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "guard_mcp.cli",
                    "serve",
                    "--transport",
                    "http",
                    "--port",
                    str(guard_port),
                    "--config",
                    str(config),
                    "--state-dir",
                    str(work / "guard-state"),
                ],
                env=env,
                stderr=subprocess.DEVNULL,
            ),
        ),
    }
    try:
        yield procs
    finally:
        for _, proc in procs.values():
            proc.terminate()
        for _, proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.asynccontextmanager
async def client(url: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(
            timeout=30, headers={"Authorization": f"Bearer {TOKENS[url]}"} if url in TOKENS else {}
        ) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as c,
    ):  # type: ignore[arg-type]
        yield c


async def _ready(url: str, tool: str) -> None:
    with anyio.fail_after(60):
        while True:
            with contextlib.suppress(Exception):
                async with client(url, "legacy") as c:
                    if tool in {t.name for t in (await c.list_tools()).tools}:
                        return
            await anyio.sleep(0.2)


async def _call(c: Client, tool: str) -> float:
    start = time.perf_counter_ns()
    result = await c.call_tool(tool, PAYLOAD)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if result.is_error or getattr(result.content[0], "text", None) != PAYLOAD["text"]:
        raise RuntimeError(f"the echo call did not come back intact: {result.content!r}"[:300])
    return elapsed


async def measure(args: argparse.Namespace, procs: dict[str, tuple[str, subprocess.Popen[bytes]]]) -> dict[str, Any]:
    tools = {"bare": "echo", "guard": "echo__echo"}
    for name, (url, _) in procs.items():
        await _ready(url, tools[name])
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        async with contextlib.AsyncExitStack() as stack:
            clients = {name: await stack.enter_async_context(client(url, mode)) for name, (url, _) in procs.items()}
            for name, c in clients.items():
                for _ in range(args.warmup):
                    await _call(c, tools[name])
            samples: dict[str, list[float]] = {name: [] for name in clients}
            cpu = dict.fromkeys(clients, 0.0)
            names = list(clients)
            for round_no in range(math.ceil(args.calls / args.block)):
                for name in names if round_no % 2 == 0 else names[::-1]:
                    pid = procs[name][1].pid
                    before = _cpu_seconds(pid)
                    for _ in range(min(args.block, args.calls - len(samples[name]))):
                        samples[name].append(await _call(clients[name], tools[name]))
                    cpu[name] += _cpu_seconds(pid) - before
            for name, got in samples.items():
                ordered = sorted(got)
                results[f"{name} ({mode})"] = {
                    "target": name,
                    "mode": mode,
                    "n": len(ordered),
                    "median_ms": round(statistics.median(ordered), 3),
                    "p99_ms": round(percentile(ordered, 99), 3),
                    "mean_ms": round(statistics.fmean(ordered), 3),
                    "server_cpu_ms_per_call": round(cpu[name] * 1000 / len(ordered), 2),
                }
    gaps = {}
    for mode in args.modes.split(","):
        g, b = results.get(f"guard ({mode})"), results.get(f"bare ({mode})")
        if g and b:
            gaps[mode] = {
                "guard-bare_median_ms": round(g["median_ms"] - b["median_ms"], 3),
                "guard/bare_median": round(g["median_ms"] / b["median_ms"], 3),
            }
    return {
        "benchmark": "http_latency",
        "calls": args.calls,
        "warmup": args.warmup,
        "block": args.block,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
        "gaps": gaps,
    }


def print_table(data: dict[str, Any]) -> None:
    print(
        f"streamable HTTP latency: `echo`, one Python SDK client, {data['calls']} sequential calls per target "
        f"after {data['warmup']} warm-up; server CPU is the server process's own (utime + stime)"
    )
    print()
    print(f"{'target':<20} {'median ms':>10} {'p99 ms':>9} {'mean ms':>9} {'server CPU ms/call':>19}")
    for label, r in data["results"].items():
        print(
            f"{label:<20} {r['median_ms']:>10.3f} {r['p99_ms']:>9.3f} {r['mean_ms']:>9.3f} "
            f"{r['server_cpu_ms_per_call']:>19.2f}"
        )
    print()
    for mode, gap in data["gaps"].items():
        print(f"guard - bare ({mode}): median {gap['guard-bare_median_ms']:.3f} ms ({gap['guard/bare_median']:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument(
        "--modes", default="legacy,auto", help="client eras: legacy (2025-11-25 handshake), auto (2026-07-28)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if sys.platform != "linux":
        print("http_bench: reads server CPU time from /proc; run it on Linux", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp, servers(Path(tmp)) as procs:
        data = anyio.run(measure, args, procs)
    print(json.dumps(data, indent=2) if args.json else "", end="")
    if not args.json:
        print_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
