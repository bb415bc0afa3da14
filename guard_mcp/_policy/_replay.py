"""Policy replay: what a candidate bundle would have decided on the calls the audit log recorded.

Each call that reached the policy left `call.received` (its arguments as the log keeps them) and
`call.decided` (the live decision). The candidate decides the same request again: the recorded
action, upstream, tool and principal, the arguments as recorded, and the action schema of today's
configuration. The log keeps a redacted argument only as its digest, so a candidate whose
conditions read such an argument (or anything inside or around it) cannot be known to decide as it
would have on the real value: that call is counted and listed as unknowable, never guessed. A
digest that only travels along, in an argument no condition of the candidate reads, changes nothing.
The same goes for a candidate that matches on the caller's groups (`match: {group: ...}`): unless
the call's `call.received` recorded them, its decision is unknowable.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from guard_mcp._config import GuardConfig
from guard_mcp._models import Decision, Effect
from guard_mcp._naming import namespace_tools
from guard_mcp._policy._decision import encode_request, parse_decision
from guard_mcp._policy._engine import decision_summary
from guard_mcp._policy._host import WasmEvaluator

__all__ = ["Outcome", "ReplayReport", "matches_groups", "read_paths", "redacted_paths", "replay"]

_DIGEST = re.compile(r"redacted:[0-9a-f]{32}")
_LIVE_KEYS = ("effect", "rule_id", "reason", "policy", "step_up", "approvers")

Path = tuple[str, ...]


def read_paths(bundle: Mapping[str, Any]) -> set[Path]:
    """Every argument path a condition of the bundle reads (`when: {arg: customer.id, ...}`)."""
    found: set[Path] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            arg = node.get("arg")
            if isinstance(arg, list) and all(isinstance(p, str) for p in arg):
                found.add(tuple(arg))
            elif isinstance(arg, str):
                found.add(tuple(arg.split(".")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for rule in bundle.get("rules", []) if isinstance(bundle.get("rules"), list) else []:
        walk(rule.get("when") if isinstance(rule, Mapping) else None)
    return found


def matches_groups(bundle: Mapping[str, Any]) -> bool:
    """Whether a rule of the bundle matches on the caller's groups (`match: {group: [...]}`)."""
    rules = bundle.get("rules")
    return any(
        isinstance(r, Mapping) and isinstance(r.get("match"), Mapping) and r["match"].get("group")
        for r in (rules if isinstance(rules, list) else [])
    )


def redacted_paths(arguments: Any, at: Path = ()) -> Iterator[Path]:
    """Where the recorded arguments hold a digest instead of a value (whole, or cut out of a text)."""
    if isinstance(arguments, str):
        if _DIGEST.search(arguments):
            yield at
    elif isinstance(arguments, Mapping):
        for key, value in arguments.items():
            yield from redacted_paths(value, (*at, str(key)))
    elif isinstance(arguments, list):
        for i, value in enumerate(arguments):
            yield from redacted_paths(value, (*at, str(i)))


