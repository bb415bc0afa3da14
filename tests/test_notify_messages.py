"""Which notices audit events tell and where they are routed: escalation reaches the new group and the
old, a decision or expiry told twice is sent once, and other events go only to targets that ask."""

from __future__ import annotations

from typing import Any

from guard_mcp._audit._events import AuditEvent
from guard_mcp._config import load_config
from guard_mcp._notify._messages import build_queue, render_text

APR = "apr_" + "b" * 26
CONFIG = load_config(
    text="""
guard:
  notify:
    link_base: https://guard.example.com/console
    targets:
      leads: {apprise: 'json://127.0.0.1:9/a', groups: [support_leads]}
      managers: {apprise: 'json://127.0.0.1:9/b', groups: [managers]}
      security: {apprise: 'json://127.0.0.1:9/c', groups: [nobody], events: [audit.broken, tool.pin_changed]}
""",
    environ={},
).guard.notify


def event(seq: int, kind: str, data: dict[str, Any], actor: str = "agent-a") -> AuditEvent:
    return AuditEvent(seq, 1_800_000_000_000 + seq, kind, "req_1", actor, "shop", "shop__refund", data, "", "", "")


STORY = [
    event(1, "call.decided", {"effect": "approve", "risk": {"tier": "HIGH", "score": 80}}),
    event(
        2,
        "approval.requested",
        {
            "approval_id": APR,
            "group": "support_leads",
            "step_up": True,
            "deadline": 1_800_007_200.0,
            "headline": "Refund 500.00 to customer c-1",
        },
    ),
    event(3, "approval.escalated", {"approval_id": APR, "group": "managers"}),
]


def queue(*events: AuditEvent) -> list[tuple[str, str]]:
    return [(q.target, q.key) for q in build_queue(CONFIG, list(events), lambda request_id: STORY)]


def test_an_escalation_reaches_the_new_group_and_the_old_and_a_request_only_its_own() -> None:
    assert queue(STORY[1]) == [("leads", f"approval.requested:{APR}")]
    assert queue(STORY[2]) == [("leads", f"approval.escalated:{APR}:3"), ("managers", f"approval.escalated:{APR}:3")]


def test_a_decision_told_by_the_cli_and_by_the_waiting_call_is_one_notice_per_target() -> None:
    cli = event(4, "operator.decided", {"approval_id": APR, "state": "approved", "approver": "ops"}, "operator:ops")
    guard = event(5, "approval.decided", {"approval_id": APR, "state": "approved", "approver": "ops"})
    console = event(6, "console.decided", {"approval_id": APR, "state": "approved", "approver": "ops"}, "approver:ops")
    keys = queue(cli, guard, console)
    assert len(keys) == 6 and len(set(keys)) == 2  # the outbox keeps one row per (target, key)
    [decided] = build_queue(CONFIG, [cli], lambda request_id: STORY)[:1]
    data = decided.payload["data"]
    assert (data["tier"], data["group"], data["step_up"], data["state"]) == ("HIGH", "managers", True, "approved")
    assert data["link"] == f"https://guard.example.com/console/approvals/{APR}" and "principal" not in data
    title, body = render_text(decided.payload)
    assert title == "Approval decided: Refund 500.00 to customer c-1"
    assert "Approved by ops" in body and "Tier: HIGH (step-up" in body


def test_other_events_go_only_to_targets_that_list_them_and_approvals_never_to_those() -> None:
    broken = event(6, "audit.broken", {"problem": "hash_mismatch", "bad_seq": 3, "message": "seq 3 was edited"})
    assert queue(broken) == [("security", "audit.broken:6")]
    assert queue(event(7, "policy.refused", {"reason": "bad_signature"})) == []  # nobody asked for it
    assert queue(event(8, "call.result", {})) == []


def test_text_for_chat_shows_control_characters_as_codes() -> None:
    hostile = [
        STORY[0],
        event(
            2,
            "approval.requested",
            {"approval_id": APR, "group": "support_leads", "headline": "Refund \x1b[2J all\nApproved already"},
        ),
    ]
    [q] = build_queue(CONFIG, [hostile[1]], lambda request_id: hostile)
    title, _ = render_text(q.payload)
    assert "\x1b" not in title and "\n" not in title and "\\u001b" in title


def test_an_event_older_than_give_up_is_not_queued_when_a_lagging_cursor_reaches_it() -> None:
    requested = STORY[1]
    written = requested.ts / 1000
    assert len(build_queue(CONFIG, [requested], lambda request_id: STORY, written + 3600)) == 1
    assert build_queue(CONFIG, [requested], lambda request_id: STORY, written + 86400 + 1) == []
