"""How long the operator commands take to start and answer: the wall time of one `guard-mcp` process,
from exec to exit, beside `python -c pass` (the interpreter alone) and `guard-mcp --help` (the command
line alone) measured in the same run.

    .venv/bin/python bench/startup_bench.py [--runs 15] [--state-dir DIR] [--against TREE] [--json]

Each round runs every command once, in turn, so a machine that gets busier slows them all alike; the
median and p99 of each are printed, and the ratio to `guard-mcp --help`. The commands read a state
directory the embedded demo has filled (a guard's keys, a 49-event audit log with its checkpoints,
usage against the demo's limits), made once with `guard-mcp demo` unless `--state-dir` names one.
`--against TREE` measures a second checkout of the package (another commit) in the same rounds,
alternating with this one, for a before/after in one run. Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# label -> the arguments after `guard-mcp` (`{state}` is the state directory)
COMMANDS: dict[str, list[str]] = {
    "guard-mcp --help": ["--help"],
    "audit verify": ["audit", "verify", "--state-dir", "{state}"],
    "audit tail": ["audit", "tail", "--state-dir", "{state}"],
    "keys list": ["keys", "list", "--state-dir", "{state}"],
    "limits": ["limits", "--state-dir", "{state}"],
    "approvals list": ["approvals", "list", "--state-dir", "{state}"],
    "audit --help": ["audit", "--help"],
    "audit verify --help": ["audit", "verify", "--help"],
    "keys --help": ["keys", "--help"],
    "approvals --help": ["approvals", "--help"],
    "serve --help": ["serve", "--help"],
    "policy --help": ["policy", "--help"],
}
BASELINE = "guard-mcp --help"


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GUARD_MCP_HOME", "PYTHONPATH")}
    env["PYTHONPATH"] = str(tree)
    return env


def _demo_state(tree: Path) -> Path:
    """A state directory with the demo's keys, audit log and usage (the demo says where it left it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "guard_mcp.cli", "demo"],
        capture_output=True,
        text=True,
        env=_env(tree),
        cwd=tempfile.gettempdir(),
        timeout=300,
        check=False,
    )
    found = re.search(r"^state directory: (\S+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        sys.exit(
            f"startup_bench: `guard-mcp demo` did not leave a state directory (exit {proc.returncode}): "
            f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:]}"
        )
    return Path(found[1])


def _time_once(argv: list[str], env: dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd, check=False)
    took = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        sys.exit(
            f"startup_bench: `{' '.join(argv)}` exited {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace').strip()[-300:]}"
        )
    return took * 1000


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds (each command runs once a round)")
    parser.add_argument("--state-dir", type=Path, default=None, help="a state directory to read (default: the demo's)")
    parser.add_argument("--against", type=Path, default=None, help="another checkout to measure in the same rounds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()

    trees = {"": ROOT} | ({f" [{opts.against}]": opts.against.resolve()} if opts.against else {})
    made = opts.state_dir is None
    state = _demo_state(ROOT) if opts.state_dir is None else opts.state_dir
    cwd = tempfile.mkdtemp(prefix="startup-bench-")  # no ./upstreams.yaml: the commands read the embedded demo
    runs: dict[str, list[str]] = {"python -c pass": [sys.executable, "-c", "pass"]}
    envs: dict[str, dict[str, str]] = {"python -c pass": _env(ROOT)}
    for label, args in COMMANDS.items():  # each command in every tree, one after the other
        for tag, tree in trees.items():
            runs[label + tag] = [sys.executable, "-m", "guard_mcp.cli", *(a.format(state=state) for a in args)]
            envs[label + tag] = _env(tree)
    times: dict[str, list[float]] = {label: [] for label in runs}
    try:
        for label in runs:  # once each, not counted: the bytecode caches are written, the files are cached
            _time_once(runs[label], envs[label], cwd)
        for _ in range(opts.runs):
            for label, argv in runs.items():
                times[label].append(_time_once(argv, envs[label], cwd))
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
        if made:
            shutil.rmtree(state, ignore_errors=True)

    results = {
        label: {"median_ms": round(statistics.median(t), 1), "p99_ms": round(_p99(t), 1), "min_ms": round(min(t), 1)}
        for label, t in times.items()
    }
    if opts.json:
        print(json.dumps({"runs": opts.runs, "results": results}, indent=2))
        return 0
    print(f"{opts.runs} rounds; each command once a round, in turn; load average {os.getloadavg()[0]:.1f}")
    for tag in trees:
        base = results[BASELINE + tag]["median_ms"]
        for label in ["python -c pass", *(name + tag for name in COMMANDS)]:
            r = results[label]
            ratio = "" if label.startswith("python") else f"  {r['median_ms'] / base:.2f}x {BASELINE}"
            print(
                f"  {label:<52} median {r['median_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                f"(min {r['min_ms']:.1f} ms){ratio}"
            )
    for tag in list(trees)[1:]:
        print(f"this checkout beside{tag} (medians):")
        for name in COMMANDS:
            here, there = results[name]["median_ms"], results[name + tag]["median_ms"]
            print(f"  {name:<28} {here:7.1f} ms here, {there:7.1f} ms there ({here / there:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
