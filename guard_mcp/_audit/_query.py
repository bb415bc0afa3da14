"""Reading the log back: recent events, one call's story, call summaries, statistics.

A *call* is every event sharing a request_id. Its `effect` is what the policy said
(`call.decided` data `effect`: allow, deny, approve); its `outcome` is how it ended, and its
`decision` is the final word: `allow` when the upstream was called, `deny` when it was not (invalid,
denied by policy or approver, expired), None while it is still open. A call whose upstream was
called but whose answer was never recorded (the client cancelled, the guard stopped) ends
`unknown` (`call.unresolved`): the upstream may have acted. `search --decision X` matches
a call whose effect or final decision is X: `deny` finds policy denials and refused approvals alike,
`approve` finds every call that needed a human.

`approval.decided` is read as approved when its data has `state` (or `decision`) `approved`, or
`approved: true`. Reason codes come from the guard's own events (`call.decided`, `call.invalid`,
`call.denied`, `call.error`, `call.unresolved`) and from how an approval ended (`approval_denied`, `approval_expired`, `approval_cancelled`);
an approver's free-text reason is not a code.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from guard_mcp._audit._chain import canonical_event as _canonical_event
from guard_mcp._audit._chain import chain_hash, event_mac
from guard_mcp._audit._events import AuditEvent

__all__ = [
    "ApprovalSummary",
    "CallSummary",
    "approval_story",
    "calls",
    "event_at",
    "event_intact",
    "events_after",
    "follow",
    "search",
    "stats",
    "story",
    "summarize",
    "summarize_approval",
    "tail",
]

_ALLOWED_OUTCOMES = frozenset({"completed", "forwarded", "error", "unknown"})
_DENIED_OUTCOMES = frozenset({"invalid", "denied", "expired", "cancelled"})


def _event(row: tuple[Any, ...]) -> AuditEvent:
    seq, ts, type_, request_id, actor, upstream, tool, data, prev_hash, hash_, mac = row
    try:
        parsed = json.loads(data)
    except (TypeError, ValueError):
        parsed = {"unparsable": str(data)}
    return AuditEvent(
        seq,
        ts,
        type_,
        request_id,
        actor,
        upstream,
        tool,
        parsed if isinstance(parsed, dict) else {"value": parsed},
        prev_hash,
        hash_,
        mac,
    )


def event_intact(conn: sqlite3.Connection, event: AuditEvent, hmac_key: bytes | None) -> bool:
    """This one event still matches its own hash (and MAC). The chain around it is `verify`'s job."""
    row = conn.execute("SELECT data FROM audit_events WHERE seq = ?", (event.seq,)).fetchone()
    try:
        digest = chain_hash(
            bytes.fromhex(event.prev_hash),
            _canonical_event(
                event.seq, event.ts, event.type, event.request_id, event.actor, event.upstream, event.tool, row[0]
            ),
        )
    except (ValueError, TypeError):
        return False
    if digest.hex() != event.hash:
        return False
    return hmac_key is None or event_mac(hmac_key, digest).hex() == event.mac


def tail(conn: sqlite3.Connection, n: int) -> list[AuditEvent]:
    rows = conn.execute(
        "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
        "ORDER BY seq DESC LIMIT ?",
        (n,),
    ).fetchall()
    return [_event(r) for r in reversed(rows)]


def events_after(conn: sqlite3.Connection, seq: int, limit: int = 1000) -> list[AuditEvent]:
    rows = conn.execute(
        "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit),
    )
    return [_event(r) for r in rows]


def follow(
    conn: sqlite3.Connection,
    after: int,
    *,
    sleep: Callable[[], None],
    keep_going: Callable[[], bool] = lambda: True,
) -> Iterator[AuditEvent]:
    """Events after seq `after` as they are written; `sleep` waits between polls."""
    while keep_going():
        batch = events_after(conn, after)
        yield from batch
        if batch:
            after = batch[-1].seq
        else:
            sleep()


def story(conn: sqlite3.Connection, request_id: str) -> list[AuditEvent]:
    rows = conn.execute(
        "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
        "WHERE request_id = ? ORDER BY seq",
        (request_id,),
    )
    return [_event(r) for r in rows]


def event_at(conn: sqlite3.Connection, seq: int) -> AuditEvent | None:
    row = conn.execute(
        "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
        "WHERE seq = ?",
        (seq,),
    ).fetchone()
    return None if row is None else _event(row)


