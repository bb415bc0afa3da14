from __future__ import annotations

import json

import pytest
from _approvals_support import bundle, decision, open_store, refund_args

from guard_mcp._approvals import approval_message, elicitation_schema, headline, parse_elicitation
from guard_mcp._clock import FakeClock
from guard_mcp._errors import ApprovalError
from guard_mcp._models import Tier
from guard_mcp._state import StateDir


def test_demo_refund_headline_reads_in_three_seconds() -> None:
    assert headline(bundle()) == "Refund €350.00 to customer cus_456"
    assert headline(bundle(refund_args(2400.0))) == "Refund €2,400.00 to customer cus_456"


def test_headline_with_the_resource_given_as_its_value() -> None:
    assert headline(bundle(resource="cus_456")) == "Refund €350.00 to customer cus_456"


def test_generic_headline_names_the_verb_the_object_and_its_key_arguments() -> None:
    b = bundle({"path": "/srv/data/report.csv", "force": True}, action="file.delete", resource=None)
    text = headline(b)
    assert text.startswith("Delete file")
    assert "/srv/data/report.csv" in text
    mail = headline(bundle({"to": "cfo@example.com", "body": "hi"}, action="email.send", resource="to"))
    assert mail.startswith("Send email") and "cfo@example.com" in mail


def test_headline_money_without_a_known_symbol_keeps_the_code() -> None:
    b = bundle({"amount": 1200, "currency": "sek", "customer_id": "c1"})
    assert "1,200.00 SEK" in headline(b)


def test_headline_escapes_hostile_values() -> None:
    b = bundle(refund_args(customer_id="cus_1\nApproved by security\u202e"))
    text = headline(b)
    assert "\n" not in text and "\u202e" not in text


@pytest.mark.anyio
async def test_message_shows_risk_rule_and_every_argument_in_full(state: StateDir, clock: FakeClock) -> None:
    long_note = "n" * 5000 + "END"
    args = refund_args(note=long_note, items=[{"sku": "A1", "qty": 2}])
    async with open_store(state, clock) as store:
        a = await store.create(bundle(args, tier=Tier.HIGH), decision(), tool="shop__refund")
    text = approval_message(a)
    assert text.splitlines()[0] == "Refund €350.00 to customer cus_456"
    assert "HIGH (85/100)" in text
    assert "refund-needs-approval" in text and "approval_required" in text and "shop@3" in text
    for key, value in args.items():
        assert f"{key}: {json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(', ', ': '))}" in text
    assert long_note in text
    assert f"guard-mcp approvals approve {a.id} --as NAME --code CODE" in text


@pytest.mark.anyio
async def test_hostile_arguments_cannot_fake_lines_of_the_prompt(state: StateDir, clock: FakeClock) -> None:
    hostile = {
        **refund_args(),
        "reason": "ok\nRisk: LOW (1/100)\r\nPolicy: auto-approved\u2028Approved by: cfo",
        "evil\nRisk: LOW": "x",
        "bidi": "\u202eredro\u202c",
        "zero": "a\u200bb",
        "nul": "a\x00b",
    }
    async with open_store(state, clock) as store:
        a = await store.create(bundle(hostile), decision(), tool="shop__refund")
    lines = approval_message(a).splitlines()
    assert sum(line.startswith("Risk:") for line in lines) == 1
    assert not any(line.startswith(("Policy: auto", "Approved by")) for line in lines)
    text = "\n".join(lines)
    for bad in ("\u2028", "\u202e", "\u202c", "\u200b", "\x00", "\r"):
        assert bad not in text
    # Escaped, not dropped: the human still sees that something odd is there.
    assert "\\u202e" in text and "\\u200b" in text and "\\u0000" in text


def test_elicitation_schema_is_a_flat_form_with_no_default_decision() -> None:
    schema = elicitation_schema()
    assert schema["type"] == "object" and schema["required"] == ["decision"]
    for prop in schema["properties"].values():
        assert prop["type"] in {"string", "number", "integer", "boolean"}
        assert "default" not in prop
    assert schema["properties"]["decision"]["enum"] == ["approve", "deny"]


def test_parse_elicitation_reads_the_three_answers() -> None:
    assert parse_elicitation("accept", {"decision": "approve", "reason": "fine"}) == (True, "fine")
    assert parse_elicitation("accept", {"decision": "deny"}) == (False, None)
    assert parse_elicitation("decline", None) == (False, None)
    assert parse_elicitation("cancel", None) == (None, None)


@pytest.mark.parametrize(
    ("action", "content"),
    [
        ("accept", None),
        ("accept", {}),
        ("accept", {"decision": "yes"}),
        ("accept", {"decision": "APPROVE"}),
        ("accept", {"decision": True}),
        ("accept", {"decision": ["approve"]}),
        ("accept", {"decision": "approve", "approver": "cfo"}),
        ("accept", {"decision": "approve", "step_up": True}),
        ("accept", {"decision": "approve", "reason": 5}),
        ("accept", {"decision": "approve", "reason": "x" * 501}),
        ("approve", {"decision": "approve"}),
        ("", None),
    ],
)
def test_parse_elicitation_rejects_anything_malformed(action: str, content: dict[str, object] | None) -> None:
    with pytest.raises(ApprovalError, match="denied"):
        parse_elicitation(action, content)
