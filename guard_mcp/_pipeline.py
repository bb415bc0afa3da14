"""The pipeline of one tool call: intercept → validate → score+decide → limits → approve → permit → forward → audit.

Every stage's outcome is appended to the audit log before the next stage acts; the decision (and
the approval, and the permit) are durable before the upstream is called. Anything unexpected
inside the pipeline denies (fail closed), is audited, and reaches the client as a tool result
with a reason code, never as a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import anyio
import mcp_types as types

from guard_mcp._audit import AuditLog, EventIn
from guard_mcp._catalog import Catalog, CatalogEntry, cut_out
from guard_mcp._config import GuardConfig
from guard_mcp._errors import AuditError, UpstreamAuthRequired, UpstreamError
from guard_mcp._forwarded import result_size, without_guard_meta
from guard_mcp._intercept import build_bundle, check_arguments, new_request_id
from guard_mcp._limits import LimitDenial, LimitStage
from guard_mcp._models import ActionBundle, Actor, Decision, Effect
from guard_mcp._permits import MintedPermit, PermitIssuer
from guard_mcp._policy import PolicyEngine
from guard_mcp._relay import ElicitationRelay, InFlight
from guard_mcp._results import deny_result, upstream_error_result
from guard_mcp._store import StoreUnavailable
from guard_mcp._telemetry import Metrics, Tracing, outcome
from guard_mcp._upstreams import UpstreamManager
from guard_mcp.verify import PERMIT_META_KEY

if TYPE_CHECKING:
    from guard_mcp._pause import ApprovalStage

__all__ = ["CallContext", "Pipeline"]

log = logging.getLogger("guard_mcp.pipeline")
UNKNOWN_TOOL_SPAN = "tools/call (unknown tool)"  # the span of a call to a name the guard does not serve


@dataclass
class CallContext:
    """What the pipeline needs from the MCP request, independent of the protocol era."""

    actor: Actor
    session: Any  # mcp ServerSession, scoped to this request (progress, elicitation)
    request_state: str | None = None
    input_responses: dict[str, Any] | None = None
    rpc_id: types.RequestId | None = None  # the client's JSON-RPC id of this tools/call


class Pipeline:
    def __init__(
        self,
        *,
        config: GuardConfig,
        catalog: Catalog,
        policy: PolicyEngine,
        permits: PermitIssuer,
        audit: AuditLog,
        upstreams: UpstreamManager,
        approvals: ApprovalStage | None,
        relay: ElicitationRelay | None = None,
        limits: LimitStage | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.policy = policy
        self.permits = permits
        self.audit = audit
        self.upstreams = upstreams
        self.approvals = approvals
        self.relay = relay
        self.limits = limits
        self.metrics = metrics if metrics is not None else Metrics(config)
        self.tracing = tracing if tracing is not None else Tracing()
        # Calls between their arrival and their result, but for those waiting on a human: with another
        # one in flight the permit's record goes to the writer thread (group commit, the loop free).
        self._in_flight = 0

    async def call(
        self, name: str, arguments: Any, ctx: CallContext
    ) -> types.CallToolResult | types.InputRequiredResult:
        request_id = new_request_id()
        self._in_flight += 1
        try:
            return await self._traced(request_id, name, arguments, ctx)
        finally:
            self._in_flight -= 1

    async def _traced(
        self, request_id: str, name: str, arguments: Any, ctx: CallContext
    ) -> types.CallToolResult | types.InputRequiredResult:
        with self.tracing.call() as span:
            result = await self._call_or_deny(request_id, name, arguments, ctx)
            self.metrics.call(name, result)
            if span is not None:  # tracing on: the outcome on the call's span (never an argument)
                effect, reason = outcome(result, bounded=False)  # a policy's own reason code too
                span.set_attributes(
                    {
                        "guard.tool": name[:128],
                        "guard.request_id": request_id,
                        "guard.effect": effect,
                        "guard.reason": reason,
                    }
                )
                if self.catalog.lookup(name) is None:  # a made-up name does not name a span (nor grow their set)
                    span.update_name(UNKNOWN_TOOL_SPAN)
                    span.set_attribute("gen_ai.tool.name", name[:128])
            return result

    async def _call_or_deny(
        self, request_id: str, name: str, arguments: Any, ctx: CallContext
    ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            return await self._call(request_id, name, arguments, ctx)
        except Exception as exc:  # fail closed: an error inside the pipeline is a denial
            # A step the log cannot record does not happen: the call stops at the first failed append.
            unrecorded = isinstance(exc, AuditError)
            unreachable = isinstance(exc, StoreUnavailable)  # the shared store: down, or refusing the unit
            reason = "audit_unavailable" if unrecorded else "store_unavailable" if unreachable else "internal_error"
            if unrecorded:
                log.error("audit log unavailable on %s: %s", request_id, exc)
            elif unreachable:
                log.error("store unavailable on %s: %s", request_id, exc)
            else:
                log.exception("pipeline error on %s", request_id)
            with anyio.CancelScope(shield=True):
                try:
                    await self.audit.append(
                        EventIn(
                            "call.error",
                            request_id=request_id,
                            actor=ctx.actor.principal,
                            tool=name,
                            data={"reason": reason, "error": type(exc).__name__},
                        )
                    )
                except Exception:
                    log.error("audit write failed for %s", request_id, exc_info=not unrecorded)
            if unrecorded:
                return deny_result(
                    reason,
                    "the guard's audit log cannot record this call, so it does not run; an "
                    "operator must check the log (`guard-mcp audit verify`)",
                    request_id=request_id,
                )
            if unreachable:
                return deny_result(
                    reason,
                    "the guard's store cannot be reached, so this call does not run; call again later",
                    request_id=request_id,
                )
            return deny_result("internal_error", "the guard could not process this call safely", request_id=request_id)

    async def _call(
        self, request_id: str, name: str, arguments: Any, ctx: CallContext
    ) -> types.CallToolResult | types.InputRequiredResult:
        actor = ctx.actor
        login = self.upstreams.login_needed(name)
        if login is not None:  # nothing to decide or approve for a call that cannot reach its upstream
            await self.audit.append(
                EventIn(
                    "call.invalid",
                    request_id=request_id,
                    actor=actor.principal,
                    tool=name[:128],
                    data={"reason": "upstream_auth_required"},
                )
            )
            return deny_result("upstream_auth_required", login, request_id=request_id)
        entry = self.catalog.lookup(name)
        if entry is not None and entry.withheld and self.catalog.recheck_withheld():
            entry = self.catalog.lookup(name)
        refusal = (
            ("unknown_tool", f"no tool `{name}`; list the tools to see what this guard serves")
            if entry is None
            else entry.unavailable
        )
        if refusal is not None:
            reason, msg = refusal
            await self.audit.append(
                EventIn(
                    "call.invalid",
                    request_id=request_id,
                    actor=actor.principal,
                    tool=name[:128],
                    data={"reason": reason},
                )
            )
            return deny_result(reason, msg, request_id=request_id)
        assert entry is not None  # refused above

        arguments = {} if arguments is None else arguments
        if not entry.prepared:
            # the first call of a tool vets its schema's patterns in a child process: wait for it off the loop
            await anyio.to_thread.run_sync(entry.validator)
        # From here on the arguments are the ones that will run: the schema's defaults filled in.
        with self.tracing.stage("guard.validate"):
            checked = check_arguments(entry, arguments, self.config.guard.max_argument_bytes)
        arguments, canonical, invalid = checked.arguments, checked.canonical, checked.invalid
        received = self._event(
            "call.received",
            request_id,
            actor,
            entry,
            {
                "arguments": self._redact(entry, arguments) if invalid is None else {"bytes": len(canonical)},
                **({"defaulted": list(checked.defaulted)} if checked.defaulted and invalid is None else {}),
                **self.audit.redact({"session": actor.session, "client": actor.client_name}),
            },
            redacted=True,
        )
        if invalid is not None:
            invalid_ev = self._event(
                "call.invalid", request_id, actor, entry, {"reason": invalid.reason, "message": invalid.for_log}
            )
            await self.audit.append_many([received, invalid_ev])
            return deny_result(invalid.reason, invalid.message, request_id=request_id, tool=name)

        bundle = build_bundle(
            entry, arguments, canonical, request_id=request_id, actor=actor, environment=self.config.guard.environment
        )
        started = perf_counter()
        with self.tracing.stage("guard.decide"):
            risk, decision = self.policy.decide(bundle)
        self.metrics.decision_seconds.observe(perf_counter() - started)
        bundle = bundle.model_copy(update={"risk": risk})
        if self.tracing.on:
            trace_decision(bundle, decision)
        decided = self._event("call.decided", request_id, actor, entry, _decision_data(bundle, decision), redacted=True)
        events = [received, decided, *self.policy.shadow_events(bundle, decision)]  # a candidate's disagreement

        if decision.effect is Effect.DENY:
            await self.audit.append_many(events)
            return deny_result(
                decision.reason,
                _deny_message(decision),
                request_id=request_id,
                rule_id=decision.rule_id,
                policy=decision.policy,
            )
        limits = self.limits if self.limits is not None and self.limits.covers(entry) else None
        if limits is None:
            permitted = await self._permit(entry, bundle, decision, ctx, events)
        else:
            with self.tracing.stage("guard.limits"):
                held = await limits.reserve(entry, bundle)
            self.metrics.limit_checked(name, held.reason if isinstance(held, LimitDenial) else "within")
            if isinstance(held, LimitDenial):
                events.append(
                    self._event("call.denied", request_id, actor, entry, self._limit_data(entry, held), redacted=True)
                )
                await self.audit.append_many(events)
                return deny_result(
                    held.reason,
                    held.message,
                    request_id=request_id,
                    tool=name,
                    limit=held.data.get("limit"),
                    retry_after=held.retry_after,
                )
            try:
                permitted = await self._permit(entry, bundle, decision, ctx, events)
            except BaseException:
                await limits.release(held)  # refused on the way (the permit or its audit record failed)
                raise
            if not isinstance(permitted, MintedPermit):
                await limits.release(held)  # denied, expired or still waiting for a human: nothing ran
        if not isinstance(permitted, MintedPermit):
            return permitted
        # From here the usage stays counted, whatever the upstream answers: it may have acted.
        return await self._forward(entry, bundle, permitted, ctx)

    async def _permit(
        self, entry: CatalogEntry, bundle: ActionBundle, decision: Decision, ctx: CallContext, events: list[EventIn]
    ) -> types.CallToolResult | types.InputRequiredResult | MintedPermit:
        """Stages 5 and 6: a human's approval when the policy asks for one, then the permit, on record
        before it is used; or the result that refuses the call."""
        request_id, actor = bundle.request_id, bundle.actor
        approver: str | None = None
        if decision.effect is Effect.APPROVE:
            if self.approvals is None:
                events.append(self._event("call.denied", request_id, actor, entry, {"reason": "approval_unavailable"}))
                await self.audit.append_many(events)
                return deny_result(
                    "approval_unavailable",
                    "this call needs a human approval and no approval channel is configured",
                    request_id=request_id,
                )
            started = perf_counter()
            with self.tracing.stage("guard.approval_wait"):
                self._in_flight -= 1  # waiting on a human is not load
                try:
                    paused = await self.approvals.run(entry, bundle, decision, ctx, pending_events=events)
                finally:
                    self._in_flight += 1
            self.metrics.approval_waited(decision.approvers, perf_counter() - started)
            if paused.result is not None:
                return paused.result
            approver = paused.approver
            events = list(paused.events)

        with self.tracing.stage("guard.permit"):
            unsigned = self.permits.prepare(bundle, decision, approver=approver)
            events.append(
                self._event(
                    "permit.issued",
                    request_id,
                    actor,
                    entry,
                    {
                        "jti": unsigned.jti,
                        "exp": unsigned.exp,
                        "approver": approver,
                        "policy": decision.policy,
                    },
                    redacted=True,
                )
            )
            with self.tracing.stage("guard.audit_commit"):  # the permit is signed while the record commits
                # a lone call commits here and now; with others in flight, on the writer thread, meanwhile:
                durable = self.audit.begin_many(events, inline=self._in_flight <= 1)
                try:
                    minted = unsigned.sign()
                finally:
                    await durable  # durable before the token leaves this function, and before the upstream acts
        return minted

    async def _forward(
        self, entry: CatalogEntry, bundle: ActionBundle, minted: MintedPermit, ctx: CallContext
    ) -> types.CallToolResult:
        session = ctx.session

        async def report(progress: float, total: float | None, message: str | None) -> None:
            if session is not None:  # a no-op when the client asked for no progress
                await session.report_progress(progress, total, message)

        meta = cast(
            types.RequestParamsMeta, {PERMIT_META_KEY: minted.token}
        )  # fresh: the caller's _meta never travels on
        # While the upstream works, a question it asks the user can be routed to this caller.
        tracked = (
            contextlib.nullcontext()
            if self.relay is None
            else self.relay.track(
                InFlight(
                    request_id=bundle.request_id,
                    upstream=entry.upstream,
                    tool=entry.name,
                    actor=bundle.actor.principal,
                    session=session,
                    rpc_id=ctx.rpc_id,
                )
            )
        )

        def scrub(text: str) -> str:  # an upstream's error may quote the call's arguments: not in the log
            return _scrub(text, bundle.arguments, self._redact(entry, bundle.arguments))

        started = perf_counter()
        try:
            with tracked, self.tracing.stage("guard.forward"):
                self.tracing.carry(cast(dict[str, Any], meta))  # the trace goes on to the upstream from this hop
                result = await self.upstreams.call(
                    entry.upstream,
                    entry.original,
                    bundle.arguments,
                    meta=meta,
                    progress=report,
                    scrub=scrub,
                )
        except UpstreamError as exc:
            said = scrub(exc.for_log)  # scrubbed before it was made one line where it quotes the upstream
            reason = "upstream_auth_required" if isinstance(exc, UpstreamAuthRequired) else "upstream_error"
            await self.audit.append(
                self._event("call.error", bundle.request_id, bundle.actor, entry, {"reason": reason, "error": said})
            )
            if isinstance(exc, UpstreamAuthRequired):  # refused inside the guard: nothing reached the upstream
                return deny_result(reason, str(exc), request_id=bundle.request_id)
            return upstream_error_result(str(exc), request_id=bundle.request_id)
        except anyio.get_cancelled_exc_class():
            # The client cancelled (or went away) while the upstream held a valid permit: it may
            # have acted. Say so in the log, without awaiting anything on a cancelled path.
            try:
                self.audit.append_deferred(
                    self._event(
                        "call.unresolved",
                        bundle.request_id,
                        bundle.actor,
                        entry,
                        {
                            "reason": "cancelled",
                            "jti": minted.jti,
                        },
                        redacted=True,
                    )
                )
            except Exception:  # the log is closing; the next start reconciles the permit (_audit/_reconcile.py)
                log.exception("audit write failed for %s", bundle.request_id)
            raise
        self.metrics.forwarded(entry.upstream, perf_counter() - started)
        limit = self.config.guard.max_result_bytes
        size = result_size(result, limit)
        if size > limit:
            # The upstream acted (its permit is on record), but its answer is not relayed, nor kept.
            del result
            await self.audit.append(
                self._event(
                    "call.error",
                    bundle.request_id,
                    bundle.actor,
                    entry,
                    {
                        "reason": "result_too_large",
                        "bytes_at_least": size,
                        "limit": limit,
                    },
                    redacted=True,
                )
            )
            return deny_result(
                "result_too_large",
                f"the upstream ran the call, but its result is over {limit} bytes "
                "(guard.max_result_bytes) and is not relayed; do not repeat the call to get it, ask "
                "for less (a page, a narrower query)",
                request_id=bundle.request_id,
            )
        # The action happened and its permit is on record; the result event need not hold the
        # response back for its own fsync (it rides in the next append's transaction).
        self.audit.append_deferred(
            self._event(
                "call.result",
                bundle.request_id,
                bundle.actor,
                entry,
                {
                    "is_error": bool(result.is_error),
                    "content_items": len(result.content),
                },
                redacted=True,
            )
        )
        return without_guard_meta(result)  # an upstream must not speak in the guard's name

    def _redact(self, entry: CatalogEntry, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.audit.redact(arguments, entry.schema.redact)

    def _limit_data(self, entry: CatalogEntry, denial: LimitDenial) -> dict[str, Any]:
        """The denial's audit data; the summed argument's values are digested when it is a redacted one."""
        data = dict(denial.data)
        arg = denial.argument
        if arg is not None and "asked" in data:
            shown = self._redact(entry, {arg: data["asked"]})[arg]
            if shown != data["asked"]:
                data.update(asked=shown, used=self._redact(entry, {arg: data["used"]})[arg])
        return data

    @staticmethod
    def _event(
        kind: str, request_id: str, actor: Actor, entry: CatalogEntry, data: dict[str, Any], *, redacted: bool = False
    ) -> EventIn:
        """`redacted=True` only for data that holds redacted arguments or values the guard made
        (hashes, ids, rule names, the policy's trace, which names arguments but never quotes them);
        messages that may quote a value (schema errors, upstream errors) are scanned by the log."""
        return EventIn(
            kind,
            request_id=request_id,
            actor=actor.principal,
            upstream=entry.upstream,
            tool=entry.name,
            data=data,
            redacted=redacted,
        )


def trace_decision(bundle: ActionBundle, decision: Decision) -> None:
    """The decision on the call's span: action, tier, effect, reason (the outcome may differ, see `call`)."""
    from opentelemetry import trace

    trace.get_current_span().set_attributes(
        {
            "guard.action": bundle.action,
            "guard.tier": "" if bundle.risk is None else bundle.risk.tier.value,
            "guard.decision.effect": decision.effect.value,
            "guard.decision.rule": decision.rule_id or "",
        }
    )


def _decision_data(bundle: ActionBundle, decision: Decision) -> dict[str, Any]:
    risk = bundle.risk
    return {
        "action": bundle.action,
        "payload_hash": bundle.payload_hash,
        "effect": decision.effect.value,
        "reason": decision.reason,
        "rule_id": decision.rule_id,
        "policy": decision.policy,
        "policy_sha256": decision.policy_sha256,
        "step_up": decision.step_up,
        "approvers": decision.approvers,
        "risk": None if risk is None else {"score": risk.score, "tier": risk.tier.value, "factors": risk.factors},
        "trace": [t.model_dump() for t in decision.trace],
    }


_MIN_SCRUBBED = 3  # shorter values would cut words apart, and say little on their own


def _scrub(text: str, raw: Any, shown: Any) -> str:
    """`text` with every value that `shown` (the log's copy of `raw`) keeps only as a digest taken out."""
    return cut_out(text, _hidden(raw, shown), "<redacted>", shortest=_MIN_SCRUBBED)


def _hidden(raw: Any, shown: Any) -> Iterator[str]:
    if raw == shown or raw is None or isinstance(raw, bool):
        return
    if isinstance(raw, dict):
        for key, value in raw.items():
            yield from _hidden(value, shown.get(key) if isinstance(shown, dict) else None)
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            yield from _hidden(value, shown[i] if isinstance(shown, list) and i < len(shown) else None)
    else:
        yield raw if isinstance(raw, str) else json.dumps(raw)


def _deny_message(decision: Decision) -> str:
    rule = f"rule `{decision.rule_id}`" if decision.rule_id else "the policy default"
    return f"{rule} of policy `{decision.policy}` denies this call"