def approval_story(conn: sqlite3.Connection, approval_id: str) -> list[AuditEvent]:
    """Everything recorded about one approval, in seq order: the events that name it (asked, decided at the
    terminal or in the console, refused attempts, escalated, used, expired, cancelled) and every event of
    the calls they belong to (the call that asked, and the repeated call that used it)."""
    # `LIKE` narrows the scan; the event's own `approval_id` decides (an id quoted in an argument is not it)
    named = [
        e
        for e in (
            _event(r)
            for r in conn.execute(
                "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
                "WHERE instr(data, ?) > 0 ORDER BY seq",
                (approval_id,),
            )
        )
        if e.data.get("approval_id") == approval_id
    ]
    found = {e.seq: e for e in named}
    for request_id in dict.fromkeys(e.request_id for e in named if e.request_id is not None):
        found.update((e.seq, e) for e in story(conn, request_id))
    return [found[seq] for seq in sorted(found)]


# How an approval ended, by the event that says so (`state` in its data, else the event's own word).
_APPROVAL_ENDS = {
    "approval.decided": None,
    "operator.decided": None,
    "console.decided": None,
    "approval.expired": "expired",
    "approval.cancelled": "cancelled",
}


@dataclass
class ApprovalSummary:
    """One approval as its events tell it."""

    approval_id: str
    request_id: str | None = None  # the call that asked
    tool: str | None = None
    actor: str | None = None
    headline: str | None = None
    group: str | None = None
    step_up: bool | None = None
    requested_ts: int | None = None
    state: str = "pending"
    approver: str | None = None
    factor: str | None = None
    reason: str | None = None
    decided_ts: int | None = None
    escalated_to: str | None = None
    refused_attempts: int = 0
    used_by: str | None = None  # the call that ran on it
    calls: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def summarize_approval(events: list[AuditEvent], approval_id: str) -> ApprovalSummary:
    a = ApprovalSummary(approval_id)
    for e in events:
        if e.request_id is not None and e.request_id not in a.calls:
            a.calls.append(e.request_id)
        d = e.data
        if d.get("approval_id") != approval_id:
            if e.type == "permit.issued" and e.request_id == a.request_id and a.state == "approved":
                a.used_by = a.used_by or e.request_id  # approved while the call waited: it ran on it
            continue
        if e.type == "approval.requested":
            a.request_id, a.tool, a.actor, a.requested_ts = e.request_id, e.tool, e.actor, e.ts
            a.headline, a.group = _text(d.get("headline")), _text(d.get("group"))
            a.step_up = d.get("step_up") if isinstance(d.get("step_up"), bool) else None
        elif e.type in _APPROVAL_ENDS:
            said = _APPROVAL_ENDS[e.type]
            state = said or _text(d.get("state"))
            if state is not None and (a.decided_ts is None or e.type != "approval.decided"):
                a.state, a.decided_ts = state, e.ts
            a.approver = _text(d.get("approver")) or a.approver
            a.factor = _text(d.get("factor")) or a.factor
            a.reason = _text(d.get("reason")) or a.reason
        elif e.type == "approval.escalated":
            a.escalated_to = _text(d.get("group"))
        elif e.type in ("operator.refused", "console.refused"):
            a.refused_attempts += 1
        elif e.type == "approval.consumed":
            a.used_by = e.request_id
    return a


@dataclass
class CallSummary:
    request_id: str
    first_seq: int
    ts: int
    actor: str | None = None
    upstream: str | None = None
    tool: str | None = None
    effect: str | None = None
    outcome: str = "received"
    reason: str | None = None
    approval_requested_ts: int | None = None
    approval_decided_ts: int | None = None
    events: int = 0
    types: list[str] = field(default_factory=list)

    @property
    def decision(self) -> str | None:
        if self.outcome in _ALLOWED_OUTCOMES:
            return "allow"
        if self.outcome in _DENIED_OUTCOMES:
            return "deny"
        return None

    @property
    def approval_latency_ms(self) -> int | None:
        if self.approval_requested_ts is None or self.approval_decided_ts is None:
            return None
        return self.approval_decided_ts - self.approval_requested_ts

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(decision=self.decision, approval_latency_ms=self.approval_latency_ms)
        return out


def _approved(data: Mapping[str, Any]) -> bool:
    if data.get("approved") is True:
        return True
    return any(data.get(k) in ("approved", "approve", "allow") for k in ("state", "decision"))


_REASON_EVENTS = frozenset({"call.decided", "call.invalid", "call.denied", "call.error", "call.unresolved"})

# Later stages win: an approved call that then failed upstream ends as `error`.
_RANK = {
    "received": 0,
    "awaiting_approval": 1,
    "forwarded": 2,
    "completed": 3,
    "error": 3,
    "unknown": 3,
    "invalid": 4,
    "denied": 4,
    "expired": 4,
    "cancelled": 4,
}


