"""Properties over hostile input: whatever the agent sends, the prompt keeps its shape and the
stored approval binds exactly the payload that was shown."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import anyio
from _approvals_support import bundle, decision, open_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard_mcp._approvals import Approval, ApprovalState, approval_message, headline
from guard_mcp._canonical import payload_hash
from guard_mcp._clock import FakeClock
from guard_mcp._models import Tier
from guard_mcp._state import StateDir

_UNSAFE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8
)
arguments = st.dictionaries(st.text(max_size=20), values, max_size=6)


def _approval(args: dict[str, Any], tier: Tier) -> Approval:
    b = bundle(args, tier=tier, resource=None)
    return Approval(
        id="apr_" + "a" * 26,
        request_id="r",
        bundle=b,
        payload_hash=b.payload_hash,
        tool="shop__refund",
        action=b.action,
        rule_id="rule",
        policy="shop@1",
        group="finance",
        step_up=tier is Tier.HIGH,
        created=0.0,
        deadline=60.0,
        state=ApprovalState.PENDING,
        approver=None,
        reason=None,
        decided_at=None,
        consumed=False,
        session=None,
        escalated=False,
        policy_reason="approval_required",
    )


@settings(max_examples=150, deadline=None)
@given(args=arguments, tier=st.sampled_from([Tier.MEDIUM, Tier.HIGH]))
def test_prompt_has_one_line_per_argument_and_no_invisible_characters(args: dict[str, Any], tier: Tier) -> None:
    message = approval_message(_approval(args, tier))
    lines = message.split("\n")
    fixed = 7 if tier is Tier.HIGH else 6  # headline, risk, policy, tool, "Arguments", footer (+ step-up)
    assert len(lines) == fixed + len(args)
    assert not any(unicodedata.category(ch) in _UNSAFE for line in lines for ch in line)
    assert "\n" not in headline(_approval(args, tier).bundle)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=arguments)
def test_the_stored_approval_binds_exactly_the_payload_shown(tmp_path: Path, args: dict[str, Any]) -> None:
    async def roundtrip() -> None:
        state = StateDir(tmp_path / "state").ensure()
        async with open_store(state, FakeClock()) as store:
            created = await store.create(bundle(args), decision(), tool="shop__refund")
            restored = await store.get(created.id)
            assert restored is not None
            assert payload_hash(restored.bundle.arguments) == created.payload_hash == payload_hash(args)
            await store.decide(created.id, approve=True, approver="local:ops")
            assert await store.consume(created.id, payload_hash=payload_hash(args))

    anyio.run(roundtrip)
