"""What tracing costs a guarded call: per-call latency with tracing off (no `OTEL_*` set: the no-op
tracer, the OpenTelemetry SDK never imported) and on (the SDK with a batching processor, spans exported
to nowhere, so the figure is the guard's and the SDK's cost, not a collector's), side by side.

Each mode runs in a process of its own (a process has one tracer provider), in alternating rounds, so
drift on a busy machine lands on both alike. The guard is the full pipeline (built-in tier defaults)
in front of an in-process echo upstream, with `audit.synchronous: normal` so that an fsync's
milliseconds do not hide the pipeline's own microseconds. Also printed: the cost of what the call
path adds with tracing off (the seven stage hooks and the metric updates), timed alone.

    .venv/bin/python bench/telemetry_bench.py [--calls 300] [--rounds 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from _report import percentile

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
guard:
  audit: {synchronous: normal}
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {action: echo.read, category: read, reversibility: full, blast_radius: single, sensitivity: public}
"""


async def _measure(calls: int, on: bool) -> list[float]:
    import anyio
    import mcp_types as types
    from mcp import Client
    from mcp.server import Server

    from guard_mcp._config import load_config
    from guard_mcp._server import open_guard
    from guard_mcp._state import StateDir

    if on:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        from guard_mcp._telemetry import _tracing

        class Nowhere(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Nowhere()))
        _tracing.enable(provider)

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="echo", input_schema={"type": "object", "properties": {"text": {"type": "string"}}})]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="pong")])

    upstream: Server[Any] = Server("echo", on_list_tools=list_tools, on_call_tool=call_tool)
    with tempfile.TemporaryDirectory() as tmp:
        state = StateDir(Path(tmp) / "state")
        config = load_config(text=CONFIG, environ={})
        async with open_guard(config, state, inprocess_upstreams={"echo": upstream}) as guard:
            assert guard.pipeline.tracing.on is on
            async with Client(guard.server) as client:
                with anyio.fail_after(30):
                    while True:  # the upstream connects in the background
                        if "echo__echo" in {t.name for t in (await client.list_tools()).tools}:
                            break
                        await anyio.sleep(0.02)
                meta = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
                for _ in range(max(20, calls // 10)):  # warm up: caches, the policy module, the first commit
                    await client.call_tool("echo__echo", {"text": "ping"}, meta=meta)
                samples = []
                for _ in range(calls):
                    started = time.perf_counter()
                    result = await client.call_tool("echo__echo", {"text": "ping"}, meta=meta)
                    samples.append((time.perf_counter() - started) * 1e6)
                    assert not result.is_error
    return samples


def worker(calls: int, mode: str) -> None:
    import anyio

    print(json.dumps(anyio.run(_measure, calls, mode == "on")))


def hooks_off() -> dict[str, float]:
    """Nanoseconds per call of what the call path adds with tracing off, timed without the call."""
    from guard_mcp._config import load_config
    from guard_mcp._results import deny_result
    from guard_mcp._telemetry import Metrics, Tracing

    tracing, metrics = Tracing(), Metrics(load_config(text=CONFIG, environ={}))
    result = deny_result("schema_violation", "x")
    meta: dict[str, Any] = {}

    def stages() -> None:
        with tracing.call():
            for _ in range(7):
                with tracing.stage("guard.x"):
                    pass
        tracing.carry(meta)

    def counted() -> None:
        metrics.call("echo__echo", result)
        metrics.decision_seconds.observe(0.0001)
        metrics.forwarded("echo", 0.001)

    n = 20000
    return {
        "stage_hooks_ns": min(timeit.repeat(stages, number=n, repeat=5)) / n * 1e9,
        "metric_updates_ns": min(timeit.repeat(counted, number=n, repeat=5)) / n * 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["off", "on"], help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        worker(opts.calls, opts.worker)
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    samples: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(opts.rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", mode, "--calls", str(opts.calls)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            samples[mode] += json.loads(out.strip().splitlines()[-1])
    stats = {}
    for mode, values in samples.items():
        ordered = sorted(values)
        stats[mode] = {
            "n": len(ordered),
            "median_us": round(statistics.median(ordered), 1),
            "p99_us": round(percentile(ordered, 99), 1),
        }
    hooks = {k: round(v, 1) for k, v in hooks_off().items()}
    if opts.json:
        print(json.dumps({"tracing": stats, "off_path": hooks}, indent=2))
        return
    off, on = stats["off"], stats["on"]
    print(f"guarded call, {off['n']} calls per mode in {opts.rounds} alternating rounds (audit.synchronous: normal)")
    print(f"{'':14}{'median':>12}{'p99':>12}")
    print(f"{'tracing off':14}{off['median_us']:>9.1f} µs{off['p99_us']:>9.1f} µs")
    print(f"{'tracing on':14}{on['median_us']:>9.1f} µs{on['p99_us']:>9.1f} µs")
    print(f"{'on - off':14}{on['median_us'] - off['median_us']:>9.1f} µs{on['p99_us'] - off['p99_us']:>9.1f} µs")
    print(f"tracing off: median {off['median_us']:.1f} µs  p99 {off['p99_us']:.1f} µs")
    print(f"tracing on: median {on['median_us']:.1f} µs  p99 {on['p99_us']:.1f} µs")
    print(
        f"off, the call path's hooks alone: stages + trace context {hooks['stage_hooks_ns']:.0f} ns, "
        f"metric updates {hooks['metric_updates_ns']:.0f} ns per call"
    )


if __name__ == "__main__":
    main()