def _apply(c: CallSummary, e: AuditEvent) -> None:
    c.events += 1
    c.types.append(e.type)
    c.actor = c.actor or e.actor
    c.upstream = c.upstream or e.upstream
    c.tool = c.tool or e.tool
    reason = e.data.get("reason")
    if isinstance(reason, str) and e.type in _REASON_EVENTS:
        c.reason = reason
    outcome = None
    if e.type == "call.decided":
        effect = e.data.get("effect")
        c.effect = effect if isinstance(effect, str) else c.effect
        outcome = "denied" if c.effect == "deny" else None
    elif e.type == "call.invalid":
        outcome = "invalid"
    elif e.type == "call.denied":
        outcome = "denied"
    elif e.type in ("approval.requested", "approval.pending"):
        c.approval_requested_ts = e.ts
        outcome = "awaiting_approval"
    elif e.type == "approval.decided":
        c.approval_decided_ts = e.ts
        if not _approved(e.data):
            outcome, c.reason = "denied", "approval_denied"
    elif e.type == "approval.expired":  # no human decided: not part of the approval latency
        outcome, c.reason = "expired", "approval_expired"
    elif e.type == "approval.cancelled":  # the client left while it was asked; the call never ran
        outcome, c.reason = "cancelled", "approval_cancelled"
    elif e.type == "permit.issued":  # durable before the upstream is called: from here the call may have run
        outcome = "forwarded"
    elif e.type == "call.result":
        outcome = "completed"
    elif e.type == "call.error":
        outcome = "error"
    elif e.type == "call.unresolved":  # permitted and sent, but how the upstream answered is not known
        outcome = "unknown"
    if outcome is not None and _RANK[outcome] >= _RANK[c.outcome]:
        c.outcome = outcome


def summarize(events: list[AuditEvent]) -> CallSummary:
    """One call's summary from its events (in seq order)."""
    first = events[0]
    c = CallSummary(first.request_id or "", first.seq, first.ts)
    for e in events:
        _apply(c, e)
    return c


def calls(conn: sqlite3.Connection, *, since_ms: int | None = None, until_ms: int | None = None) -> list[CallSummary]:
    """Every call with an event in [since, until), oldest first, from all its events."""
    found: dict[str, CallSummary] = {}
    # Calls with any event in the window, summarised from all of their events.
    sql = (
        "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
        "WHERE request_id IN (SELECT request_id FROM audit_events WHERE request_id IS NOT NULL "
        "AND (?1 IS NULL OR ts >= ?1) AND (?2 IS NULL OR ts < ?2)) ORDER BY seq"
    )
    for row in conn.execute(sql, (since_ms, until_ms)):
        e = _event(row)
        assert e.request_id is not None
        c = found.get(e.request_id)
        if c is None:
            c = found[e.request_id] = CallSummary(e.request_id, e.seq, e.ts)
        _apply(c, e)
    return list(found.values())


def search(
    conn: sqlite3.Connection,
    *,
    tool: str | None = None,
    actor: str | None = None,
    decision: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int | None = None,
) -> list[CallSummary]:
    """Calls matching every filter given, newest last; `limit` keeps the newest."""
    out = []
    for c in calls(conn, since_ms=since_ms, until_ms=until_ms):
        if tool is not None and not (
            c.tool and (c.tool == tool or c.tool.endswith(f"__{tool}") or f"{c.upstream}__{c.tool}" == tool)
        ):
            continue
        if actor is not None and c.actor != actor:
            continue
        if decision is not None and decision not in (c.effect, c.decision):
            continue
        out.append(c)
    return out[-limit:] if limit else out


def _latency(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    values = sorted(values)
    return {
        "count": len(values),
        "median_s": statistics.median(values) / 1000,
        "p90_s": values[min(len(values) - 1, int(len(values) * 0.9))] / 1000,
        "max_s": values[-1] / 1000,
    }


def _tool_name(c: CallSummary) -> str:
    if c.upstream and c.tool and not c.tool.startswith(f"{c.upstream}__"):
        return f"{c.upstream}__{c.tool}"
    return c.tool or "?"


def stats(conn: sqlite3.Connection, *, since_ms: int | None = None, until_ms: int | None = None) -> dict[str, Any]:
    found = calls(conn, since_ms=since_ms, until_ms=until_ms)
    latencies = [ms for c in found if (ms := c.approval_latency_ms) is not None]
    return {
        "calls": len(found),
        "by_effect": dict(Counter(c.effect or "none" for c in found).most_common()),
        "by_decision": dict(Counter(c.decision or "open" for c in found).most_common()),
        "by_outcome": dict(Counter(c.outcome for c in found).most_common()),
        "by_tool": dict(Counter(_tool_name(c) for c in found).most_common()),
        "by_reason": dict(Counter(c.reason for c in found if c.reason).most_common()),
        "approval_latency": _latency(latencies),
    }
