"""Stage 5: pause a call that needs a human, in whatever way the client can follow, resume once.

- handshake-era client with elicitation: a form elicitation while the call waits, raced against an
  out-of-band decision from the CLI, with progress heartbeats;
- 2026-07-28 client with elicitation: an `InputRequiredResult` and a sealed `requestState`; the
  retry is accepted once, for exactly this call. A client that declares URL mode is asked to open
  the console's page, a form-only one gets the form (for step-up and `approval: authenticated`, a
  form that only carries the link): the retry after a link waits for the decision as a call over
  the handshake does, and its answer decides nothing;
- any client, and every step-up (HIGH risk) approval: wait up to `approvals.wait` for an
  out-of-band decision with progress heartbeats, then answer `pending_approval`; repeating the
  identical call after approval executes it exactly once.
An approval authorises one execution of one payload: `ApprovalStore.consume` is the only door, and
it opens only for a decision whose record verifies. The repeated call also needs the decision on
record in the audit log. A decision or grant that does not verify is refused as
`approval_unverified`, and the refusal is audited.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types

from guard_mcp._approvals import (
    Approval,
    ApprovalState,
    ApprovalStore,
    ApprovalUnverified,
    Channel,
    InBandRefused,
    approval_message,
    elicitation_schema,
    escape_text,
    headline,
    needs_step_up,
    parse_elicitation,
    wait_for_decision,
)
from guard_mcp._audit import AuditLog, EventIn, load_audit_key
from guard_mcp._catalog import CatalogEntry
from guard_mcp._clock import Clock
from guard_mcp._config import GuardConfig
from guard_mcp._errors import ApprovalError
from guard_mcp._models import ActionBundle, Decision
from guard_mcp._request_state import RequestStateError, RequestStateSealer
from guard_mcp._results import deny_result, pending_result
from guard_mcp._state import StateDir

__all__ = ["ApprovalStage", "Outcome", "open_approval_stage"]

log = logging.getLogger("guard_mcp.approvals")

INPUT_KEY = "approval"
_FINAL_REASONS = {
    ApprovalState.DENIED: ("approval_denied", "the approver denied this call"),
    ApprovalState.EXPIRED: ("approval_expired", "no approver decided before the deadline"),
    ApprovalState.CANCELLED: ("approval_cancelled", "the approval was cancelled"),
}


@dataclass
class Outcome:
    """Either a result to return now, or the approver under whose authority the call proceeds."""

    result: types.CallToolResult | types.InputRequiredResult | None
    approver: str | None = None
    events: Sequence[EventIn] = field(default_factory=list)


def _can_elicit(session: Any) -> bool:
    caps = getattr(session, "client_capabilities", None)
    return caps is not None and getattr(caps, "elicitation", None) is not None


def _declares_url(session: Any) -> bool:
    """The client declared URL-mode elicitation, in either era."""
    caps = getattr(session, "client_capabilities", None)
    return getattr(getattr(caps, "elicitation", None), "url", None) is not None


def _can_open_url(session: Any) -> bool:
    """A handshake-era client that declared URL-mode elicitation (it can be sent a page to open)."""
    return _declares_url(session) and bool(getattr(session, "can_send_request", False))


class ApprovalStage:
    def __init__(
        self,
        *,
        config: GuardConfig,
        store: ApprovalStore,
        sealer: RequestStateSealer,
        audit: AuditLog,
        clock: Clock,
        poll: float = 0.25,
    ) -> None:
        self.config = config
        self.store = store
        self.sealer = sealer
        self.audit = audit
        self.clock = clock
        self.poll = poll
        # checks the audit events that put an out-of-band decision on record
        self._audit_key = load_audit_key(audit.state)
        # Set when the guard stops on its own: a prompt cut short then was not left by its client.
        self.stop_reason: str | None = None
        # The approval's page in the web console (guard_mcp/_console), while one is served.
        self.console_link: Callable[[str], str | None] | None = None

    async def close(self) -> None:
        await self.store.close()
        await self.sealer.close()

    def _ev(self, kind: str, bundle: ActionBundle, entry: CatalogEntry, data: dict[str, Any]) -> EventIn:
        return EventIn(
            kind,
            request_id=bundle.request_id,
            actor=bundle.actor.principal,
            upstream=entry.upstream,
            tool=entry.name,
            data=data,
        )

    async def run(
        self, entry: CatalogEntry, bundle: ActionBundle, decision: Decision, ctx: Any, pending_events: Sequence[EventIn]
    ) -> Outcome:
        events = list(pending_events)
        if ctx.request_state is not None or ctx.input_responses:
            return await self._resume(entry, bundle, decision, ctx, events)

        step_up = needs_step_up(bundle, decision)
        reusable = await self.store.find_reusable(
            tool=entry.name, payload_hash=bundle.payload_hash, principal=bundle.actor.principal, step_up=step_up
        )
        if reusable is not None:
            try:
                # a verified decision made out of band must also be on record before it runs
                missing = await self.store.decision_on_record(reusable, self._audit_key) if reusable.verified else None
                if missing is not None:  # likely the terminal has not recorded it yet: not cancelled
                    return await self._unverified(
                        entry,
                        bundle,
                        events,
                        {"approval_id": reusable.id},
                        missing,
                        "the approval's decision is not on record yet; repeat this call in a moment",
                    )
                spent = await self.store.consume(
                    reusable.id, payload_hash=bundle.payload_hash, step_up=step_up, authenticated=decision.authenticated
                )
            except ApprovalUnverified as exc:
                return await self._unverified(entry, bundle, events, {"approval_id": exc.record_id}, str(exc))
            if spent:
                events.append(
                    self._ev(
                        "approval.consumed",
                        bundle,
                        entry,
                        {
                            "approval_id": reusable.id,
                            "approver": reusable.approver,
                            "factor": reusable.factor,
                            "request_id_of_approval": reusable.request_id,
                        },
                    )
                )
                return Outcome(None, reusable.approver, events)

        try:
            grant = await self.store.grants.check(bundle, decision, entry.name, bundle.actor.session)
        except ApprovalUnverified as exc:
            return await self._unverified(entry, bundle, events, {"grant_id": exc.record_id}, str(exc))
        if grant is not None:
            events.append(self._ev("approval.preauthorized", bundle, entry, {"grant_id": grant}))
            return Outcome(None, f"grant:{grant}", events)

        # the log's copy quotes redacted arguments as their digests (the prompt shows them), and so does
        # the approval's once it is finished
        redacted = self.audit.redact(bundle.arguments, entry.schema.redact)
        approval = await self.store.create(bundle, decision, tool=entry.name, redacted=redacted)
        events.append(
            self._ev(
                "approval.requested",
                bundle,
                entry,
                {
                    "approval_id": approval.id,
                    "group": approval.group,
                    "deadline": approval.deadline,
                    "step_up": approval.step_up,
                    "headline": headline(bundle.model_copy(update={"arguments": redacted})),
                },
            )
        )
        await self.audit.append_many(events)  # the question is on record before anyone is asked
        session = ctx.session
        link = self._link(approval.id)
        # never asked in the agent's own client: step-up, or a rule that says `approval: authenticated`
        out_of_band = approval.step_up or decision.authenticated
        stateless = not getattr(session, "can_send_request", False)  # 2026-07-28: no request to the client
        if link is not None and stateless and (_declares_url(session) or (out_of_band and _can_elicit(session))):
            return Outcome(self._input_required(approval, bundle, session, link))
        if link is not None and (_can_open_url(session) or (out_of_band and _can_elicit(session) and not stateless)):
            try:
                record = await self._url_or_wait(approval, session, ctx.rpc_id, link)
            except anyio.get_cancelled_exc_class():
                if not out_of_band:  # asked through the client, as in band: nobody is left to resume it
                    await self._abandon(entry, bundle, approval)
                raise
            return await self._finish(
                entry, bundle, record, step_up=approval.step_up, authenticated=decision.authenticated
            )
        in_band = not out_of_band and _can_elicit(session)
        if in_band and stateless:
            return Outcome(self._input_required(approval, bundle, session, None))
        if in_band:
            try:
                record = await self._elicit_or_wait(approval, session, ctx.rpc_id)
            except anyio.get_cancelled_exc_class():
                await self._abandon(entry, bundle, approval)
                raise
            except InBandRefused as exc:
                return await self._refused(entry, bundle, [], approval, exc)
        else:
            # Left open when the client gives up: the documented way on is to approve out of band
            # and repeat the identical call, which consumes this approval exactly once.
            record = await self._wait(approval, session)
        return await self._finish(entry, bundle, record, step_up=approval.step_up, authenticated=decision.authenticated)

    async def _abandon(self, entry: CatalogEntry, bundle: ActionBundle, approval: Approval) -> None:
        """The client left (or the guard is stopping) while it was being asked: nobody is there to resume
        the call, so its approval is cancelled (an approver arriving late cannot revive it into a later
        execution)."""
        reason = self.stop_reason or "client_disconnected"
        with anyio.CancelScope(shield=True):
            try:
                await self.store.cancel(approval.id, reason)
                await self.audit.append(
                    self._ev(
                        "approval.cancelled",
                        bundle,
                        entry,
                        {
                            "approval_id": approval.id,
                            "reason": reason,
                        },
                    )
                )
            except Exception:  # the approval then expires at its deadline; it is never consumed by this call
                log.exception("could not cancel approval %s after the client left", approval.id)

    # -- the ways of waiting ----------------------------------------------------------------------

    def _link(self, approval_id: str) -> str | None:
        return None if self.console_link is None else self.console_link(approval_id)

    async def _heartbeat(self, session: Any, approval: Approval, elapsed: float) -> None:
        link = self._link(approval.id)
        where = f"{link} or " if link else ""
        with contextlib.suppress(Exception):
            await session.report_progress(  # `total`: clients can draw the countdown to the pending answer
                elapsed,
                self.config.guard.approvals.wait,
                f"waiting for approval {approval.id} ({approval.group}): {where}`guard-mcp approvals approve {approval.id}`",
            )

    def _link_request(self, approval: Approval, session: Any, link: str) -> types.ElicitRequestParams:
        """What asks the user to open the approval's console page: URL mode when the client declared
        it (no secret in the link: the page asks who is there), else a form that carries the link and
        asks nothing (a step-up or `approval: authenticated` call is never decided in the agent's client)."""
        if _declares_url(session):
            return types.ElicitRequestURLParams(
                message=f"Approval needed: {headline(approval.bundle)}. Open the approval page to decide "
                "(sign-in required).",
                url=link,
                elicitation_id=approval.id,
            )
        needs = "sign-in and a second factor" if approval.step_up else "sign-in"
        return types.ElicitRequestFormParams(
            message=f"{approval_message(approval)}\nDecide in the console ({needs} required): {link}",
            requested_schema={"type": "object", "properties": {}},
        )

    async def _url_or_wait(self, approval: Approval, session: Any, rpc_id: Any, link: str) -> Approval:
        """Send the link (`_link_request`), then wait for the decision, whatever the client answered;
        `accept` only means the user agreed to open the page."""

        async def ask() -> Any:
            params = self._link_request(approval, session, link)
            if isinstance(params, types.ElicitRequestURLParams):
                return await session.elicit_url(
                    params.message, params.url, params.elicitation_id, related_request_id=rpc_id
                )
            return await session.elicit_form(params.message, params.requested_schema, related_request_id=rpc_id)

        async with anyio.create_task_group() as tg:

            async def asking() -> None:
                try:
                    log.info("link elicitation for %s: %s", approval.id, (await ask()).action)
                except Exception as exc:  # the wait below still ends with the decision or pending
                    log.info("link elicitation for %s failed: %s", approval.id, exc)

            tg.start_soon(asking)
            record = await self._wait(approval, session)
            tg.cancel_scope.cancel()
        if record.state is not ApprovalState.PENDING and _can_open_url(session):
            with contextlib.suppress(Exception):
                await session.send_elicit_complete(approval.id, related_request_id=rpc_id)
        return record

    async def _wait(self, approval: Approval, session: Any) -> Approval:
        async def tick(elapsed: float) -> None:
            await self._heartbeat(session, approval, elapsed)

        return await wait_for_decision(
            self.store, approval.id, timeout=self.config.guard.approvals.wait, poll=self.poll, on_tick=tick
        )

    async def _elicit_or_wait(self, approval: Approval, session: Any, rpc_id: Any) -> Approval:
        """Ask in the client and watch for an out-of-band decision at the same time; first one wins."""
        answer: list[types.ElicitResult] = []
        waited: list[Approval] = []

        async with anyio.create_task_group() as tg:

            async def elicit() -> None:
                try:
                    # on the call's own stream (streamable HTTP), not the connection's standalone one
                    result = await session.elicit_form(
                        self._message(approval), elicitation_schema(), related_request_id=rpc_id
                    )
                except Exception as exc:  # a client that fails the elicitation still has the CLI path
                    log.info("elicitation for %s failed: %s", approval.id, exc)
                    return
                answer.append(result)
                tg.cancel_scope.cancel()

            async def wait() -> None:
                waited.append(await self._wait(approval, session))
                tg.cancel_scope.cancel()

            tg.start_soon(elicit)
            tg.start_soon(wait)
        record = waited[0] if waited else await self._current(approval.id)
        if answer and record.state is ApprovalState.PENDING:
            record = await self._apply_answer(approval, answer[0].action, answer[0].content, session)
        return record

    def _message(self, approval: Approval) -> str:
        link = self._link(approval.id)
        return approval_message(approval) + (f"\nOr decide in the console: {link}" if link else "")

    def _input_required(
        self, approval: Approval, bundle: ActionBundle, session: Any, link: str | None
    ) -> types.InputRequiredResult:
        """The 2026-07-28 pause: with `link`, the console's page (its answer decides nothing; the retry
        waits), else the in-band form (its answer is the decision)."""
        params: types.ElicitRequestParams
        if link is not None:
            params = self._link_request(approval, session, link)
        else:
            params = types.ElicitRequestFormParams(
                message=self._message(approval), requested_schema=elicitation_schema()
            )
        state = self.sealer.seal(
            approval_id=approval.id,
            tool=approval.tool,
            payload_hash=bundle.payload_hash,
            policy=approval.policy,
            principal=bundle.actor.principal,
            session=None,
            deadline=approval.deadline,
            asked="link" if link else "form",
        )
        return types.InputRequiredResult(
            input_requests={INPUT_KEY: types.ElicitRequest(params=params)}, request_state=state
        )

    async def _resume(
        self, entry: CatalogEntry, bundle: ActionBundle, decision: Decision, ctx: Any, events: list[EventIn]
    ) -> Outcome:
        try:
            sealed = await self.sealer.open(
                ctx.request_state,
                tool=entry.name,
                payload_hash=bundle.payload_hash,
                policy=decision.policy,
                principal=bundle.actor.principal,
                session=None,
            )
        except RequestStateError as exc:
            events.append(self._ev("call.denied", bundle, entry, {"reason": exc.reason, "message": str(exc)}))
            await self.audit.append_many(events)
            return Outcome(deny_result(exc.reason, str(exc), request_id=bundle.request_id))
        approval = await self._current(sealed.approval_id)
        if needs_step_up(bundle, decision) and not approval.step_up:
            # asked before the call became HIGH risk (or its rule asked for step-up): a click in the
            # agent's own client no longer covers it
            message = "this call now needs a named approver with a second factor; call the tool again to ask one"
            events.append(
                self._ev("call.denied", bundle, entry, {"reason": "step_up_required", "approval_id": approval.id})
            )
            await self.audit.append_many(events)
            return Outcome(
                deny_result("step_up_required", message, request_id=bundle.request_id, approval_id=approval.id)
            )
        if sealed.asked == "form" and decision.authenticated and approval.state is ApprovalState.PENDING:
            # asked in the client before its rule said `approval: authenticated`: that answer no longer counts
            message = (
                "this call now needs a signed-in approver (`approval: authenticated`); call the tool again "
                "and decide it in the console or with `guard-mcp approvals approve`"
            )
            events.append(
                self._ev(
                    "call.denied",
                    bundle,
                    entry,
                    {"reason": "authenticated_approval_required", "approval_id": approval.id},
                )
            )
            await self.audit.append_many(events)
            return Outcome(
                deny_result(
                    "authenticated_approval_required", message, request_id=bundle.request_id, approval_id=approval.id
                )
            )
        if sealed.asked == "link":
            # the client was sent the console's page: whatever it answers, the decision is made there
            await self.audit.append_many(events)
            if approval.state is ApprovalState.PENDING:
                approval = await self._wait(approval, ctx.session)
        else:
            response = (ctx.input_responses or {}).get(INPUT_KEY)
            action, content = _response_parts(response)
            if approval.state is ApprovalState.PENDING:
                try:
                    approval = await self._apply_answer(approval, action, content, ctx.session)
                except InBandRefused as exc:
                    return await self._refused(entry, bundle, events, approval, exc)
            await self.audit.append_many(events)
        return await self._finish(
            entry, bundle, approval, step_up=needs_step_up(bundle, decision), authenticated=decision.authenticated
        )

    async def _apply_answer(self, approval: Approval, action: Any, content: Any, session: Any) -> Approval:
        try:
            approve, reason = parse_elicitation(str(action), content if isinstance(content, dict) else None)
        except ApprovalError as exc:
            approve, reason = False, f"malformed answer: {exc}"
        if approve is None:  # dismissed: decides nothing, the approval stays open for the CLI
            return await self._current(approval.id)
        who = "in-band"
        params = getattr(session, "client_params", None)
        if params is not None and params.client_info is not None:
            who = f"in-band:{params.client_info.name[:40]}"
        try:
            return await self.store.decide(
                approval.id, approve=approve, approver=who, reason=reason, channel=Channel.IN_BAND
            )
        except InBandRefused:  # never approved in the agent's client: the caller denies, on record
            raise
        except ApprovalError as exc:  # decided elsewhere first, or expired: the record says which
            log.info("in-band decision on %s refused: %s", approval.id, exc)
            return await self._current(approval.id)

    async def _current(self, approval_id: str) -> Approval:
        record = await self.store.get(approval_id)
        if record is None:
            raise ApprovalError(f"approval `{approval_id}` disappeared")
        return record

    # -- after the wait ----------------------------------------------------------------------------

    async def _unverified(
        self,
        entry: CatalogEntry,
        bundle: ActionBundle,
        events: list[EventIn],
        which: dict[str, str],
        problem: str,
        message: str = "the approval for this call does not verify; call the tool again to ask an approver",
    ) -> Outcome:
        """Refuse a call whose approval or grant is not backed by a record of this guard, on record."""
        log.warning("refused %s: %s", bundle.request_id, problem)
        events.append(
            self._ev("call.denied", bundle, entry, {"reason": ApprovalUnverified.reason, **which, "problem": problem})
        )
        await self.audit.append_many(events)
        return Outcome(deny_result(ApprovalUnverified.reason, message, request_id=bundle.request_id, **which))

    async def _refused(
        self, entry: CatalogEntry, bundle: ActionBundle, events: list[EventIn], approval: Approval, exc: InBandRefused
    ) -> Outcome:
        """An answer in the agent's client tried to approve what only a named or signed-in approver may:
        the call is denied with the store's reason; the approval stays open for the console and the CLI."""
        log.warning("in-band approval of %s refused: %s", approval.id, exc)
        events.append(
            self._ev(
                "call.denied", bundle, entry, {"reason": exc.reason, "approval_id": approval.id, "message": str(exc)}
            )
        )
        await self.audit.append_many(events)
        return Outcome(deny_result(exc.reason, str(exc), request_id=bundle.request_id, approval_id=approval.id))

    async def _finish(
        self, entry: CatalogEntry, bundle: ActionBundle, record: Approval, *, step_up: bool, authenticated: bool
    ) -> Outcome:
        waited = round(self.clock.now() - record.created, 3)
        if record.state is ApprovalState.PENDING:
            await self.audit.append(
                self._ev("approval.pending", bundle, entry, {"approval_id": record.id, "waited_s": waited})
            )
            return Outcome(
                pending_result(
                    record.id,
                    headline(bundle),
                    request_id=bundle.request_id,
                    deadline=record.deadline,
                    link=self._link(record.id),
                )
            )
        decided = self._ev(
            "approval.expired" if record.state is ApprovalState.EXPIRED else "approval.decided",
            bundle,
            entry,
            {
                "approval_id": record.id,
                "state": record.state.value,
                "approver": record.approver,
                "factor": record.factor,
                "reason": record.reason,
                "latency_s": None if record.decided_at is None else round(record.decided_at - record.created, 3),
            },
        )
        if record.state is not ApprovalState.APPROVED:
            reason, message = _FINAL_REASONS[record.state]
            await self.audit.append(decided)
            said = escape_text(record.reason) if record.state is ApprovalState.DENIED and record.reason else None
            if said is not None:  # the console tells the approver the agent reads it
                message += f": {said}"
            return Outcome(
                deny_result(reason, message, request_id=bundle.request_id, approval_id=record.id, approver_reason=said)
            )
        try:
            spent = await self.store.consume(
                record.id, payload_hash=bundle.payload_hash, step_up=step_up, authenticated=authenticated
            )
        except ApprovalUnverified as exc:
            # what the row claims (approver, state) is not written as a decision: no record backs it
            return await self._unverified(entry, bundle, [], {"approval_id": record.id}, str(exc))
        if not spent:
            await self.audit.append(decided)
            return Outcome(
                deny_result(
                    "approval_already_used",
                    "this approval was already used or does not cover these arguments",
                    request_id=bundle.request_id,
                    approval_id=record.id,
                )
            )
        return Outcome(None, record.approver, [decided])

    async def housekeeping(self) -> None:
        """Expire and escalate overdue approvals, auditing each, while the guard runs."""
        while True:
            with contextlib.suppress(Exception):
                for record in await self.store.expire_due():
                    await self.audit.append(
                        EventIn(
                            "approval.expired",
                            request_id=record.request_id,
                            tool=record.tool,
                            data={"approval_id": record.id},
                        )
                    )
                for record in await self.store.escalate_due():
                    await self.audit.append(
                        EventIn(
                            "approval.escalated",
                            request_id=record.request_id,
                            tool=record.tool,
                            data={"approval_id": record.id, "group": record.group},
                        )
                    )
            await anyio.sleep(1.0)


def _response_parts(response: Any) -> tuple[Any, Any]:
    if response is None:
        return "missing", None
    if isinstance(response, dict):
        return response.get("action"), response.get("content")
    return getattr(response, "action", None), getattr(response, "content", None)


async def open_approval_stage(
    *, config: GuardConfig, state: StateDir, clock: Clock, audit: AuditLog, poll: float = 0.25
) -> ApprovalStage:
    store = await ApprovalStore.open(state, clock=clock, config=config.guard.approvals, store=config.guard.store)
    sealer = RequestStateSealer(state, clock, ttl=min(config.guard.approvals.expire, 900.0), store=config.guard.store)
    return ApprovalStage(config=config, store=store, sealer=sealer, audit=audit, clock=clock, poll=poll)
