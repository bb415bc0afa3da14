"""Policy decision latency: the WASM host against Cedar (cedarpy) and Rego (regopy), plus cold start.

    .venv/bin/python bench/policy_bench.py [--n 3000]

Each policy has N rules `action actI.* and amount <= I -> allow`; the request matches only the
last rule, so every engine looks at every rule (first-match engines are at their worst). Peers are
skipped when not installed (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guard_mcp._config import GuardConfig, GuardSection
from guard_mcp._keys import generate_key_pair
from guard_mcp._models import ActionBundle, Actor, BlastRadius, Category, Effect, Reversibility, Sensitivity
from guard_mcp._policy import PolicyEngine, bundle_bytes, compile_policy, sign_bundle, signature_path
from guard_mcp._policy._decision import encode_request, request_dict
from guard_mcp._state import StateDir

SIZES = (10, 100, 1000)


def _stats(samples: list[float]) -> str:
    samples.sort()
    median = statistics.median(samples) * 1e6
    p99 = samples[int(len(samples) * 0.99) - 1] * 1e6
    return f"median {median:8.1f} µs   p99 {p99:8.1f} µs"


def _time(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(200, n)):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _source(n: int) -> str:
    rules = "\n".join(
        f"  - {{id: r{i}, match: {{action: 'act{i}.*'}}, when: {{arg: amount, le: {i}}}, effect: allow}}"
        for i in range(n)
    )
    return f"policy: bench\nversion: 1\nrules:\n{rules}\n"


def _request(n: int) -> ActionBundle:
    return ActionBundle(
        request_id="b",
        action=f"act{n - 1}.run",
        upstream="shop",
        tool="t",
        actor=Actor(principal="alice"),
        arguments={"amount": 0, "customer_id": "c-1", "note": "benchmark"},
        payload_hash="sha256:" + "0" * 64,
        category=Category.FINANCIAL,
        reversibility=Reversibility.NONE,
        blast_radius=BlastRadius.SINGLE,
        sensitivity=Sensitivity.CONFIDENTIAL,
        environment="bench",
    )


def _signed_engine(root: Path, n: int) -> tuple[PolicyEngine, GuardConfig]:
    key, _, public_pem = generate_key_pair()
    (root / "signer.pub.pem").write_bytes(public_pem)
    data = bundle_bytes(compile_policy(_source(n)))
    path = root / "bench.bundle.json"
    path.write_bytes(data)
    signature_path(path).write_text(sign_bundle(data, key))
    config = GuardConfig(guard=GuardSection(policy=str(path), trusted_policy_keys=[str(root / "signer.pub.pem")]))
    engine = PolicyEngine.from_config(config, StateDir(root / "state").ensure())
    assert engine.status == "loaded", engine.describe()
    return engine, config


def bench_wasm(n_rules: int, samples: int, root: Path) -> None:
    engine, _ = _signed_engine(root, n_rules)
    req = _request(n_rules)
    _, decision = engine.decide(req)
    assert decision.effect is Effect.ALLOW and decision.rule_id == f"r{n_rules - 1}", decision
    print(f"  wasm   {n_rules:5d} rules  decide(ActionBundle)  {_stats(_time(lambda: engine.decide(req), samples))}")
    serving = engine._serving
    assert serving is not None
    raw = encode_request(request_dict(req))
    evaluator = serving.evaluator
    print(
        f"  wasm   {n_rules:5d} rules  module call only      "
        f"{_stats(_time(lambda: evaluator.decide_raw(raw), samples))}"
    )
    inst = evaluator._inst
    assert inst is not None
    evaluator.decide_raw(raw)
    used = evaluator.fuel - inst.store.get_fuel()
    print(f"  wasm   {n_rules:5d} rules  fuel per decision     {used:,} (budget {evaluator.fuel:,})")


def bench_cedar(n_rules: int, samples: int) -> None:
    try:
        import cedarpy
    except ImportError:
        print("  cedar  (cedarpy not installed)")
        return
    text = "\n".join(
        f'permit(principal, action == Action::"act{i}", resource) when {{ context.amount <= {i} }};'
        for i in range(n_rules)
    )
    policies = cedarpy.PolicySet.from_str(text)
    entities = cedarpy.Entities.from_json_str("[]")
    request = {
        "principal": 'User::"alice"',
        "action": f'Action::"act{n_rules - 1}"',
        "resource": 'Order::"o1"',
        "context": {"amount": 0, "customer_id": "c-1", "note": "benchmark"},
    }
    assert cedarpy.is_authorized(request, policies, entities).allowed
    print(
        f"  cedar  {n_rules:5d} rules  is_authorized         "
        f"{_stats(_time(lambda: cedarpy.is_authorized(request, policies, entities), samples))}"
    )


def bench_rego(n_rules: int, samples: int) -> None:
    try:
        import regopy
    except ImportError:
        print("  rego   (regopy not installed)")
        return
    body = "\n".join(
        f'allow if {{\n  startswith(input.action, "act{i}.")\n  input.amount <= {i}\n}}' for i in range(n_rules)
    )
    rego = regopy.Interpreter()
    rego.add_module("guard", f"package guard\nimport rego.v1\ndefault allow := false\n{body}\n")
    request = {"action": f"act{n_rules - 1}.run", "amount": 0, "customer_id": "c-1", "note": "benchmark"}

    def decide() -> Any:
        rego.set_input(request)
        return rego.query("data.guard.allow")

    assert "true" in str(decide())
    print(f"  rego   {n_rules:5d} rules  set_input + query     {_stats(_time(decide, max(50, samples // 20)))}")


_COLD = """
import sys, time
t0 = time.perf_counter()
from guard_mcp._config import GuardConfig, GuardSection
from guard_mcp._policy import PolicyEngine
from guard_mcp._state import StateDir
t1 = time.perf_counter()
cfg = GuardConfig(guard=GuardSection(policy=sys.argv[1], trusted_policy_keys=[sys.argv[2]]))
engine = PolicyEngine.from_config(cfg, StateDir(__import__("pathlib").Path(sys.argv[3])).ensure())
t2 = time.perf_counter()
assert engine.status == "loaded"
print(f"{(t1 - t0) * 1e3:.1f} {(t2 - t1) * 1e3:.1f}")
"""


def bench_cold_start(root: Path) -> None:
    _signed_engine(root, 100)
    args = [str(root / "bench.bundle.json"), str(root / "signer.pub.pem")]
    for label, state in (("no module cache (compile)", root / "fresh"), ("module cache on disk", root / "state")):
        runs = []
        for i in range(5):
            s = state if label.startswith("module") else state.with_name(f"fresh{i}")
            out = subprocess.run(
                [sys.executable, "-c", _COLD, *args, str(s)], capture_output=True, text=True, check=True
            ).stdout.split()
            runs.append((float(out[0]), float(out[1])))
        imp = statistics.median(r[0] for r in runs)
        load = statistics.median(r[1] for r in runs)
        print(f"  cold start, {label:26s} load+verify+instantiate {load:6.1f} ms   (imports {imp:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000, help="decisions timed per case")
    args = parser.parse_args()
    print(f"policy decision latency, {args.n} decisions per case, python {sys.version.split()[0]}")
    for n_rules in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            bench_wasm(n_rules, args.n, Path(tmp))
        bench_cedar(n_rules, args.n)
        bench_rego(n_rules, args.n)
    print("cold start (fresh process, 100-rule signed bundle; median of 5)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_cold_start(Path(tmp))
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
    print(f"(bench/policy_bench.py {digest})")


if __name__ == "__main__":
    main()
