"""The policy source (YAML a person reviews) and its compilation into a bundle (canonical JSON).

Compilation is where mistakes are caught: every error names the rule and says what to write
instead, and a bundle that compiled is one the WASM module accepts. The bundle keeps only what
the evaluator needs, in a fixed shape:

    {"format": 1, "policy": NAME, "version": N, "tier_defaults": BOOL, "default": OUTCOME,
     "rules": [{"id": ID, "match": {...}, "when": COND | null, "then": OUTCOME}, ...]}
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from guard_mcp._canonical import canonical_json
from guard_mcp._config import parse_duration
from guard_mcp._errors import PolicyError
from guard_mcp._models import Category, Effect, Tier
from guard_mcp.verify import MAX_PERMIT_TTL

__all__ = ["BUNDLE_FORMAT", "bundle_bytes", "compile_policy", "compile_policy_file", "outcome"]

BUNDLE_FORMAT = 1
DEFAULT_PERMIT_TTL = 300
MAX_DEPTH = 16
# Integers JSON carries exactly in every implementation (IEEE-754 doubles).
MAX_SAFE_INT = 2**53 - 1

OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "prefix", "under", "exists")
_REGEX_OPERATORS = {"regex", "matches", "match", "re", "pattern", "like"}
_REGEX_CHARS = set("^$[](){}+?|\\")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# libyaml's loader when PyYAML was built with it: same safe subset, several times faster.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DEFAULT_REASONS = {"allow": "policy_allow", "deny": "policy_deny", "approve": "approval_required"}

_TOP_KEYS = {"policy", "version", "description", "default", "tier_defaults", "rules"}
_RULE_KEYS = {
    "id",
    "description",
    "match",
    "when",
    "effect",
    "reason",
    "approvers",
    "approval_ttl",
    "permit_ttl",
    "step_up",
    "approval",
}
_OUTCOME_KEYS = {"effect", "reason", "approvers", "approval_ttl", "permit_ttl", "step_up", "approval"}
# `approval: authenticated`: only a signed-in approver (the CLI, the console) may approve, never an
# answer given in the agent's own client. In the bundle only when set, so other bundles keep their bytes.
APPROVAL_KINDS = ("authenticated",)
_MATCH_GLOBS = ("action", "upstream", "tool", "actor", "group")  # group: any of the caller's groups
_MATCH_KEYS = {*_MATCH_GLOBS, "category", "tier", "score"}


class _Fail(Exception):
    """Internal: a problem found while compiling one rule; turned into a PolicyError with context."""


def _show(value: Any) -> str:
    return "`" + (repr(value) if not isinstance(value, str) else value) + "`"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "mapping"


def _number(value: Any, op: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Fail(f"`{op}` needs a number, got {_show(value)} ({_type_name(value)}); write e.g. `{op}: 100`")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Fail(f"`{op}` needs a finite number, got {_show(value)}")
    if isinstance(value, int) and abs(value) > MAX_SAFE_INT:
        raise _Fail(f"`{op}` value {_show(value)} is beyond ±2^53; JSON cannot carry it exactly")
    return value


def _scalar(value: Any, op: str) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number(value, op)
    if value is None or isinstance(value, bool | str):
        return value
    raise _Fail(f"`{op}` needs a string, number, boolean or null, got a {_type_name(value)}")


def _scalar_kind(value: Any) -> str:
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else _type_name(value)


def _test(spec: dict[str, Any]) -> dict[str, Any]:
    arg = spec.get("arg")
    if not isinstance(arg, str) or not arg or any(not part for part in arg.split(".")):
        raise _Fail(f"`arg` must name an argument field like `amount` or `customer.id`, got {_show(arg)}")
    ops = [k for k in spec if k != "arg"]
    for k in ops:
        if k in _REGEX_OPERATORS:
            raise _Fail(
                f"regular expressions are not allowed in conditions (`{k}` on `{arg}`); use `prefix`, `in` or `eq`"
            )
        if k not in OPERATORS:
            raise _Fail(f"unknown operator `{k}` on `{arg}`; use one of {' '.join(OPERATORS)}")
    if len(ops) != 1:
        raise _Fail(f"a test on `{arg}` takes exactly one operator, got {len(ops)}; combine tests with `all`")
    op = ops[0]
    value = spec[op]
    if op in ("lt", "le", "gt", "ge"):
        value = _number(value, op)
    elif op in ("eq", "ne"):
        value = _scalar(value, op)
    elif op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise _Fail(f"`{op}` on `{arg}` needs a non-empty list, got {_show(value)}")
        items = [_scalar(v, op) for v in value]
        kinds = {_scalar_kind(v) for v in items}
        if len(kinds) > 1:
            raise _Fail(f"`{op}` on `{arg}` mixes {' and '.join(sorted(kinds))} values; use one type per list")
        value = items
    elif op == "prefix":
        if not isinstance(value, str):
            raise _Fail(f"`prefix` on `{arg}` needs a string, got {_show(value)} ({_type_name(value)})")
    elif op == "under":
        value = _under_root(value, arg)
    elif op == "exists" and not isinstance(value, bool):
        raise _Fail(f"`exists` on `{arg}` takes true or false, got {_show(value)}")
    return {"arg": arg.split("."), "op": op, "value": value}


def normalise_path(path: str) -> str | None:
    """An absolute POSIX path with `.`, empty segments and `..` resolved (`..` at the root stays there),
    several leading slashes made one; None for a relative path or one with a NUL. The WASM evaluator's
    `normalise_path` is the same function, and the one that decides."""
    if not path.startswith("/") or "\0" in path:
        return None
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def _under_root(value: Any, arg: str) -> str:
    if not isinstance(value, str):
        raise _Fail(f"`under` on `{arg}` needs a directory path, got {_show(value)} ({_type_name(value)})")
    if ".." in value.split("/"):
        raise _Fail(f"`under` on `{arg}` takes a path without `..`, got {_show(value)}; write the directory itself")
    root = normalise_path(value)
    if root is None:
        raise _Fail(f"`under` on `{arg}` needs an absolute path like `/srv/data`, got {_show(value)}")
    return root


def _cond(spec: Any, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise _Fail(f"conditions nest deeper than {MAX_DEPTH} levels; flatten them with `all` / `any`")
    if not isinstance(spec, dict) or not spec:
        raise _Fail(f"a condition must be a mapping like `{{arg: amount, le: 100}}`, got {_show(spec)}")
    combinators = [k for k in ("all", "any", "not") if k in spec]
    if combinators:
        if len(spec) != 1:
            raise _Fail(f"`{combinators[0]}` must stand alone in its mapping; nest other tests inside it")
        key = combinators[0]
        if key == "not":
            return {"not": _cond(spec["not"], depth + 1)}
        items = spec[key]
        if not isinstance(items, list) or not items:
            raise _Fail(f"`{key}` takes a non-empty list of conditions")
        return {key: [_cond(item, depth + 1) for item in items]}
    if "arg" not in spec:
        keys = ", ".join(f"`{k}`" for k in spec)
        raise _Fail(f"condition {keys} names no `arg`; write `{{arg: FIELD, OP: VALUE}}` or use all/any/not")
    return _test(spec)


def _globs(key: str, value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _Fail(f"`match.{key}` is an empty list; leave the key out to match anything")
    for item in items:
        if not isinstance(item, str) or not item or any(c.isspace() for c in item):
            raise _Fail(f"`match.{key}` takes names or `*` globs, got {_show(item)}")
        if _REGEX_CHARS & set(item):
            raise _Fail(
                f"`match.{key}` value {_show(item)} looks like a regular expression; "
                "only `*` globs are allowed (e.g. `refund.*`)"
            )
    return list(items)


def _enum_list(key: str, value: Any, allowed: list[str]) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _Fail(f"`match.{key}` is an empty list; leave the key out to match anything")
    for item in items:
        if item not in allowed:
            raise _Fail(f"`match.{key}` value {_show(item)} is not one of {' '.join(allowed)}")
    return list(items)


def _match(spec: Any) -> dict[str, Any]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise _Fail(f"`match` must be a mapping like `{{action: refund.*}}`, got {_show(spec)}")
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key in _MATCH_GLOBS:
            out[key] = _globs(key, value)
        elif key == "category":
            out[key] = _enum_list(key, value, [c.value for c in Category])
        elif key == "tier":
            out[key] = _enum_list(key, value, [t.value for t in Tier])
        elif key == "score":
            if not isinstance(value, dict) or not value or set(value) - {"min", "max"}:
                raise _Fail("`match.score` takes `{min: N, max: N}` (inclusive, 0-100)")
            for bound in ("min", "max"):
                if bound in value:
                    n = value[bound]
                    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 100:
                        raise _Fail(f"`match.score.{bound}` must be a whole number from 0 to 100, got {_show(n)}")
                    out[f"score_{bound}"] = n
        else:
            raise _Fail(f"unknown key `match.{key}`; use {', '.join(sorted(_MATCH_KEYS))}")
    return out


def _seconds(value: Any, key: str) -> int:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _Fail(f"`{key}`: {exc}") from None
    return math.ceil(seconds)


def outcome(spec: dict[str, Any], *, default_reason: str | None = None) -> dict[str, Any]:
    """An effect with its reason, approvers, TTLs and step-up, checked for consistency."""
    effect = spec.get("effect")
    if effect not in _DEFAULT_REASONS:
        raise _Fail(f"`effect` must be allow, deny or approve, got {_show(effect)}")
    reason = spec.get("reason", default_reason or _DEFAULT_REASONS[effect])
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise _Fail(f"`reason` must be a snake_case code like `amount_exceeds_policy_limit`, got {_show(reason)}")
    if effect != Effect.APPROVE.value:
        for key in ("approvers", "approval_ttl", "step_up", "approval"):
            if key in spec:
                raise _Fail(f"`{key}` applies to `effect: approve` only, not `{effect}`")
    if effect == Effect.DENY.value and "permit_ttl" in spec:
        raise _Fail("`permit_ttl` does not apply to `effect: deny`: a denied call gets no permit")
    approvers = spec.get("approvers")
    if approvers is not None and (not isinstance(approvers, str) or not _GROUP.fullmatch(approvers)):
        raise _Fail(f"`approvers` must name one approver group like `support_leads`, got {_show(approvers)}")
    approval_ttl = _seconds(spec["approval_ttl"], "approval_ttl") if "approval_ttl" in spec else None
    permit_ttl = _seconds(spec["permit_ttl"], "permit_ttl") if "permit_ttl" in spec else DEFAULT_PERMIT_TTL
    if permit_ttl > MAX_PERMIT_TTL:
        raise _Fail(
            f"`permit_ttl` of {permit_ttl}s is longer than an hour ({MAX_PERMIT_TTL}s), the most a permit "
            "lives; permits are meant to be short-lived"
        )
    step_up = spec.get("step_up", False)
    if not isinstance(step_up, bool):
        raise _Fail(f"`step_up` takes true or false, got {_show(step_up)}")
    approval = spec.get("approval")
    if approval is not None and approval not in APPROVAL_KINDS:
        raise _Fail(
            f"`approval` takes {' '.join(APPROVAL_KINDS)}, got {_show(approval)}; leave it out to let the "
            "agent's client approve a MEDIUM call in-band"
        )
    compiled = {
        "effect": effect,
        "reason": reason,
        "approvers": approvers,
        "approval_ttl": approval_ttl,
        "permit_ttl": permit_ttl,
        "step_up": step_up,
    }
    return compiled if approval is None else {**compiled, "approval": approval}


def _rule(spec: Any, index: int, seen: set[str], where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise PolicyError(f"{where}: rule #{index + 1} must be a mapping with `id`, `match` and `effect`")
    rid = spec.get("id")
    if rid is None:
        raise PolicyError(f"{where}: rule #{index + 1} has no `id`; give every rule a unique id like `refund-small`")
    if not isinstance(rid, str) or not _RULE_ID.fullmatch(rid):
        raise PolicyError(f"{where}: rule #{index + 1} id {_show(rid)} must be letters, digits, `-`, `_` or `.`")
    if rid in seen:
        raise PolicyError(f"{where}: rule id `{rid}` is used twice; rule ids must be unique")
    seen.add(rid)
    try:
        unknown = set(spec) - _RULE_KEYS
        if unknown:
            raise _Fail(f"unknown key `{sorted(unknown)[0]}`; rules take {', '.join(sorted(_RULE_KEYS))}")
        when = spec.get("when")
        return {
            "id": rid,
            "match": _match(spec.get("match")),
            "when": None if when is None else _cond(when, 0),
            "then": outcome({k: v for k, v in spec.items() if k in _OUTCOME_KEYS}),
        }
    except _Fail as exc:
        raise PolicyError(f"{where}: rule `{rid}`: {exc}") from None


def compile_policy(text: str, *, where: str = "<policy>") -> dict[str, Any]:
    """Parse and check a policy source; return the bundle as a dict (see the module docstring)."""
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{where}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a policy is a mapping with `policy`, `version` and `rules`")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key `{sorted(unknown)[0]}`; use {', '.join(sorted(_TOP_KEYS))}")
    name = raw.get("policy")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(f"{where}: `policy` must be a lower-case name like `shop`, got {_show(name)}")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_SAFE_INT:
        raise PolicyError(
            f"{where}: `version` must be a whole number ≥ 1 (raise it on every change), got {_show(version)}"
        )
    tier_defaults = raw.get("tier_defaults", False)
    if not isinstance(tier_defaults, bool):
        raise PolicyError(f"{where}: `tier_defaults` takes true or false, got {_show(tier_defaults)}")
    default_spec = raw.get("default", "deny")
    if isinstance(default_spec, str):
        default_spec = {"effect": default_spec}
    if not isinstance(default_spec, dict) or set(default_spec) - _OUTCOME_KEYS:
        raise PolicyError(
            f"{where}: `default` is an effect (`deny`) or a mapping of {', '.join(sorted(_OUTCOME_KEYS))}"
        )
    try:
        default = outcome(default_spec, default_reason="no_rule_matched")
    except _Fail as exc:
        raise PolicyError(f"{where}: `default`: {exc}") from None
    rules_spec = raw.get("rules", [])
    if not isinstance(rules_spec, list):
        raise PolicyError(f"{where}: `rules` must be a list of rules")
    seen: set[str] = set()
    rules = [_rule(spec, i, seen, where) for i, spec in enumerate(rules_spec)]
    return {
        "format": BUNDLE_FORMAT,
        "policy": name,
        "version": version,
        "tier_defaults": tier_defaults,
        "default": default,
        "rules": rules,
    }


def compile_policy_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy source `{path}`: {exc}; check the path") from None
    return compile_policy(text, where=str(path))


def bundle_bytes(bundle: dict[str, Any]) -> bytes:
    """The bundle's one byte form (RFC 8785): what is hashed, signed and loaded."""
    return canonical_json(bundle)
