"""What a proxy costs: median and p99 latency of a trivial `echo` call, four ways, in one run.

    direct   client → echo upstream
    bare     client → pass-through proxy on the SDK's low-level Server → echo upstream
    fastmcp  client → FastMCP's proxy (create_proxy, one reused backend session) → echo upstream
    guard    client → guard-mcp (full pipeline, no policy file: built-in tier defaults) → echo upstream;
             the audit commit before each forward is fsynced (`audit.synchronous: full`, the default)
    guard-normal
             the same guard with `audit.synchronous: normal`: the commit survives a crash of the
             guard process but is not fsynced, so a power loss may take the newest events
    guard-limited
             the default guard with a usage limit on the echo tool (`limits: [{window: 1h, calls:
             10000000}]`): each call also reserves its use in the usage table (its own fsynced
             transaction); compared with `guard`

The echo upstream is always a real stdio subprocess (`python -m guard_mcp.demo.echo`), one per
target. Topology `inproc` (default) runs each proxy in this process and drives it with
`mcp.Client(server)`; `stdio` runs each proxy as its own process too (client → proxy process →
upstream process), which is how desktop clients launch servers. Every target is opened first and
warmed up, then measured in alternating blocks (forward, then reverse order) so drift on a busy
machine lands on all of them alike.

    .venv/bin/python bench/proxy_bench.py [--calls 300] [--topology inproc|stdio] [--mode auto|legacy]
                                          [--targets direct,bare,fastmcp,guard] [--guard-config F] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baselines import fastmcp_version, open_bare_proxy, open_fastmcp_proxy
from _report import cpus, latency, print_latencies, versions

BASELINES = Path(__file__).resolve().parent / "_baselines.py"
ECHO = StdioServerParameters(command=sys.executable, args=["-m", "guard_mcp.demo.echo"])
PAYLOAD = {"text": "ping"}
TARGETS = ("direct", "bare", "fastmcp", "guard", "guard-normal", "guard-limited")

GUARD_CONFIG = """\
guard:
  environment: development
upstreams:
  echo:
    command: ${PYTHON}
    args: [-m, guard_mcp.demo.echo]
    tools:
      echo:
        action: echo.read
        category: read
        reversibility: full
        blast_radius: single
        sensitivity: public
