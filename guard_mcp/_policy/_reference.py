"""A plain-Python evaluator of compiled bundles, mirroring the WASM module line for line.

It is never on the decision path: property tests run it beside the sandboxed evaluator on random
policies and requests and require the same answer, trace included. The risk weights mirror the
table in `wasm_policy/src/risk.rs`, the one place they are defined.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any

__all__ = ["reference_decide", "reference_risk"]

CATEGORY_POINTS = {
    "read": 0,
    "write": 15,
    "communicate": 20,
    "unknown": 30,
    "destructive": 35,
    "financial": 40,
    "permission": 40,
}
REVERSIBILITY_POINTS = {"full": 0, "partial": 12, "none": 25}
BLAST_RADIUS_POINTS = {"single": 0, "many": 10, "all": 20}
SENSITIVITY_POINTS = {"public": 0, "internal": 5, "confidential": 10, "restricted": 15}
LOW_BELOW = 30
MEDIUM_BELOW = 70

_UNDECIDED = None  # the third truth value


def reference_risk(category: str, reversibility: str, blast_radius: str, sensitivity: str) -> dict[str, Any]:
    factors = {
        "category": CATEGORY_POINTS[category],
        "reversibility": REVERSIBILITY_POINTS[reversibility],
        "blast_radius": BLAST_RADIUS_POINTS[blast_radius],
        "sensitivity": SENSITIVITY_POINTS[sensitivity],
    }
    score = sum(factors.values())
    tier = "LOW" if score < LOW_BELOW else "MEDIUM" if score < MEDIUM_BELOW else "HIGH"
    if category in ("financial", "permission"):
        tier = "HIGH"
    if category == "unknown" and tier == "LOW":
        tier = "MEDIUM"
    return {"score": score, "tier": tier, "factors": factors}


def _glob(pattern: str, text: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


def _any_glob(patterns: list[str], text: str) -> bool:
    return not patterns or any(_glob(p, text) for p in patterns)


def _kind(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    if isinstance(value, str):
        return "str"
    return None


def _same_type_eq(a: Any, b: Any) -> bool | None:
    ka = _kind(a)
    if ka is None or ka != _kind(b):
        return None
    if ka == "num":
        return float(a) == float(b)
    return bool(a == b)


_MISSING = object()


def _lookup(args: dict[str, Any], path: list[str]) -> Any:
    current: Any = args
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _test(args: dict[str, Any], path: list[str], op: str, value: Any) -> bool | None:
    found = _lookup(args, path)
    if op == "exists":
        return bool((found is not _MISSING) == value)
    if found is _MISSING:
        return _UNDECIDED
    if op in ("eq", "ne"):
        eq = _same_type_eq(found, value)
        return eq if eq is None or op == "eq" else not eq
    if op in ("lt", "le", "gt", "ge"):
        if _kind(found) != "num" or (isinstance(found, float) and not math.isfinite(found)):
            return _UNDECIDED
        x, y = float(found), float(value)
        return {"lt": x < y, "le": x <= y, "gt": x > y, "ge": x >= y}[op]
    if op in ("in", "not_in"):
        results = [_same_type_eq(found, item) for item in value]
        if _kind(found) is None or all(r is None for r in results):
            return _UNDECIDED
        member = any(r is True for r in results)
        return member if op == "in" else not member
    if op == "prefix":
        return found.startswith(value) if isinstance(found, str) else _UNDECIDED
    if op == "under":
        if not isinstance(found, str):
            return _UNDECIDED
        if not found.startswith("/") or "\0" in found:
            return _UNDECIDED  # relative: what it names depends on where the upstream stands
        normal = "/" + posixpath.normpath(found).lstrip("/")  # POSIX keeps a leading `//`; one `/` here
        return bool(value == "/" or normal == value or normal.startswith(value + "/"))
    raise ValueError(f"unknown operator `{op}`")


def _label(cond: dict[str, Any]) -> str:
    return ".".join(cond["arg"])


def _cond(c: dict[str, Any], args: dict[str, Any], undecided_on: list[str]) -> bool | None:
    if "all" in c:
        out: bool | None = True
        for item in c["all"]:
            r = _cond(item, args, undecided_on)
            if r is False:
                return False
            if r is None:
                out = None
        return out
    if "any" in c:
        out = False
        for item in c["any"]:
            r = _cond(item, args, undecided_on)
            if r is True:
                return True
            if r is None:
                out = None
        return out
    if "not" in c:
        r = _cond(c["not"], args, undecided_on)
        return None if r is None else not r
    r = _test(args, c["arg"], c["op"], c["value"])
    if r is None and not undecided_on:
        undecided_on.append(_label(c))
    return r


def _mismatch(m: dict[str, Any], req: dict[str, Any], risk: dict[str, Any]) -> str | None:
    for key in ("action", "upstream", "tool", "actor"):
        if not _any_glob(m.get(key, []), req[key]):
            return f"{key} does not match"
    if m.get("group") and not any(_any_glob(m["group"], g) for g in req.get("groups", [])):
        return "group does not match"
    if m.get("category") and req["category"] not in m["category"]:
        return "category does not match"
    if m.get("tier") and risk["tier"] not in m["tier"]:
        return "tier does not match"
    lo, hi = m.get("score_min"), m.get("score_max")
    if (lo is not None and risk["score"] < lo) or (hi is not None and risk["score"] > hi):
        return "score out of range"
    return None


_TIER_DEFAULTS = {
    "LOW": ("allow", "tier_default_low", False),
    "MEDIUM": ("approve", "tier_default_medium", False),
    "HIGH": ("approve", "tier_default_high", True),
}


def reference_decide(bundle: dict[str, Any], req: dict[str, Any], *, full_trace: bool = False) -> dict[str, Any]:
    """The decision the WASM module must return for `req` (same keys, same values)."""
    risk = reference_risk(req["category"], req["reversibility"], req["blast_radius"], req["sensitivity"])
    args = req.get("arguments", {})
    trace: list[dict[str, Any]] = []
    skipped = 0
    chosen: dict[str, Any] | None = None
    rule_id: str | None = None
    for rule in bundle["rules"]:
        why = _mismatch(rule["match"], req, risk)
        if why is not None:
            if full_trace:
                trace.append({"rule": rule["id"], "matched": False, "why": why})
            else:
                skipped += 1
            continue
        undecided_on: list[str] = []
        verdict = True if rule["when"] is None else _cond(rule["when"], args, undecided_on)
        if verdict is True:
            trace.append({"rule": rule["id"], "matched": True, "why": "matched"})
            chosen, rule_id = rule["then"], rule["id"]
            break
        if verdict is False:
            trace.append({"rule": rule["id"], "matched": False, "why": "condition is false"})
        else:
            on = undecided_on[0] if undecided_on else "?"
            why = f"condition undecided: argument `{on}` is missing or has another type"
            trace.append({"rule": rule["id"], "matched": False, "why": why})
    if chosen is None:
        if bundle["tier_defaults"]:
            effect, reason, step_up = _TIER_DEFAULTS[risk["tier"]]
            chosen = {
                "effect": effect,
                "reason": reason,
                "approvers": None,
                "approval_ttl": None,
                "permit_ttl": 300,
                "step_up": step_up,
            }
        else:
            chosen = bundle["default"]
    return {
        "policy": f"{bundle['policy']}@{bundle['version']}",
        "risk": risk,
        "effect": chosen["effect"],
        "rule": rule_id,
        "reason": chosen["reason"],
        "approvers": chosen["approvers"],
        "approval_ttl": chosen["approval_ttl"],
        "permit_ttl": chosen["permit_ttl"],
        "step_up": chosen["step_up"],
        "trace": trace,
        "skipped": skipped,
    }
