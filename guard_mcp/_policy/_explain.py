"""Why a rule's condition did not hold, in words: the test that decided it, the argument's value and
the operand (`amount` = 500 is not ≤ 100), for `guard-mcp policy explain`.

The sandboxed evaluator's trace says only which rule failed and how ("condition is false"), on
purpose: the trace is recorded with every decision, and an argument's value there would put a
redacted argument into the audit log. Here the values are the ones the person typed at the
terminal, and the walk uses the reference evaluator the property tests hold equal to the sandbox.
"""

from __future__ import annotations

import json
from typing import Any

from guard_mcp._policy._reference import _MISSING, _cond, _lookup

__all__ = ["explain_condition"]

_MAX_VALUE = 60
_SYMBOL = {"lt": "<", "le": "≤", "gt": ">", "ge": "≥"}


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE] + "…"


def _operand(op: str, value: Any) -> str:
    if op in _SYMBOL:
        return f"{_SYMBOL[op]} {_show(value)}"
    return f"{op.replace('_', ' ')} {_show(value)}"


def _test_words(c: dict[str, Any], args: dict[str, Any], outcome: bool | None) -> str:
    arg, op, operand = ".".join(c["arg"]), c["op"], c["value"]
    found = _lookup(args, c["arg"])
    if op == "exists":
        return f"`{arg}` is {'missing' if found is _MISSING else 'present'} (the test is `exists: {_show(operand)}`)"
    if found is _MISSING:
        return f"`{arg}` is missing, so `{arg} {_operand(op, operand)}` cannot be decided"
    shown = f"`{arg}` = {_show(found)}"
    if outcome is None:
        return f"{shown} does not fit `{_operand(op, operand)}` (another type), so it cannot be decided"
    if op == "under" and isinstance(found, str):
        import posixpath

        normal = "/" + posixpath.normpath(found).lstrip("/")
        where = f" (normalised: {_show(normal)})" if normal != found else ""
        return f"{shown}{where} is {'' if outcome else 'not '}under {_show(operand)}"
    if op == "prefix":
        return f"{shown} {'starts' if outcome else 'does not start'} with {_show(operand)}"
    if op in ("in", "not_in"):
        member = outcome if op == "in" else not outcome
        return f"{shown} is {'' if member else 'not '}one of {_show(operand)}"
    if op in ("eq", "ne"):
        equal = outcome if op == "eq" else not outcome
        return f"{shown} {'equals' if equal else 'is not'} {_show(operand)}"
    return f"{shown} is {'' if outcome else 'not '}{_operand(op, operand)}"


def _words(c: dict[str, Any], args: dict[str, Any], want: bool | None) -> list[str]:
    """The tests that made `c` come out as `want` (False, True or None for undecided)."""
    if "all" in c or "any" in c:
        items = c.get("all") or c.get("any") or []
        results = [_cond(item, args, []) for item in items]
        deciding = [item for item, r in zip(items, results, strict=True) if r is want]
        # `all` is false by its first false item, `any` true by its first true one; otherwise every item counts
        if ("all" in c and want is False) or ("any" in c and want is True):
            deciding = deciding[:1]
        out: list[str] = []
        for item in deciding:
            out.extend(_words(item, args, want))
        return out
    if "not" in c:
        inner = None if want is None else not want
        return [f"not ({w})" for w in _words(c["not"], args, inner)]
    return [_test_words(c, args, want)]


def explain_condition(when: dict[str, Any] | None, args: dict[str, Any]) -> str | None:
    """Why `when` did not hold for `args`: the deciding tests with values and operands; None if it held."""
    if when is None:
        return None
    outcome = _cond(when, args, [])
    if outcome is True:
        return None
    words = _words(when, args, outcome)
    return "; ".join(words) if words else None
