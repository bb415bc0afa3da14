"""What a proxy costs the way desktop users run it: the official TypeScript SDK client over stdio →
proxy process → `@modelcontextprotocol/server-everything` (`echo`) over stdio, four targets side by
side in one run, timed by the client (`bench/ts_client.mjs`, `process.hrtime`).

    direct   TS client → server-everything
    bare     TS client → pass-through on the SDK's low-level Server (one upstream session held open,
             nothing else) → server-everything
    fastmcp  TS client → FastMCP proxy as its users write it: `create_proxy({"mcpServers": {...}})`
             mounted under a namespace, `run_async(transport="stdio")` → server-everything
    guard    TS client → `guard-mcp serve` with embedded-style defaults (a temporary upstreams.yaml:
             an action schema for `echo`, category read, so the tier defaults allow it; the full
             pipeline; the audit fsynced before each forward, `synchronous: full`) → server-everything

The TypeScript SDK and server-everything are installed from npm on first use into bench/.node
(`npm install --prefix`, pinned below); node and npm must be on PATH.

    .venv/bin/python bench/stdio_ts_bench.py [--calls 300] [--warmup 50] [--block 25]
                                             [--targets direct,bare,fastmcp,guard] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
NODE_PREFIX = BENCH / ".node"
NODE_MODULES = NODE_PREFIX / "node_modules"
PACKAGES = {"@modelcontextprotocol/sdk": "1.32.2", "@modelcontextprotocol/server-everything": "2026.8.31"}
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TARGETS = ("direct", "bare", "fastmcp", "guard")
TEXT = "ping"

sys.path.insert(0, str(BENCH))

from _baselines import FASTMCP_NAMESPACE, fastmcp_version  # noqa: E402
from _report import cpus, latency, print_latencies, versions  # noqa: E402

GUARD_CONFIG = """\
guard:
  environment: development
  principal: bench-agent
  approvals: {{wait: 20s, expire: 2h}}
  audit: {{redact: [password, token, api_key]}}
upstreams:
  everything:
    command: {node}
    args: [{everything}, stdio]
    tools:
      echo: {{action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public}}
