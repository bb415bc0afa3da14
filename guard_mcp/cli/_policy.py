"""`guard-mcp policy …`: compile, sign, verify, test and explain policies.

    policy compile shop.policy.yaml -o shop.bundle.json
    policy sign shop.bundle.json --key policy-signer.pem        # writes shop.bundle.json.sig
    policy verify [shop.bundle.json]                             # exit 0 only if the guard would load it
    policy test shop.policy.yaml shop.cases.yaml                 # expected vs actual, exit 1 on mismatch
    policy explain shop.policy.yaml --upstream shop --tool refund --args '{"amount": 500}'

`test` and `explain` take a source (.yaml) or a compiled bundle (.json) and evaluate it in the
same sandbox the guard uses; they do not check signatures (that is `verify`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.text import Text

from guard_mcp._errors import ConfigError, GuardError, PolicyError, PolicyRefused
from guard_mcp.cli._common import Env, common_options, fail, print_json, print_table
from guard_mcp.cli._record import record

if TYPE_CHECKING:
    from guard_mcp._models import Decision, Risk

__all__ = ["policy"]

_EXPECT_KEYS = ("effect", "reason", "rule", "approvers", "step_up", "tier", "score", "approval_ttl", "permit_ttl")
_REQUEST_KEYS = {
    "name",
    "upstream",
    "tool",
    "action",
    "actor",
    "category",
    "reversibility",
    "blast_radius",
    "sensitivity",
    "arguments",
    "expect",
}


@click.group()
@common_options
@click.pass_context
def policy(ctx: click.Context, env: Env) -> None:
    """Compile, sign, verify, test and explain policies."""
    ctx.obj = env  # `policy --config X verify`: the group's options count for its sub-commands


def _default_bundle_path(src: Path) -> Path:
    name = src.name
    for suffix in (".policy.yaml", ".policy.yml", ".yaml", ".yml"):
        if name.endswith(suffix):
            return src.with_name(name[: -len(suffix)] + ".bundle.json")
    return src.with_name(name + ".bundle.json")


@policy.command("compile")
@click.argument("source", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Bundle to write (default: NAME.bundle.json beside the source).",
)
@common_options
def compile_(env: Env, source: str, out: str | None) -> None:
    """Check a policy source and write its bundle (canonical JSON)."""
    from guard_mcp._policy import bundle_bytes, compile_policy_file

    bundle = compile_policy_file(Path(source))
    data = bundle_bytes(bundle)
    target = Path(out) if out else _default_bundle_path(Path(source))
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"cannot write bundle `{target}`: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    label = f"{bundle['policy']}@{bundle['version']}"
    if env.as_json:
        print_json({"policy": label, "rules": len(bundle["rules"]), "bundle": str(target), "sha256": digest})
        return
    env.console.print(
        f"compiled {label}: {len(bundle['rules'])} rules -> {target} (sha256 {digest[:16]}…)", highlight=False
    )
    env.console.print(f"next: guard-mcp policy sign {target} --key policy-signer.pem", highlight=False)


@policy.command()
@click.argument("bundle", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="The policy signer's private key (PEM), e.g. from `guard-mcp keys init --policy-signer`.",
)
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False), default=None, help="Signature file to write (default: BUNDLE.sig)."
)
@common_options
def sign(env: Env, bundle: str, key_path: str, out: str | None) -> None:
    """Sign a bundle: a detached ES256 JWS over its SHA-256, written next to it."""
    from guard_mcp._policy import inspect_bundle, key_id, load_private_key, read_bundle, sign_bundle, signature_path

    data = read_bundle(Path(bundle))
    info = inspect_bundle(data, where=f"`{bundle}`")
    key = load_private_key(Path(key_path))
    token = sign_bundle(data, key)
    target = Path(out) if out else signature_path(Path(bundle))
    try:
        target.write_text(token + "\n", encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"cannot write signature `{target}`: {exc.strerror}") from None
    kid = key_id(key.public_key())
    if env.as_json:
        print_json({"policy": f"{info.name}@{info.version}", "kid": kid, "signature": str(target)})
        return
    env.console.print(f"signed {info.name}@{info.version} with key {kid} -> {target}", highlight=False)


def _guard_config(env: Env) -> Any:
    """The config as `verify` and `accept` need it: only the `guard:` section decides whether a bundle
    would load, so a `${VAR}` unset in an upstream's entry (a key the guard's own shell lacks) does not
    stop them; one unset in `guard:` still does, as it would stop the guard."""
    from guard_mcp._config import DEFAULT_CONFIG, load_config
    from guard_mcp.cli._common import embedded_config_path

    try:
        return env.config()
    except ConfigError as exc:
        if "which is not set in the guard's environment" not in str(exc):
            raise
        first = exc
    path = Path(env.config_path or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else embedded_config_path()))
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # it parsed once already: only a variable was missing
    if not isinstance(raw, dict) or not isinstance(raw.get("guard", {}), dict):
        raise first
    text = yaml.safe_dump({"guard": raw.get("guard") or {}})
    config = load_config(text=text, builtins={"GUARD_STATE_DIR": str(env.state().root)})
    return config.model_copy(update={"source": path.resolve()})


def _bundle_path(config: Any, bundle: str | None) -> Path:
    if bundle is not None:
        return Path(bundle)
    if config.guard.policy is None:
        raise ConfigError("no `guard.policy` in the config: pass the BUNDLE")
    return Path(config.resolve(config.guard.policy))


@policy.command()
@click.argument("bundle", type=click.Path(dir_okay=False), required=False)
@common_options
def verify(env: Env, bundle: str | None) -> None:
    """Check a bundle as the guard would (signature, trusted key, rollback, loads). Exit 0 only if it would serve."""
    from guard_mcp._policy import load_verified

    config = _guard_config(env)
    path = _bundle_path(config, bundle)
    try:
        verified, _ = load_verified(path, config, env.state())
    except PolicyRefused as exc:
        if env.as_json:
            print_json({"ok": False, "bundle": str(path), "reason": exc.reason, "message": str(exc)})
            raise SystemExit(1) from None
        fail(f"refused ({exc.reason}): {exc}", code=1)
    except PolicyError as exc:
        fail(f"refused (bad_trusted_key): {exc}", code=1)
    if env.as_json:
        print_json(
            {
                "ok": True,
                "bundle": str(path),
                "policy": verified.label,
                "sha256": verified.sha256,
                "kid": verified.kid,
                "rules": verified.rules,
            }
        )
        return
    env.console.print(
        f"ok: {verified.label} ({verified.rules} rules, sha256 {verified.sha256[:16]}…) signed by "
        f"{verified.kid}; the guard would load it",
        highlight=False,
    )


@policy.command()
@click.argument("bundle", type=click.Path(dir_okay=False), required=False)
@common_options
def accept(env: Env, bundle: str | None) -> None:
    """Switch this guard to the policy in BUNDLE, though it names another policy than the one served.

    The guard refuses a bundle of another name on its own (`policy_switched`): any policy the same key
    ever signed would otherwise do. Rollback and signature checks still apply; a running guard picks
    the bundle up within a second.
    """
    from guard_mcp._policy import VersionLedger, load_verified

    config = _guard_config(env)
    path = _bundle_path(config, bundle)
    state = env.state()
    try:
        verified, _ = load_verified(path, config, state, switching=True)
        ledger = VersionLedger(state)
        before = ledger.serving()
        ledger.record(verified)
    except PolicyRefused as exc:
        fail(f"refused ({exc.reason}): {exc}", code=1)
    except PolicyError as exc:
        fail(f"refused (bad_trusted_key): {exc}", code=1)
    if env.as_json:
        print_json({"ok": True, "bundle": str(path), "policy": verified.label, "was": before})
    else:
        env.console.print(
            f"accepted {verified.label} (was {before or 'nothing'}); the guard serves it from its next load",
            highlight=False,
        )
    record(
        env,
        "policy.accepted",
        {"policy": verified.label, "was": before, "sha256": verified.sha256, "kid": verified.kid, "path": str(path)},
        done=f"accepted {verified.label}",
    )


# ------------------------------------------------------------------------------------ test / explain


def _load_for_evaluation(env: Env, path: Path) -> Any:
    return _load_bundle(env, path)[0]


def _load_bundle(env: Env, path: Path) -> tuple[Any, dict[str, Any]]:
    """The evaluator for a source or bundle, and the bundle itself (to explain its conditions)."""
    from guard_mcp._policy import WasmEvaluator, bundle_bytes, compile_policy_file, inspect_bundle, read_bundle

    if path.suffix == ".json":
        data = read_bundle(path)
        inspect_bundle(data, where=f"`{path}`")
    else:
        data = bundle_bytes(compile_policy_file(path))
    evaluator = WasmEvaluator(data, hashlib.sha256(data).hexdigest(), state=env.state())
    return evaluator, json.loads(data)


def _enum(kind: Any, value: Any, key: str, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = " ".join(m.value for m in kind)
        raise ConfigError(f"{where}: `{key}` is {value!r}; use one of {allowed}") from None


def _request(env: Env, spec: dict[str, Any], where: str) -> dict[str, Any]:
    from guard_mcp._models import ActionSchema, BlastRadius, Category, Reversibility, Sensitivity  # not for `--help`

    unknown = set(spec) - _REQUEST_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key `{sorted(unknown)[0]}`; use {', '.join(sorted(_REQUEST_KEYS))}")
    upstream, tool = str(spec.get("upstream", "")), str(spec.get("tool", ""))
    if not (upstream and tool) and "action" not in spec:
        raise ConfigError(f"{where}: give `upstream` and `tool` (schema from --config) or an `action`")
    principal = "local-user"
    schema = ActionSchema(action=str(spec.get("action", f"{upstream}.{tool}")), declared=False)
    if upstream and tool:
        try:
            config = env.config()
            schema = config.action_schema(upstream, tool)
            principal = config.guard.principal
        except ConfigError:
            schema = ActionSchema.unknown(upstream, tool)
    arguments = spec.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ConfigError(f"{where}: `arguments` must be a mapping")
    return {
        "action": str(spec.get("action", schema.action)),
        "upstream": upstream,
        "tool": tool,
        "actor": str(spec.get("actor", principal)),
        "category": _enum(Category, spec.get("category", schema.category), "category", where).value,
        "reversibility": _enum(
            Reversibility, spec.get("reversibility", schema.reversibility), "reversibility", where
        ).value,
        "blast_radius": _enum(BlastRadius, spec.get("blast_radius", schema.blast_radius), "blast_radius", where).value,
        "sensitivity": _enum(Sensitivity, spec.get("sensitivity", schema.sensitivity), "sensitivity", where).value,
        "arguments": arguments,
    }


def _evaluate(evaluator: Any, request: dict[str, Any], *, full_trace: bool) -> tuple[Risk, Decision]:
    from guard_mcp._policy import encode_request, parse_decision, with_bundle_facts

    raw = evaluator.decide_raw(encode_request(request), full_trace=full_trace)
    risk, decision = parse_decision(raw, policy=evaluator.label, sha256=evaluator.sha256)
    return risk, with_bundle_facts(decision, evaluator.data, evaluator.sha256)


def _actual(risk: Risk, decision: Decision, key: str) -> Any:
    return {
        "effect": decision.effect.value,
        "reason": decision.reason,
        "rule": decision.rule_id,
        "approvers": decision.approvers,
        "step_up": decision.step_up,
        "tier": risk.tier.value,
        "score": risk.score,
        "approval_ttl": decision.approval_ttl,
        "permit_ttl": decision.permit_ttl,
    }[key]


def _details(bundle: dict[str, Any], decision: Decision, arguments: dict[str, Any]) -> dict[str, str]:
    """For each rule whose condition did not hold: the test that decided it, with value and operand."""
    from guard_mcp._policy import explain_condition

    whens = {rule["id"]: rule.get("when") for rule in bundle.get("rules", [])}
    out: dict[str, str] = {}
    for entry in decision.trace:
        if entry.matched or entry.rule_id not in whens or not entry.why.startswith("condition"):
            continue
        text = explain_condition(whens[entry.rule_id], arguments)
        if text:
            out[entry.rule_id] = text
    return out


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


@policy.command("test")
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False, exists=True))
@click.argument("cases_path", metavar="CASES", type=click.Path(dir_okay=False, exists=True))
@common_options
def test_(env: Env, policy_path: str, cases_path: str) -> None:
    """Run example requests (YAML) against a policy; exit 1 if any decision differs from the expected one."""
    try:
        doc = yaml.safe_load(Path(cases_path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise ConfigError(f"`{cases_path}`{line}: invalid YAML: {problem}; fix the syntax and retry") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"cannot read cases `{cases_path}`: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None
    cases = doc.get("cases") if isinstance(doc, dict) else None
    if not isinstance(cases, list) or not cases:
        raise ConfigError(f"`{cases_path}` needs a non-empty `cases:` list")
    evaluator = _load_for_evaluation(env, Path(policy_path))
    results: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        where = f"{cases_path}: case #{i + 1}"
        if not isinstance(case, dict):
            raise ConfigError(f"{where} must be a mapping")
        name = str(case.get("name", f"case {i + 1}"))
        expect = case.get("expect")
        if not isinstance(expect, dict) or "effect" not in expect:
            raise ConfigError(f"{where} (`{name}`) needs `expect: {{effect: ...}}`")
        bad = set(expect) - set(_EXPECT_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown expectation `{sorted(bad)[0]}`; use {', '.join(_EXPECT_KEYS)}")
        risk, decision = _evaluate(evaluator, _request(env, case, where), full_trace=False)
        actual = {k: _actual(risk, decision, k) for k in expect}
        ok = all(actual[k] == expect[k] for k in expect)
        results.append({"name": name, "ok": ok, "expected": expect, "actual": actual})
    failed = [r for r in results if not r["ok"]]
    if env.as_json:
        print_json(
            {"policy": evaluator.label, "passed": len(results) - len(failed), "failed": len(failed), "cases": results}
        )
    else:
        print_table(
            env,
            ["result", "case", "expected", "actual"],
            [
                [
                    Text("PASS", style="green") if r["ok"] else Text("FAIL", style="bold red"),
                    r["name"],
                    _fmt(r["expected"]),
                    _fmt(r["actual"]),
                ]
                for r in results
            ],
            title=f"policy {evaluator.label}",
        )
        summary = f"{len(results) - len(failed)}/{len(results)} passed"
        env.console.print(f"[bold red]{summary}[/]" if failed else f"[green]{summary}[/]")
    if failed:
        raise SystemExit(1)


@policy.command()
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False, exists=True))
@click.option("--upstream", default="", help="Upstream name (with --tool, takes the action schema from --config).")
@click.option("--tool", default="", help="Tool name on that upstream.")
@click.option("--action", default=None, help="Action name (overrides the schema's).")
@click.option("--category", default=None, help="Category (overrides the schema's).")
@click.option("--actor", default=None, help="Principal making the call.")
@click.option("--args", "args_json", default="{}", help="Tool arguments as a JSON object.")
@common_options
def explain(
    env: Env,
    policy_path: str,
    upstream: str,
    tool: str,
    action: str | None,
    category: str | None,
    actor: str | None,
    args_json: str,
) -> None:
    """Show how a policy decides one request: every rule, whether it matched and why."""
    try:
        arguments = json.loads(args_json)
    except ValueError as exc:
        raise ConfigError(f"`--args` is not JSON ({exc}); write e.g. --args '{{\"amount\": 50}}'") from None
    spec: dict[str, Any] = {"upstream": upstream, "tool": tool, "arguments": arguments}
    for key, value in (("action", action), ("category", category), ("actor", actor)):
        if value is not None:
            spec[key] = value
    request = _request(env, spec, "request")
    evaluator, bundle = _load_bundle(env, Path(policy_path))
    try:
        risk, decision = _evaluate(evaluator, request, full_trace=True)
    except GuardError as exc:
        fail(f"the policy could not decide (a live guard would deny with `policy_engine_error`): {exc}", code=1)
    details = _details(bundle, decision, arguments if isinstance(arguments, dict) else {})
    if env.as_json:
        print_json(
            {
                "request": request,
                "risk": risk.model_dump(mode="json"),
                "decision": decision.model_dump(mode="json"),
                "details": details,
            }
        )
        return
    c = env.console
    factors = ", ".join(f"{k} {v}" for k, v in risk.factors.items())
    c.print(
        f"request: {request['action']} ({request['upstream']}/{request['tool']}) by {request['actor']}, "
        f"arguments {json.dumps(arguments)}",
        highlight=False,
    )
    c.print(f"risk: {risk.score} {risk.tier.value} ({factors})", highlight=False)
    print_table(
        env,
        ["rule", "matched", "why"],
        [
            [
                entry.rule_id,
                Text("yes", style="green") if entry.matched else "no",
                entry.why if entry.rule_id not in details else f"{entry.why}: {details[entry.rule_id]}",
            ]
            for entry in decision.trace
        ],
        title=f"policy {decision.policy}",
    )
    from guard_mcp._policy import explanation

    effect, _, rest = explanation(decision).partition(" ")
    c.print(f"decision: [bold]{effect}[/] {rest}", highlight=False)
