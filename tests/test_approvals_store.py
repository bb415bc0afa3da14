from __future__ import annotations

from functools import partial

import anyio
import pytest
from _approvals_support import backend_url, bundle, code_at, decision, on_both_backends, open_store, refund_args, tamper

from guard_mcp._approvals import Approval, ApprovalState, ApprovalUnverified, Channel, InBandRefused
from guard_mcp._approvals._record import new_id
from guard_mcp._canonical import payload_hash
from guard_mcp._clock import FakeClock
from guard_mcp._errors import ApprovalError
from guard_mcp._models import Effect, Tier
from guard_mcp._state import StateDir

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures(on_both_backends.__name__)]


async def test_create_persists_a_pending_approval_bound_to_the_payload(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, expire="2h") as store:
        b = bundle()
        a = await store.create(b, decision(), tool="shop__refund")
        assert a.state is ApprovalState.PENDING
        assert a.payload_hash == payload_hash(b.arguments)
        assert a.deadline - a.created == store.config.expire
        assert a.group == "finance" and a.tool == "shop__refund" and a.session == "sess-1"
        assert await store.get(a.id) == a


async def test_rule_ttl_overrides_the_configured_expiry(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(ttl=90), tool="shop__refund")
        assert a.deadline == clock.now() + 90


async def test_only_approve_decisions_with_an_honest_payload_hash_create_approvals(
    state: StateDir, clock: FakeClock
) -> None:
    async with open_store(state, clock) as store:
        with pytest.raises(ApprovalError, match="does not ask for approval"):
            await store.create(bundle(), decision(effect=Effect.ALLOW), tool="shop__refund")
        lying = bundle().model_copy(update={"payload_hash": payload_hash(refund_args(18.0))})
        with pytest.raises(ApprovalError, match="does not match its arguments"):
            await store.create(lying, decision(), tool="shop__refund")
        assert await store.list() == []


async def test_high_risk_always_needs_step_up(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(tier=Tier.HIGH), decision(step_up=False), tool="shop__refund")
        assert a.step_up
        with pytest.raises(ApprovalError, match="step-up"):
            await store.decide(a.id, approve=True, approver="local:ops")