"""


class Unavailable(Exception):
    """A target that cannot run here; the table says why instead of failing the whole run."""


@dataclass
class Opened:
    client: Client
    tool: str
    topology: str


@dataclass
class Row:
    name: str
    topology: str = ""
    reason: str | None = None
    samples: list[float] = field(default_factory=list)  # milliseconds

    def stats(self) -> dict[str, Any]:
        if self.reason is not None or not self.samples:
            return {"available": False, "reason": self.reason or "no samples", "topology": self.topology}
        return {"available": True, "topology": self.topology, **latency(self.samples)}


# ------------------------------------------------------------------------------------------ targets

Opener = Callable[[contextlib.AsyncExitStack, "Settings"], Awaitable[Opened]]


@dataclass
class Settings:
    topology: str
    mode: str
    work: Path
    guard_config: str = GUARD_CONFIG


async def _client(stack: contextlib.AsyncExitStack, target: Any, settings: Settings) -> Client:
    return await stack.enter_async_context(Client(target, mode=settings.mode))  # type: ignore[arg-type]


async def _wait_for_tool(client: Client, name: str, deadline: float = 60.0) -> None:
    """Upstreams connect in the background; wait until the proxied tool is listed."""
    with anyio.fail_after(deadline):
        while True:
            if name in {t.name for t in (await client.list_tools()).tools}:
                return
            await anyio.sleep(0.05)


async def open_direct(stack: contextlib.AsyncExitStack, settings: Settings) -> Opened:
    return Opened(await _client(stack, ECHO, settings), "echo", "client → echo process (stdio)")


def _baseline_process(kind: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(BASELINES), kind, "--", ECHO.command, *ECHO.args])


async def open_bare(stack: contextlib.AsyncExitStack, settings: Settings) -> Opened:
    if settings.topology == "stdio":
        client = await _client(stack, _baseline_process("bare"), settings)
        return Opened(client, "echo", "client → bare proxy process → echo process (stdio, stdio)")
    server = await stack.enter_async_context(open_bare_proxy(ECHO))
    return Opened(await _client(stack, server, settings), "echo", "client → bare proxy (in-process) → echo (stdio)")


async def open_fastmcp(stack: contextlib.AsyncExitStack, settings: Settings) -> Opened:
    if fastmcp_version() is None:
        raise Unavailable("fastmcp is not installed; `.venv/bin/python -m pip install fastmcp` (keeps mcp 2.x)")
    if settings.topology == "stdio":
        client = await _client(stack, _baseline_process("fastmcp"), settings)
        return Opened(client, "echo", "client → FastMCP proxy process → echo process (stdio, stdio)")
    server = await stack.enter_async_context(open_fastmcp_proxy(ECHO))
    return Opened(await _client(stack, server, settings), "echo", "client → FastMCP proxy (in-process) → echo (stdio)")


def _with_synchronous(config_text: str, synchronous: str, limited: bool = False) -> str:
    doc = yaml.safe_load(config_text) or {}
    doc.setdefault("guard", {}).setdefault("audit", {})["synchronous"] = synchronous
    if limited:  # a limit no benchmark reaches: only the cost of counting is measured
        for upstream in (doc.get("upstreams") or {}).values():
            for tool in (upstream.get("tools") or {}).values():
                tool["limits"] = [{"window": "1h", "calls": 10_000_000}]
    return str(yaml.safe_dump(doc, sort_keys=False))


async def open_guard_target(
    stack: contextlib.AsyncExitStack, settings: Settings, synchronous: str = "full", limited: bool = False
) -> Opened:
    work = settings.work / f"guard-{synchronous}{'-limited' if limited else ''}"
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "upstreams.yaml"
    config_path.write_text(_with_synchronous(settings.guard_config, synchronous, limited))
    state_dir = work / "guard-state"
    if settings.topology == "stdio":
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "guard_mcp.cli", "serve", "--config", str(config_path), "--state-dir", str(state_dir)],
        )
        client = await _client(stack, params, settings)
        topology = f"client → guard-mcp serve process → echo process (stdio, stdio; audit {synchronous})"
    else:
        try:
            from guard_mcp._config import load_config
            from guard_mcp._server import open_guard
            from guard_mcp._state import StateDir
        except ImportError as exc:
            raise Unavailable(f"guard_mcp._server.open_guard cannot be imported: {exc}") from None
        guard = await stack.enter_async_context(open_guard(load_config(config_path), StateDir(state_dir)))
        client = await _client(stack, guard.server, settings)
        topology = f"client → guard-mcp (in-process) → echo (stdio; audit {synchronous})"
    await _wait_for_tool(client, "echo__echo")
    return Opened(client, "echo__echo", topology)


OPENERS: dict[str, Opener] = {
    "direct": open_direct,
    "bare": open_bare,
    "fastmcp": open_fastmcp,
    "guard": open_guard_target,
    "guard-normal": lambda stack, settings: open_guard_target(stack, settings, "normal"),
    "guard-limited": lambda stack, settings: open_guard_target(stack, settings, "full", limited=True),
}


# ---------------------------------------------------------------------------------------- measuring


async def _call(opened: Opened) -> float:
    start = time.perf_counter_ns()
    result = await opened.client.call_tool(opened.tool, PAYLOAD)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    text = getattr(result.content[0], "text", None) if result.content else None
    if result.is_error or text != PAYLOAD["text"]:
        raise Unavailable(f"the echo call did not come back intact: {text!r}")
    return elapsed


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@contextlib.asynccontextmanager
async def open_targets(names: list[str], settings: Settings) -> AsyncIterator[tuple[dict[str, Opened], list[Row]]]:
    rows = [Row(name) for name in names]
    opened: dict[str, Opened] = {}
    async with contextlib.AsyncExitStack() as stack:
        for row in rows:
            inner = contextlib.AsyncExitStack()
            await stack.enter_async_context(inner)
            try:
                # No deadline around opening: a cancel scope cannot wrap contexts that outlive it.
                target = await OPENERS[row.name](inner, settings)
                with anyio.fail_after(30):
                    await _call(target)
            except Unavailable as exc:
                row.reason = str(exc)
                await inner.aclose()
                continue
            except Exception as exc:  # a target that breaks is reported, the others still run
                leaf = _leaf(exc)
                row.reason = f"{type(leaf).__name__}: {leaf}".splitlines()[0][:200]
                if settings.topology == "stdio":
                    row.reason += " (the proxy process's stderr above says why)"
                with contextlib.suppress(Exception):
                    await inner.aclose()
                continue
            opened[row.name] = target
            row.topology = target.topology
        yield opened, rows


async def measure(names: list[str], settings: Settings, calls: int, warmup: int, block: int) -> list[Row]:
    async with open_targets(names, settings) as (opened, rows):
        by_name = {row.name: row for row in rows}
        live = [name for name in names if name in opened]
        for name in live:
            for _ in range(warmup):
                await _call(opened[name])
        done = dict.fromkeys(live, 0)
        round_no = 0
        while any(done[n] < calls for n in live):
            order = live if round_no % 2 == 0 else live[::-1]
            for name in order:
                for _ in range(min(block, calls - done[name])):
                    by_name[name].samples.append(await _call(opened[name]))
                    done[name] += 1
            round_no += 1
        return rows


# ------------------------------------------------------------------------------------------ reporting


def _ratio(stats: dict[str, dict[str, Any]], a: str, b: str, key: str) -> float | None:
    if not (stats.get(a, {}).get("available") and stats.get(b, {}).get("available")):
        return None
    return round(stats[a][key] / stats[b][key], 3)


def report(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    stats = {row.name: row.stats() for row in rows}
    ratios = {
        f"{a}/{b}": {"median": _ratio(stats, a, b, "median_ms"), "p99": _ratio(stats, a, b, "p99_ms")}
        for a, b in (
            ("guard", "bare"),
            ("guard", "fastmcp"),
            ("guard-normal", "bare"),
            ("guard-normal", "fastmcp"),
            ("guard-limited", "guard"),
            ("fastmcp", "bare"),
            ("bare", "direct"),
        )
    }
    return {
        "benchmark": "proxy_latency",
        "tool_call": {"tool": "echo", "arguments": PAYLOAD},
        "topology": args.topology,
        "client_mode": args.mode,
        "calls": args.calls,
        "warmup": args.warmup,
        "block": args.block,
        "guard_config": str(args.guard_config) if args.guard_config else "built-in (no policy file: tier defaults)",
        "machine": {"python": platform.python_version(), "cpus": cpus(), "platform": platform.platform()},
        "versions": versions(),
        "results": stats,
        "ratios": ratios,
    }


def _fmt(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def print_table(data: dict[str, Any]) -> None:
    era = "2025-11-25 handshake" if data["client_mode"] == "legacy" else "2026-07-28 (no handshake)"
    print(
        f"proxy latency: `echo` call, {data['calls']} calls per target after {data['warmup']} warm-up, "
        f"alternating blocks of {data['block']}"
    )
    print(
        f"topology: {data['topology']}; client era: {era}; python {data['machine']['python']}, "
        f"{data['machine']['cpus']} cpus; " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v)
    )
    print()
    print_latencies(data["results"], width=12, column=("path", "topology"))
    print()
    for label, ratio in data["ratios"].items():
        print(f"{label:<20} median {_fmt(ratio['median'], 'x'):>7}   p99 {_fmt(ratio['p99'], 'x'):>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="measured calls per target (default 300)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured calls per target first (default 50)")
    parser.add_argument("--block", type=int, default=25, help="calls per target before switching (default 25)")
    parser.add_argument("--topology", choices=["inproc", "stdio"], default="inproc")
    parser.add_argument(
        "--mode",
        choices=["auto", "legacy"],
        default="auto",
        help="client era: auto speaks 2026-07-28 to SDK 2.x servers, legacy forces the handshake",
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument(
        "--guard-config",
        type=Path,
        default=None,
        help="upstreams.yaml for the guard row instead of the built-in one (needs upstream `echo`)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    names = [n for n in args.targets.split(",") if n]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or args.calls < 1 or args.block < 1 or args.warmup < 0:
        parser.error(f"bad --targets {unknown} or counts; targets are {', '.join(TARGETS)}")
    if args.guard_config is not None and not args.guard_config.is_file():
        parser.error(f"--guard-config `{args.guard_config}` does not exist")
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        guard_config = args.guard_config.read_text() if args.guard_config else GUARD_CONFIG
        settings = Settings(topology=args.topology, mode=args.mode, work=Path(tmp), guard_config=guard_config)
        rows = anyio.run(measure, names, settings, args.calls, args.warmup, args.block)
    data = report(rows, args)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)


if __name__ == "__main__":
    main()
