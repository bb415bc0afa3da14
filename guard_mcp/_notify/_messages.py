"""What a notification says and who it goes to, built from the audit log and nothing else.

The audit's data is already redacted: an argument a tool's `redact` lists (or one named like a
secret, or a value shaped like a credential) is there only as its keyed digest, and the approval's
headline in `approval.requested` was written from the redacted arguments. A message made from those
events alone cannot carry such a value, whatever the tool or the agent sent.

Events are read as notices:

    approval.requested                       -> approval.requested
    approval.escalated                       -> approval.escalated
    approval.decided, operator.decided (CLI),
    console.decided (console)                -> approval.decided   (once per approval and target)
    approval.expired                         -> approval.expired   (once per approval and target)
    audit.broken, tool.pin_changed, policy.refused -> the same, to the targets that list them

An approval notice goes to the targets whose `groups` hold the approval's group (every group it
was routed to, escalation included), or that name no groups. The link opens the approval's page in
the console, where the approver signs in; it carries no token and approves nothing by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from guard_mcp._approvals import escape_text
from guard_mcp._audit import AuditEvent
from guard_mcp._config import APPROVAL_NOTICES, NotifyConfig
from guard_mcp._notify._outbox import Queued, Story

__all__ = ["Notice", "build_queue", "notice_of", "render_text"]

_KINDS = {
    "approval.requested": "approval.requested",
    "approval.escalated": "approval.escalated",
    "approval.decided": "approval.decided",
    "operator.decided": "approval.decided",
    "console.decided": "approval.decided",
    "approval.expired": "approval.expired",
    "audit.broken": "audit.broken",
    "tool.pin_changed": "tool.pin_changed",
    "policy.refused": "policy.refused",
}
_MAX_TEXT = 300  # characters of any one field taken from the log (a headline, a reason, a message)
# A notice that says the same thing whichever event told it is sent once: keyed by approval, not by event.
_ONCE_PER_APPROVAL = frozenset({"approval.requested", "approval.decided", "approval.expired"})


@dataclass(frozen=True)
class Notice:
    kind: str
    key: str
    seq: int
    payload: dict[str, Any]
    groups: frozenset[str] | None  # the approval's groups; None for a notice that is not about an approval


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _approval(event: AuditEvent, kind: str, story: Story, link_base: str | None) -> Notice | None:
    approval_id = event.data.get("approval_id")
    if not isinstance(approval_id, str) or not approval_id.startswith("apr_") or len(approval_id) > 40:
        return None
    requested: Mapping[str, Any] = {}
    decided: Mapping[str, Any] = {}
    groups: list[str] = []
    for e in story(event.request_id) if event.request_id else []:
        if e.seq > event.seq:  # what was so when this event was written (derivation may lag behind the log)
            break
        if e.type == "call.decided":
            decided = e.data
        elif e.data.get("approval_id") != approval_id:
            continue
        elif e.type == "approval.requested":
            requested = e.data
        if e.type in ("approval.requested", "approval.escalated") and isinstance(e.data.get("group"), str):
            groups.append(e.data["group"])
    risk = decided.get("risk")
    tier = risk.get("tier") if isinstance(risk, Mapping) else None
    data: dict[str, Any] = {
        "approval_id": approval_id,
        "request_id": event.request_id,
        "tool": event.tool,
        "headline": _text(requested.get("headline")),
        "tier": tier if isinstance(tier, str) else None,
        "step_up": bool(requested.get("step_up", False)),
        "group": groups[-1] if groups else None,
        "deadline": _iso(_number(requested.get("deadline"))),
        "link": None if link_base is None else f"{link_base}/approvals/{approval_id}",
    }
    if kind == "approval.requested":
        data["principal"] = event.actor  # whose agent asks (later events name the guard or an operator)
    if kind == "approval.decided":
        data.update(
            state=_text(event.data.get("state")),
            approver=_text(event.data.get("approver")),
            reason=_text(event.data.get("reason")),
        )
    key = f"{kind}:{approval_id}" if kind in _ONCE_PER_APPROVAL else f"{kind}:{approval_id}:{event.seq}"
    return Notice(kind, key, event.seq, _payload(kind, event, data), frozenset(groups))


def _payload(kind: str, event: AuditEvent, data: dict[str, Any]) -> dict[str, Any]:
    # The Standard Webhooks payload shape: the event type, when it happened, what it is about.
    when = datetime.fromtimestamp(event.ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {"type": kind, "timestamp": when, "data": {**data, "audit_seq": event.seq}}


def notice_of(event: AuditEvent, story: Story, link_base: str | None) -> Notice | None:
    """The notice an audit event tells, if any."""
    kind = _KINDS.get(event.type)
    if kind is None:
        return None
    if kind in APPROVAL_NOTICES:
        return _approval(event, kind, story, link_base)
    d = event.data
    if kind == "audit.broken":
        data = {"problem": _text(d.get("problem")), "bad_seq": d.get("bad_seq"), "message": _text(d.get("message"))}
    elif kind == "tool.pin_changed":
        data = {
            "upstream": event.upstream,
            "tool": _text(d.get("tool")),
            "exposed": _text(d.get("exposed")),
            "hash": _text(d.get("hash")),
        }
    else:  # policy.refused
        data = {
            "reason": _text(d.get("reason")),
            "message": _text(d.get("message")),
            "serving": _text(d.get("serving")),
            "shadow": bool(d.get("shadow", False)),
        }
    return Notice(kind, f"{kind}:{event.seq}", event.seq, _payload(kind, event, data), None)


def build_queue(config: NotifyConfig, events: list[AuditEvent], story: Story, now: float | None = None) -> list[Queued]:
    """The outbox rows these events call for: each notice, once for every target it is routed to. An event
    older than `retry.give_up` at `now` calls for none: it would be given up before it was sent (a guard
    that ran for weeks without targets, then got them again, does not send those weeks)."""
    out: list[Queued] = []
    for event in events:
        if now is not None and now - event.ts / 1000 > config.retry.give_up:
            continue
        notice = notice_of(event, story, config.link_base)
        if notice is None:
            continue
        for name, target in config.targets.items():
            if notice.kind not in target.events:
                continue
            if notice.groups is not None and target.groups is not None and not notice.groups & set(target.groups):
                continue
            out.append(Queued(name, notice.key, notice.seq, notice.kind, notice.payload))
    return out


_TITLES = {
    "approval.requested": "Approval needed",
    "approval.escalated": "Approval escalated",
    "approval.decided": "Approval decided",
    "approval.expired": "Approval expired",
    "audit.broken": "guard-mcp: the audit log does not verify",
    "tool.pin_changed": "guard-mcp: a tool changed its definition",
    "policy.refused": "guard-mcp: a policy bundle was refused",
}


def render_text(payload: Mapping[str, Any]) -> tuple[str, str]:
    """Title and body for a chat or mail target, as plain text (the headline quotes an agent's arguments:
    its control characters are shown as codes, and nothing in it is read as markup by us)."""
    kind = str(payload.get("type"))
    data = payload.get("data")
    d: Mapping[str, Any] = data if isinstance(data, Mapping) else {}

    def shown(value: Any) -> str:
        return escape_text(str(value))

    title = _TITLES.get(kind, f"guard-mcp: {kind}")
    lines: list[str] = []
    if kind in APPROVAL_NOTICES:
        if d.get("headline"):
            title = f"{title}: {shown(d['headline'])}"
        if kind == "approval.decided":
            lines.append(
                f"{shown(d.get('state') or 'decided').capitalize()} by {shown(d.get('approver') or '?')}"
                + (f": {shown(d['reason'])}" if d.get("reason") else "")
            )
        tier = shown(d.get("tier") or "unknown")
        lines.append(
            f"Tier: {tier}" + (" (step-up: a named approver with a second factor)" if d.get("step_up") else "")
        )
        if d.get("group"):
            lines.append(f"Approvers: {shown(d['group'])}")
        if d.get("deadline") and kind != "approval.decided":
            lines.append(f"Decide by: {shown(d['deadline'])}")
        lines.append(
            f"Tool: {shown(d.get('tool') or '?')}"
            + (f", asked by {shown(d['principal'])}" if d.get("principal") else "")
        )
        lines.append(f"Approval: {shown(d.get('approval_id'))}")
        if d.get("link") and kind in ("approval.requested", "approval.escalated"):
            lines.append(f"Open the console to decide (sign-in required): {shown(d['link'])}")
        elif d.get("link"):
            lines.append(f"Details: {shown(d['link'])}")
    else:
        for key in ("problem", "bad_seq", "reason", "upstream", "tool", "exposed", "serving", "message"):
            if d.get(key) not in (None, ""):
                lines.append(f"{key.replace('_', ' ').capitalize()}: {shown(d[key])}")
    return title, "\n".join(lines)