async def test_guessed_ids_learn_nothing_and_grant_nothing(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        real = await store.create(bundle(), decision(), tool="shop__refund")
        for guess in (new_id("apr"), real.id[:-1] + "a", "apr_1", "' OR 1=1 --", real.id.upper()):
            if guess == real.id:
                continue
            assert await store.get(guess) is None
            with pytest.raises(ApprovalError, match="unknown approval"):
                await store.decide(guess, approve=True, approver="local:ops")
            assert await store.consume(guess, payload_hash=real.payload_hash) is False
        assert (await store.get(real.id)) == real  # untouched


async def test_a_decision_is_final(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        decided = await store.decide(a.id, approve=True, approver="local:ops", reason="looks right")
        assert decided.state is ApprovalState.APPROVED and decided.approver == "local:ops"
        assert decided.decided_at == clock.now()
        with pytest.raises(ApprovalError, match="already approved"):
            await store.decide(a.id, approve=True, approver="local:ops")
        with pytest.raises(ApprovalError, match="already approved"):
            await store.decide(a.id, approve=False, approver="local:mallory")
        after = await store.get(a.id)
        assert after is not None and after.state is ApprovalState.APPROVED and after.approver == "local:ops"


async def test_two_hour_expiry_denies_and_cannot_be_approved(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, expire="2h") as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        clock.advance(2 * 3600)
        with pytest.raises(ApprovalError, match="expired"):
            await store.decide(a.id, approve=True, approver="local:ops")
        after = await store.get(a.id)
        assert after is not None and after.state is ApprovalState.EXPIRED
        assert await store.consume(a.id, payload_hash=a.payload_hash) is False


async def test_approval_is_consumed_once_and_only_by_its_own_payload(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        await store.decide(a.id, approve=True, approver="local:ops")
        # Approve a €350 refund, then try to run it with one argument changed.
        for swapped in (refund_args(3500.0), refund_args(customer_id="cus_999"), {**refund_args(), "note": "x"}):
            assert await store.consume(a.id, payload_hash=payload_hash(swapped)) is False
        assert await store.consume(a.id, payload_hash=a.payload_hash) is True
        assert await store.consume(a.id, payload_hash=a.payload_hash) is False
        after = await store.get(a.id)
        assert after is not None and after.consumed


async def test_pending_denied_and_cancelled_approvals_never_execute(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        pending = await store.create(bundle(request_id="r1"), decision(), tool="shop__refund")
        denied = await store.create(bundle(request_id="r2"), decision(), tool="shop__refund")
        await store.decide(denied.id, approve=False, approver="local:ops")
        for a in (pending, denied):
            assert await store.consume(a.id, payload_hash=a.payload_hash) is False


async def test_client_disconnect_cancels_even_an_approved_unexecuted_call(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        waiting = await store.create(bundle(request_id="r1"), decision(), tool="shop__refund")
        approved = await store.create(bundle(request_id="r2"), decision(), tool="shop__refund")
        await store.decide(approved.id, approve=True, approver="local:ops")
        await store.cancel(waiting.id, "client_disconnected")
        await store.cancel(approved.id, "client_disconnected")
        for a in (waiting, approved):
            after = await store.get(a.id)
            assert after is not None and after.state is ApprovalState.CANCELLED
            assert await store.consume(a.id, payload_hash=a.payload_hash) is False
        # A human arriving late at the terminal cannot revive it.
        with pytest.raises(ApprovalError, match="already cancelled"):
            await store.decide(waiting.id, approve=True, approver="local:ops")


async def test_cancel_leaves_executed_approvals_alone(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        await store.decide(a.id, approve=True, approver="local:ops")
        assert await store.consume(a.id, payload_hash=a.payload_hash)
        await store.cancel(a.id, "client_disconnected")
        after = await store.get(a.id)
        assert after is not None and after.state is ApprovalState.APPROVED and after.consumed
        with pytest.raises(ApprovalError, match="unknown approval"):
            await store.cancel(new_id("apr"), "client_disconnected")


async def test_pending_approvals_survive_a_restart(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        b = await store.create(bundle(request_id="r2"), decision(), tool="shop__refund")
        await store.decide(b.id, approve=True, approver="local:ops")
    async with open_store(state, clock) as store:
        assert [x.id for x in await store.list(states=[ApprovalState.PENDING])] == [a.id]
        restored = await store.get(a.id)
        assert restored == a
        decided = await store.decide(a.id, approve=True, approver="local:ops")
        assert decided.state is ApprovalState.APPROVED
        # Approved before the restart, executable once after it, and no more.
        assert await store.consume(b.id, payload_hash=b.payload_hash)
        assert not await store.consume(b.id, payload_hash=b.payload_hash)


async def test_two_processes_racing_approve_and_deny_exactly_one_wins(state: StateDir, clock: FakeClock) -> None:
    # Two stores, two connections on one database file: what two `guard-mcp approvals` processes do.
    async with open_store(state, clock) as first, open_store(state, clock) as second:
        ids = [(await first.create(bundle(request_id=f"r{i}"), decision(), tool="shop__refund")).id for i in range(12)]
        results: dict[tuple[str, str], bool] = {}

        async def attempt(store_name: str, approval_id: str, approve: bool) -> None:
            store = first if store_name == "first" else second
            try:
                await store.decide(approval_id, approve=approve, approver=f"local:{store_name}")
            except ApprovalError:
                results[(approval_id, store_name)] = False
            else:
                results[(approval_id, store_name)] = True

        async with anyio.create_task_group() as tg:
            for i, approval_id in enumerate(ids):
                # Alternate who approves, so both orders of arrival are exercised.
                tg.start_soon(attempt, "first", approval_id, i % 2 == 0)
                tg.start_soon(attempt, "second", approval_id, i % 2 == 1)
        for i, approval_id in enumerate(ids):
            wins = [name for name in ("first", "second") if results[(approval_id, name)]]
            assert len(wins) == 1
            final = await second.get(approval_id)
            assert final is not None and final.approver == f"local:{wins[0]}"
            approved_by_winner = (wins[0] == "first") == (i % 2 == 0)
            assert final.state is (ApprovalState.APPROVED if approved_by_winner else ApprovalState.DENIED)


async def test_consume_races_between_processes_run_the_call_once(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as first, open_store(state, clock) as second:
        a = await first.create(bundle(), decision(), tool="shop__refund")
        await first.decide(a.id, approve=True, approver="local:ops")
        outcomes: list[bool] = []

        async def run(store_index: int) -> None:
            outcomes.append(await (first, second)[store_index % 2].consume(a.id, payload_hash=a.payload_hash))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(run, i)
        assert sorted(outcomes) == [False] * 7 + [True]


async def test_expire_due_expires_each_overdue_approval_once(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, expire="2h") as first, open_store(state, clock, expire="2h") as second:
        short = await first.create(bundle(request_id="r1"), decision(ttl=60), tool="shop__refund")
        long = await first.create(bundle(request_id="r2"), decision(), tool="shop__refund")
        assert await first.expire_due() == []
        clock.advance(60)
        expired = await first.expire_due() + await second.expire_due()
        assert [a.id for a in expired] == [short.id]
        assert expired[0].state is ApprovalState.EXPIRED
        current = await second.get(long.id)
        assert current is not None and current.state is ApprovalState.PENDING


async def test_escalation_reroutes_once_after_the_configured_time(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, escalate_after="10m", escalate_to="managers") as store:
        a = await store.create(bundle(), decision(group="finance"), tool="shop__refund")
        clock.advance(599)
        assert await store.escalate_due() == []
        clock.advance(1)
        escalated = await store.escalate_due()
        assert [e.id for e in escalated] == [a.id]
        assert escalated[0].group == "managers" and escalated[0].escalated_from == "finance" and escalated[0].escalated
        assert await store.escalate_due() == []
        clock.advance(3600)
        assert await store.escalate_due() == []


async def test_escalation_skips_decided_approvals_and_is_off_by_default(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, escalate_after="10m", escalate_to="managers") as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        await store.decide(a.id, approve=False, approver="local:ops")
        clock.advance(601)
        assert await store.escalate_due() == []
    async with open_store(state, clock) as store:
        await store.create(bundle(request_id="r2"), decision(), tool="shop__refund")
        clock.advance(10 * 3600)
        assert await store.escalate_due() == []


async def test_find_reusable_only_returns_this_principals_approved_unspent_payload(
    state: StateDir, clock: FakeClock
) -> None:
    async with open_store(state, clock, expire="1h") as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        reusable = partial(
            store.find_reusable, tool="shop__refund", payload_hash=a.payload_hash, principal="alice@laptop"
        )
        assert await reusable() is None  # still pending
        await store.decide(a.id, approve=True, approver="local:ops")
        found = await reusable()
        assert found is not None and found.id == a.id
        assert await reusable(principal="mallory") is None
        assert await reusable(tool="shop__refund_all") is None
        assert await reusable(payload_hash=payload_hash(refund_args(351.0))) is None
        assert await store.consume(a.id, payload_hash=a.payload_hash)
        assert await reusable() is None
        b = await store.create(bundle(request_id="r2"), decision(), tool="shop__refund")
        await store.decide(b.id, approve=True, approver="local:ops")
        clock.advance(3600)
        assert await reusable() is None
        assert not await store.consume(b.id, payload_hash=b.payload_hash)


async def test_an_approval_given_without_step_up_does_not_run_the_call_once_it_needs_step_up(
    state: StateDir, clock: FakeClock
) -> None:
    # Approved (say, with a click in the agent's client) under a rule without step-up; the policy is
    # then tightened to step-up before the agent repeats the call: the old approval must not run it.
    from types import SimpleNamespace

    from _audit_helpers import open_log

    from guard_mcp._config import GuardConfig
    from guard_mcp._pause import open_approval_stage

    store = {"store": backend_url()} if backend_url() else {}
    config = GuardConfig.model_validate({"guard": {"approvals": {"wait": "1ms"}, **store}})
    audit = await open_log(state, clock)
    stage = await open_approval_stage(config=config, state=state, clock=clock, audit=audit)
    try:
        first = await stage.store.create(bundle(), decision(), tool="shop__refund")
        await stage.store.decide(first.id, approve=True, approver="in-band:agent", channel=Channel.IN_BAND)
        entry = SimpleNamespace(name="shop__refund", upstream="shop", schema=SimpleNamespace(redact=[]))
        ctx = SimpleNamespace(request_state=None, input_responses=None, session=None)
        outcome = await stage.run(
            entry,  # type: ignore[arg-type]
            bundle(request_id="req-2"),
            decision(step_up=True),
            ctx,
            pending_events=[],
        )
    finally:
        await stage.close()
        await audit.close()
    assert outcome.result is not None and outcome.approver is None  # a new, step-up approval is pending
    after = await _reread(state, clock, first.id)
    assert after is not None and not after.consumed


async def _reread(state: StateDir, clock: FakeClock, approval_id: str) -> Approval | None:
    async with open_store(state, clock) as store:
        return await store.get(approval_id)


async def test_overlong_reason_is_refused(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        with pytest.raises(ApprovalError, match="reason"):
            await store.decide(a.id, approve=False, approver="local:ops", reason="x" * 10_000)
        after = await store.get(a.id)
        assert after is not None and after.state is ApprovalState.PENDING


async def test_damaged_record_is_a_state_error_not_an_approval(state: StateDir, clock: FakeClock) -> None:
    from guard_mcp._errors import StateError

    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
    tamper(state, "UPDATE approvals SET bundle = '{}' WHERE id = ?", (a.id,))
    async with open_store(state, clock) as store:
        with pytest.raises(StateError, match="damaged"):
            await store.get(a.id)


# -- step-up --------------------------------------------------------------------------------------


async def test_step_up_is_refused_in_band_even_with_a_valid_code(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        a = await store.create(bundle(tier=Tier.HIGH), decision(step_up=True), tool="shop__refund")
        with pytest.raises(ApprovalError, match="cannot be approved from the agent's client"):
            await store.decide(
                a.id, approve=True, approver="bob", totp_code=code_at(secret, clock.now()), channel=Channel.IN_BAND
            )
        with pytest.raises(ApprovalError, match="--as NAME --code CODE"):
            await store.decide(a.id, approve=True, approver="local:ops")
        still = await store.get(a.id)
        assert still is not None and still.state is ApprovalState.PENDING
        ok = await store.decide(a.id, approve=True, approver="bob", totp_code=code_at(secret, clock.now()))
        assert ok.state is ApprovalState.APPROVED and ok.approver == "bob"


async def test_step_up_can_be_denied_in_band_without_a_code(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(tier=Tier.HIGH), decision(step_up=True), tool="shop__refund")
        denied = await store.decide(a.id, approve=False, approver="client:alice", channel=Channel.IN_BAND)
        assert denied.state is ApprovalState.DENIED


async def test_attack_an_in_band_answer_never_approves_an_authenticated_or_step_up_approval(
    state: StateDir, clock: FakeClock
) -> None:
    """The store refuses it whatever called it, with the reason the denial carries; the approval stays
    open for a signed-in approver."""
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        signed_in_only = decision().model_copy(update={"authenticated": True})
        authenticated = await store.create(bundle(), signed_in_only, tool="mail__send")
        step_up = await store.create(
            bundle(tier=Tier.HIGH, request_id="req-2"), decision(step_up=True), tool="shop__refund"
        )
        assert authenticated.authenticated and not step_up.authenticated
        for approval, reason in ((authenticated, "authenticated_approval_required"), (step_up, "step_up_required")):
            for kw in ({}, {"totp_code": code_at(secret, clock.now())}):  # a valid code does not make it out of band
                with pytest.raises(InBandRefused) as refused:
                    await store.decide(approval.id, approve=True, approver="bob", channel=Channel.IN_BAND, **kw)  # type: ignore[arg-type]
                assert refused.value.reason == reason
            still = await store.get(approval.id)
            assert still is not None and still.state is ApprovalState.PENDING
        approved = await store.decide(authenticated.id, approve=True, approver="bob")  # the CLI: signed in
        assert approved.state is ApprovalState.APPROVED and approved.factor == "cli"
        assert await store.consume(authenticated.id, payload_hash=authenticated.payload_hash, authenticated=True)


async def test_attack_clearing_the_authenticated_flag_in_the_database_still_runs_nothing_approved_in_band(
    state: StateDir, clock: FakeClock
) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision().model_copy(update={"authenticated": True}), tool="mail__send")
        tamper(state, "UPDATE approvals SET authenticated = 0 WHERE id = ?", (a.id,))
        taken = await store.decide(a.id, approve=True, approver="in-band:agent", channel=Channel.IN_BAND)
        assert taken.state is ApprovalState.APPROVED and taken.verified  # the row no longer says so ...
        with pytest.raises(ApprovalUnverified, match="needs a signed-in approver"):
            # ... the call that spends it does (its rule), and the approval is cancelled
            await store.consume(a.id, payload_hash=a.payload_hash, authenticated=True)
        after = await store.get(a.id)
        assert after is not None and after.state is ApprovalState.CANCELLED and not after.consumed


async def test_step_up_needs_an_approver_of_the_owner_group(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("carol", "support")
        a = await store.create(bundle(tier=Tier.HIGH), decision(step_up=True, group="finance"), tool="shop__refund")
        with pytest.raises(ApprovalError, match="not in group `finance`"):
            await store.decide(a.id, approve=True, approver="carol", totp_code=code_at(secret, clock.now()))
        with pytest.raises(ApprovalError, match="not enrolled"):
            await store.decide(a.id, approve=True, approver="mallory", totp_code="123456")
        await store.approvers.enrol("dave", "finance")
        with pytest.raises(ApprovalError, match="wrong"):  # carol's code is not dave's
            await store.decide(a.id, approve=True, approver="dave", totp_code=code_at(secret, clock.now()))


async def test_totp_code_cannot_be_replayed_on_another_approval(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store, open_store(state, clock) as other_process:
        secret, _ = await store.approvers.enrol("bob", "finance")
        first = await store.create(bundle(request_id="r1", tier=Tier.HIGH), decision(), tool="shop__refund")
        second = await store.create(bundle(request_id="r2", tier=Tier.HIGH), decision(), tool="shop__refund")
        code = code_at(secret, clock.now())
        await store.decide(first.id, approve=True, approver="bob", totp_code=code)
        clock.advance(5)  # still inside the same 30-second window
        with pytest.raises(ApprovalError, match="already used"):
            await other_process.decide(second.id, approve=True, approver="bob", totp_code=code)
        # An older code from the drift window is no better once a newer one was spent.
        with pytest.raises(ApprovalError, match="already used"):
            await store.decide(second.id, approve=True, approver="bob", totp_code=code_at(secret, clock.now(), -1))
        clock.advance(30)
        ok = await store.decide(second.id, approve=True, approver="bob", totp_code=code_at(secret, clock.now()))
        assert ok.state is ApprovalState.APPROVED


async def test_escalated_step_up_can_be_approved_by_the_new_group(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, escalate_after="15m", escalate_to="managers") as store:
        secret, _ = await store.approvers.enrol("erin", "managers")
        a = await store.create(bundle(tier=Tier.HIGH), decision(group="finance"), tool="shop__refund")
        with pytest.raises(ApprovalError, match="not in group"):
            await store.decide(a.id, approve=True, approver="erin", totp_code=code_at(secret, clock.now()))
        clock.advance(15 * 60)
        await store.escalate_due()
        ok = await store.decide(a.id, approve=True, approver="erin", totp_code=code_at(secret, clock.now()))
        assert ok.state is ApprovalState.APPROVED and ok.group == "managers"