def _overlaps(a: Path, b: Path) -> bool:
    """One path is the other or holds it: a condition on either side sees the digest."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


@dataclass(frozen=True)
class Outcome:
    request_id: str
    ts: int
    tool: str | None
    actor: str | None
    action: str
    live: dict[str, Any]
    candidate: dict[str, Any] | None  # None: unknowable
    redacted: tuple[str, ...] = ()  # the redacted arguments the candidate reads
    groups_unknown: bool = False  # the candidate matches on caller groups the log did not record

    @property
    def status(self) -> str:
        if self.candidate is None:
            return "unknowable"
        return "changed" if _label(self.live) != _label(self.candidate) else "unchanged"

    @property
    def transition(self) -> str:
        return f"{_label(self.live)} → {'?' if self.candidate is None else _label(self.candidate)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "ts": self.ts,
            "tool": self.tool,
            "actor": self.actor,
            "action": self.action,
            "status": self.status,
            "live": self.live,
            "candidate": self.candidate,
            "redacted_arguments_read": list(self.redacted),
            "groups_unknown": self.groups_unknown,
        }


def _label(d: Mapping[str, Any]) -> str:
    """The part of a decision a caller feels: the effect, and for an approval whose and how."""
    label = str(d.get("effect"))
    if d.get("effect") == "approve":
        label += f" ({d.get('approvers') or 'approvers'}{', step-up' if d.get('step_up') else ''})"
    return label


@dataclass
class ReplayReport:
    candidate: str
    calls: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def changed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "changed"]

    @property
    def unknowable(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "unknowable"]

    @property
    def transitions(self) -> dict[str, int]:
        return dict(Counter(o.transition for o in self.changed).most_common())

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "calls": self.calls,
            "unchanged": self.calls - len(self.changed) - len(self.unknowable),
            "changed": [o.as_dict() for o in self.changed],
            "transitions": self.transitions,
            "unknowable": [o.as_dict() for o in self.unknowable],
        }


def _recorded(
    conn: sqlite3.Connection, since_ms: int | None
) -> Iterator[tuple[sqlite3.Row, dict[str, Any], dict[str, Any]]]:
    """(the call.decided row, its received data, its decided data) of every call decided since `since_ms`."""
    received: dict[str, dict[str, Any]] = {}
    rows = conn.execute(
        "SELECT seq, ts, type, request_id, actor, upstream, tool, data FROM audit_events "
        "WHERE type IN ('call.received', 'call.decided') AND request_id IS NOT NULL AND (?1 IS NULL OR ts >= ?1) "
        "ORDER BY seq",
        (since_ms,),
    )
    for row in rows:
        try:
            data = json.loads(row[7])
        except (TypeError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if row[2] == "call.received":
            received[row[3]] = data
        elif row[3] in received:
            yield row, received.pop(row[3]), data


def _original_tool(config: GuardConfig, upstream: str, exposed: str) -> str:
    up = config.upstreams.get(upstream)
    if up is not None:
        original = namespace_tools(upstream, up.tools).get(exposed)
        if original is not None:
            return original
    return exposed.removeprefix(f"{upstream}__")


def replay(
    conn: sqlite3.Connection,
    evaluator: WasmEvaluator,
    bundle: Mapping[str, Any],
    config: GuardConfig,
    *,
    since_ms: int | None = None,
) -> ReplayReport:
    """Decide every recorded call since `since_ms` again with `evaluator` (the verified `bundle`)."""
    reads = read_paths(bundle)
    by_group = matches_groups(bundle)
    report = ReplayReport(candidate=evaluator.label)
    for row, received, decided in _recorded(conn, since_ms):
        _, ts, _, request_id, actor, upstream, tool, _ = row
        arguments = received.get("arguments")
        action = decided.get("action")
        if not isinstance(arguments, dict) or not isinstance(action, str):
            continue
        report.calls += 1
        live = {k: decided.get(k) for k in _LIVE_KEYS}
        hidden = sorted({".".join(p) for p in redacted_paths(arguments) if any(_overlaps(p, r) for r in reads)})
        groups = received.get("groups")
        known_groups = isinstance(groups, list) and all(isinstance(g, str) for g in groups)
        if hidden or (by_group and not known_groups):
            report.outcomes.append(
                Outcome(
                    request_id,
                    ts,
                    tool,
                    actor,
                    action,
                    live,
                    None,
                    tuple(hidden),
                    groups_unknown=by_group and not known_groups,
                )
            )
            continue
        original = _original_tool(config, upstream or "", tool or "")
        schema = config.action_schema(upstream or "", original)
        request: dict[str, Any] = {
            "action": action,
            "upstream": upstream or "",
            "tool": original,
            "actor": actor or "",
            "groups": groups if known_groups else [],
            "category": schema.category.value,
            "reversibility": schema.reversibility.value,
            "blast_radius": schema.blast_radius.value,
            "sensitivity": schema.sensitivity.value,
            "arguments": arguments,
        }
        report.outcomes.append(Outcome(request_id, ts, tool, actor, action, live, _decide(evaluator, request)))
    return report


def _decide(evaluator: WasmEvaluator, request: dict[str, Any]) -> dict[str, Any]:
    try:
        decision = parse_decision(
            evaluator.decide_raw(encode_request(request)), policy=evaluator.label, sha256=evaluator.sha256
        )[1]
    except Exception:  # as the live engine: a candidate that cannot decide denies
        decision = Decision(effect=Effect.DENY, reason="policy_engine_error", policy=evaluator.label)
    return decision_summary(decision)