"""


class Missing(Exception):
    """Something this benchmark needs is not on the machine; the message says how to get it."""


def node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        raise Missing(
            f"{missing} not found on PATH: this benchmark runs the TypeScript SDK client and "
            "server-everything; install Node.js 18 or later (Debian/Ubuntu: `apt-get install -y nodejs npm`)"
        )
    return node, npm


def _installed(package: str) -> str | None:
    try:
        return str(json.loads((NODE_MODULES / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_packages(npm: str) -> None:
    """Install the pinned npm packages into bench/.node unless they are there already."""
    if all(_installed(p) == v for p, v in PACKAGES.items()):
        return
    print(
        f"stdio_ts_bench: installing {', '.join(f'{p}@{v}' for p, v in PACKAGES.items())} into {NODE_PREFIX}",
        file=sys.stderr,
        flush=True,
    )
    NODE_PREFIX.mkdir(exist_ok=True)
    cmd = [
        npm,
        "install",
        "--prefix",
        str(NODE_PREFIX),
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        *(f"{p}@{v}" for p, v in PACKAGES.items()),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0 or not all(_installed(p) == v for p, v in PACKAGES.items()):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise Missing(f"`npm install --prefix {NODE_PREFIX}` failed (exit {proc.returncode}): {' / '.join(tail)}")


def target_specs(names: list[str], node: str, work: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """What the TS client spawns for each target, and why a target cannot run here."""
    upstream = [node, str(EVERYTHING), "stdio"]
    baselines = str(BENCH / "_baselines.py")
    unavailable: dict[str, str] = {}
    specs: list[dict[str, Any]] = []
    for name in names:
        if name == "direct":
            specs.append({"name": name, "command": node, "args": upstream[1:], "tool": "echo"})
        elif name == "bare":
            specs.append(
                {"name": name, "command": sys.executable, "args": [baselines, "bare", "--", *upstream], "tool": "echo"}
            )
        elif name == "fastmcp":
            if fastmcp_version() is None:
                unavailable[name] = "fastmcp is not installed; `.venv/bin/python -m pip install -e '.[bench]'`"
                continue
            specs.append(
                {
                    "name": name,
                    "command": sys.executable,
                    "args": [baselines, "fastmcp-config", "--", *upstream],
                    "tool": f"{FASTMCP_NAMESPACE}_echo",
                }
            )
        elif name == "guard":
            config = work / "upstreams.yaml"
            config.write_text(GUARD_CONFIG.format(node=json.dumps(node), everything=json.dumps(str(EVERYTHING))))
            specs.append(
                {
                    "name": name,
                    "command": sys.executable,
                    "args": [
                        "-m",
                        "guard_mcp.cli",
                        "serve",
                        "--config",
                        str(config),
                        "--state-dir",
                        str(work / "guard-state"),
                    ],
                    "tool": "everything__echo",
                    "env": {"PYTHONPATH": str(BENCH.parent)},
                }
            )
    return specs, unavailable


def measure(args: argparse.Namespace) -> dict[str, Any]:
    names = [n for n in args.targets.split(",") if n]
    node, npm = node_tools()
    ensure_packages(npm)
    with tempfile.TemporaryDirectory(prefix="stdio-ts-bench-") as tmp:
        work = Path(tmp)
        specs, unavailable = target_specs(names, node, work)
        spec_file = work / "spec.json"
        spec_file.write_text(
            json.dumps(
                {
                    "node_modules": str(NODE_MODULES),
                    "calls": args.calls,
                    "warmup": args.warmup,
                    "block": args.block,
                    "text": TEXT,
                    "targets": specs,
                }
            )
        )
        proc = subprocess.run(
            [node, str(BENCH / "ts_client.mjs"), str(spec_file)],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
    if proc.returncode != 0:
        raise Missing(f"the TypeScript client failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    results: dict[str, Any] = {}
    for name in names:
        raw = out["results"].get(name)
        if name in unavailable:
            results[name] = {"available": False, "reason": unavailable[name]}
        elif raw is None or "error" in raw or not raw.get("samples_ms"):
            results[name] = {"available": False, "reason": (raw or {}).get("error", "no samples")}
        else:
            results[name] = latency(raw["samples_ms"])
    return {
        "benchmark": "proxy_latency_ts_stdio",
        "client": f"@modelcontextprotocol/sdk {out['sdk']} (TypeScript)",
        "upstream": f"@modelcontextprotocol/server-everything {_installed('@modelcontextprotocol/server-everything')}",
        "calls": args.calls,
        "warmup": args.warmup,
        "block": args.block,
        "machine": {"python": platform.python_version(), "node": _node_version(node), "cpus": cpus()},
        "versions": versions(),
        "results": results,
        "ratios": ratios(results),
    }


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    def ok(name: str) -> bool:
        return bool(results.get(name, {}).get("available"))

    out: dict[str, Any] = {}
    for a, b in (("guard", "fastmcp"), ("guard", "bare"), ("fastmcp", "bare"), ("bare", "direct")):
        if ok(a) and ok(b):
            out[f"{a}/{b}"] = {k: round(results[a][f"{k}_ms"] / results[b][f"{k}_ms"], 3) for k in ("median", "p99")}
    if ok("guard") and ok("bare"):
        out["guard-bare_ms"] = {
            k: round(results["guard"][f"{k}_ms"] - results["bare"][f"{k}_ms"], 3) for k in ("median", "p99")
        }
    return out


def _node_version(node: str) -> str:
    return subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def print_table(data: dict[str, Any]) -> None:
    print(
        f"proxy latency, TypeScript client over stdio: `echo`, {data['calls']} calls per target after "
        f"{data['warmup']} warm-up, alternating blocks of {data['block']}"
    )
    print(
        f"client {data['client']}; upstream {data['upstream']}; node {data['machine']['node']}, python "
        f"{data['machine']['python']}, {data['machine']['cpus']} cpus; "
        + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v)
    )
    print()
    print_latencies(data["results"], width=10)
    print()
    for label, value in data["ratios"].items():
        unit = " ms" if label.endswith("_ms") else "x"
        print(f"{label.removesuffix('_ms'):<16} median {value['median']:>7.3f}{unit}   p99 {value['p99']:>7.3f}{unit}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="measured calls per target (default 300)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured calls per target first (default 50)")
    parser.add_argument("--block", type=int, default=25, help="calls per target before switching (default 25)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    unknown = sorted(set(args.targets.split(",")) - set(TARGETS))
    if unknown or args.calls < 1 or args.block < 1 or args.warmup < 0:
        parser.error(f"bad --targets {unknown} or counts; targets are {', '.join(TARGETS)}")
    try:
        data = measure(args)
    except Missing as exc:
        print(f"stdio_ts_bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
