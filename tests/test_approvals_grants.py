from __future__ import annotations

import pytest
from _approvals_support import bundle, code_at, decision, on_both_backends, open_store, refund_args

from guard_mcp._clock import FakeClock
from guard_mcp._errors import ApprovalError
from guard_mcp._models import Tier
from guard_mcp._state import StateDir

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures(on_both_backends.__name__)]
TOOL = "shop__refund"


async def test_a_tool_grant_covers_medium_calls_in_its_session_and_records_each_use(
    state: StateDir, clock: FakeClock
) -> None:
    async with open_store(state, clock, preauth_max="1h") as store:
        g = await store.grants.grant(session="sess-1", tool=TOOL, duration=1800, granted_by="local:ops")
        first = bundle(request_id="r1")
        second = bundle(refund_args(90.0), request_id="r2")
        assert await store.grants.check(first, decision(), TOOL, "sess-1") == g.id
        assert await store.grants.check(second, decision(), TOOL, "sess-1") == g.id
        uses = await store.grants.uses(g.id)
        assert [(u.request_id, u.payload_hash) for u in uses] == [
            ("r1", first.payload_hash),
            ("r2", second.payload_hash),
        ]
        [listed] = await store.grants.list()
        assert listed.uses == 2


async def test_a_grant_never_covers_high_unknown_risk_or_step_up(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        g = await store.grants.grant(session="sess-1", tool=TOOL, duration=600, granted_by="local:ops")
        await store.grants.grant(session="sess-1", group="finance", duration=600, granted_by="local:ops")
        assert await store.grants.check(bundle(tier=Tier.HIGH), decision(), TOOL, "sess-1") is None
        assert await store.grants.check(bundle(tier=None), decision(), TOOL, "sess-1") is None
        assert await store.grants.check(bundle(), decision(step_up=True), TOOL, "sess-1") is None
        assert await store.grants.uses(g.id) == []


async def test_a_grant_stays_in_its_session_tool_and_time(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        await store.grants.grant(session="sess-1", tool=TOOL, duration=600, granted_by="local:ops")
        assert await store.grants.check(bundle(session="sess-2"), decision(), TOOL, "sess-2") is None
        assert await store.grants.check(bundle(session=None), decision(), TOOL, None) is None
        # The bundle says which session it came from; a caller cannot borrow another's grant.
        assert await store.grants.check(bundle(session="sess-2"), decision(), TOOL, "sess-1") is None
        assert await store.grants.check(bundle(), decision(), "shop__delete_customer", "sess-1") is None
        clock.advance(600)
        assert await store.grants.check(bundle(), decision(), TOOL, "sess-1") is None


async def test_a_group_grant_covers_that_groups_rules_only(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        g = await store.grants.grant(session="sess-1", group="support", duration=600, granted_by="local:ops")
        assert await store.grants.check(bundle(), decision(group="support"), "crm__note", "sess-1") == g.id
        assert await store.grants.check(bundle(), decision(group="finance"), "crm__note", "sess-1") is None


async def test_revoked_grants_stop_at_once(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        g = await store.grants.grant(session="sess-1", tool=TOOL, duration=600, granted_by="local:ops")
        revoked = await store.grants.revoke(g.id)
        assert revoked.revoked_at == clock.now()
        assert await store.grants.check(bundle(), decision(), TOOL, "sess-1") is None
        assert await store.grants.list() == []
        assert [x.id for x in await store.grants.list(active_only=False)] == [g.id]
        with pytest.raises(ApprovalError, match="unknown grant"):
            await store.grants.revoke("grt_nope")


async def test_grant_bounds_are_enforced(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, preauth_max="30m") as store:
        with pytest.raises(ApprovalError, match="at most 1800s"):
            await store.grants.grant(session="sess-1", tool=TOOL, duration=1801, granted_by="local:ops")
        with pytest.raises(ApprovalError, match="more than 0"):
            await store.grants.grant(session="sess-1", tool=TOOL, duration=0, granted_by="local:ops")
        with pytest.raises(ApprovalError, match="exactly one"):
            await store.grants.grant(session="sess-1", tool=TOOL, group="finance", duration=60, granted_by="x")
        with pytest.raises(ApprovalError, match="exactly one"):
            await store.grants.grant(session="sess-1", duration=60, granted_by="x")
        with pytest.raises(ApprovalError, match="session id"):
            await store.grants.grant(session="", tool=TOOL, duration=60, granted_by="x")
        assert await store.grants.list(active_only=False) == []


async def test_a_named_grant_needs_a_valid_code_of_that_group(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        with pytest.raises(ApprovalError, match="not in group `support`"):
            await store.grants.grant(
                session="s", group="support", duration=60, granted_by="bob", totp_code=code_at(secret, clock.now())
            )
        g = await store.grants.grant(
            session="s", group="finance", duration=60, granted_by="bob", totp_code=code_at(secret, clock.now())
        )
        assert g.granted_by == "bob"
        with pytest.raises(ApprovalError, match="already used"):
            await store.grants.grant(
                session="s", tool=TOOL, duration=60, granted_by="bob", totp_code=code_at(secret, clock.now())
            )
