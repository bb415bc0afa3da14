"""The guard as an MCP server: opens every component once, serves tools/list and tools/call.

`open_guard` is the composition root: keys, audit log, policy engine, pins, upstream sessions,
permits, approvals and usage limits are opened here, in that order, and closed in reverse.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

from guard_mcp._audit import AuditLog, EventIn, RunLock, unresolved_permits
from guard_mcp._catalog import Catalog
from guard_mcp._clients import Listeners, session_id
from guard_mcp._clock import Clock, SystemClock
from guard_mcp._config import GuardConfig
from guard_mcp._errors import AuditError, GuardError
from guard_mcp._identity import UpstreamCredentials, caller_of
from guard_mcp._keys import KeyStore
from guard_mcp._limits import LimitStage, open_limit_stage
from guard_mcp._models import Actor
from guard_mcp._notify import run_notifier
from guard_mcp._pause import ApprovalStage, open_approval_stage
from guard_mcp._permits import PermitIssuer
from guard_mcp._pins import PinStore
from guard_mcp._pipeline import CallContext, Pipeline
from guard_mcp._policy import PolicyEngine
from guard_mcp._relay import ElicitationRelay
from guard_mcp._state import StateDir
from guard_mcp._telemetry import Metrics, Tracing, trace_context_gate
from guard_mcp._upstreams import UpstreamManager

__all__ = ["Guard", "open_guard"]

log = logging.getLogger("guard_mcp")

VERSION = "0.1.0"
INSTRUCTIONS = (
    "Tools here are served through guard-mcp. Each call is checked against a signed policy; some calls need a "
    "human approval. A result with isError and a reason code (for example `approval_denied` or "
    "`amount_exceeds_policy_limit`) is a decision, not a fault: do not retry it with changed arguments to get around it."
)


@dataclass
class Guard:
    config: GuardConfig
    state: StateDir
    clock: Clock
    server: Server[Any]
    pipeline: Pipeline
    catalog: Catalog
    upstreams: UpstreamManager
    audit: AuditLog
    policy: PolicyEngine
    keys: KeyStore
    metrics: Metrics
    listeners: Listeners = field(default_factory=Listeners)
    stop_reason: str | None = None
    stop_requested: anyio.Event = field(default_factory=anyio.Event)

    def stopping(self, reason: str) -> None:
        """Stop serving on the guard's own account (a signal), not because a client left: the transport
        winds down, calls cancelled from here on are recorded with the guard's reason, and `guard.stop`
        says why."""
        self.stop_reason = reason
        if self.pipeline.approvals is not None:
            self.pipeline.approvals.stop_reason = "guard_stopped"
        self.stop_requested.set()

    def initialization_options(self) -> InitializationOptions:
        return self.server.create_initialization_options(NotificationOptions(tools_changed=True))


def _actor(config: GuardConfig, ctx: ServerRequestContext[Any, Any]) -> Actor:
    info = None
    params = getattr(ctx.session, "client_params", None)
    if params is not None:
        info = params.client_info
    # Who is calling comes from the HTTP gate alone (a verified token), never from the request's `_meta`
    # or the client's own words; stdio, in-process and the shared token run as the configured principal.
    caller = caller_of(ctx.request)
    return Actor(
        principal=caller.principal if caller is not None and caller.principal else config.guard.principal,
        groups=caller.groups if caller is not None else (),
        client_name=info.name[:64] if info is not None else None,
        client_version=info.version[:32] if info is not None else None,
        session=session_id(ctx.session),
    )


async def _reconcile(audit: AuditLog, state: StateDir) -> int:
    """Record the permits a stopped guard left without an outcome; the newest seq looked at."""
    unresolved, through = await anyio.to_thread.run_sync(unresolved_permits, state.database)
    if unresolved:
        log.warning(
            "%d permitted call(s) of a guard that stopped have no recorded outcome (the upstream may "
            "have acted); audited as `call.unresolved`: check them with `guard-mcp audit show`",
            len(unresolved),
        )
        await audit.append_many(unresolved)
    return through


@contextlib.asynccontextmanager
async def open_guard(
    config: GuardConfig,
    state: StateDir,
    *,
    clock: Clock | None = None,
    upstream_backoff: tuple[float, float] = (0.5, 30.0),
    liveness_interval: float = 10.0,
    approval_poll: float = 0.25,
    jwks_interval: float = 5.0,
    inprocess_upstreams: dict[str, Any] | None = None,
) -> AsyncIterator[Guard]:
    clock = clock or SystemClock()
    state.ensure()
    keys = KeyStore(state.keys, clock, environment=config.guard.environment)
    keys.ensure()
    keys.write_public_jwks(state.root / "jwks.json")
    run_lock = await anyio.to_thread.run_sync(RunLock, state.root / "serve.lock")
    try:
        audit = await AuditLog.open(state, clock=clock, keys=keys, config=config.guard.audit)
    except BaseException:
        run_lock.release()
        raise
    pins: PinStore | None = None
    credentials: UpstreamCredentials | None = None
    approvals: ApprovalStage | None = None
    limits: LimitStage | None = None
    guard: Guard | None = None
    try:
        policy_events: list[tuple[str, dict[str, Any]]] = []
        policy = PolicyEngine.from_config(config, state, on_event=lambda t, d: policy_events.append((t, d)))
        pins = PinStore(state.database)
        catalog = Catalog(config, pins, policy.score, clock.now)
        listeners = Listeners()
        # 2026-07-28 clients cannot be pushed to: they hold a `subscriptions/listen` stream open.
        changes = InMemorySubscriptionBus()
        listen = ListenHandler(changes, max_subscriptions=256)

        async def announce_tools_changed() -> None:
            await listeners.tools_changed()
            await changes.publish(ToolsListChanged())

        async def flush_policy_events() -> None:
            while policy_events:
                kind, data = policy_events.pop(0)
                await audit.append(EventIn(kind.replace("_", "."), data=data))

        async def on_tools_changed(upstream: str) -> None:
            handle = upstreams.handles[upstream]
            if handle.state == "ready":
                for change in catalog.update(upstream, handle.tools):
                    kind = change.pop("event")
                    await audit.append(EventIn(kind, upstream=upstream, tool=change["exposed"], data=change))
                    what = (
                        "is not served: its definition hides invisible characters"
                        if kind == "tool.refused"
                        else "is new; withheld until `guard-mcp tools accept`"
                        if change.get("new")
                        else "changed its definition; withheld until `guard-mcp tools accept`"
                    )
                    log.warning("tool %s %s", change["exposed"], what)
            else:
                catalog.remove(upstream)
            await announce_tools_changed()

        async def on_upstream_event(kind: str, data: dict[str, Any]) -> None:
            try:
                await audit.append(EventIn(kind, upstream=data.get("upstream"), data=data))
            except AuditError as exc:  # calls are refused while the log fails; an upstream's restart must go on
                log.error("upstream %s: %s not recorded: %s", data.get("upstream"), kind, exc)

        relay = ElicitationRelay(config, audit)
        credentials = await UpstreamCredentials.needed(config, state, clock)
        upstreams = UpstreamManager(
            config,
            on_tools_changed=on_tools_changed,
            on_event=on_upstream_event,
            elicit_relay=relay,
            backoff=upstream_backoff,
            liveness_interval=liveness_interval,
            inprocess=inprocess_upstreams,
            credentials=credentials,
        )
        permits = PermitIssuer(
            keys,
            issuer=config.guard.permits.issuer,
            environment=config.guard.environment,
            clock=clock,
            max_ttl=config.guard.permits.ttl,
        )
        approvals = await open_approval_stage(config=config, state=state, clock=clock, audit=audit, poll=approval_poll)
        limits = await open_limit_stage(config, state, clock)
        metrics = Metrics(config)  # read at `/metrics` (guard.metrics)
        metrics.watch(upstreams, approvals.store)
        audit.observe_commits(metrics.committed)
        pipeline = Pipeline(
            config=config,
            catalog=catalog,
            policy=policy,
            permits=permits,
            audit=audit,
            upstreams=upstreams,
            approvals=approvals,
            relay=relay,
            limits=limits,
            metrics=metrics,
            tracing=Tracing.current(),
        )

        async def list_tools(
            ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            listeners.add(ctx.session)
            catalog.recheck_withheld()
            return types.ListToolsResult(tools=catalog.listed())

        async def call_tool(
            ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult | types.InputRequiredResult:
            listeners.add(ctx.session)
            cctx = CallContext(
                actor=_actor(config, ctx),
                session=ctx.session,
                request_state=params.request_state,
                input_responses=params.input_responses,
                rpc_id=ctx.request_id,
            )
            return await pipeline.call(params.name, params.arguments, cctx)

        server: Server[Any] = Server(
            "guard-mcp",
            version=VERSION,
            instructions=INSTRUCTIONS,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_subscriptions_listen=listen,
        )
        server.middleware.insert(0, trace_context_gate)  # before the SDK's span middleware reads `_meta`
        guard = Guard(
            config=config,
            state=state,
            clock=clock,
            server=server,
            pipeline=pipeline,
            catalog=catalog,
            upstreams=upstreams,
            audit=audit,
            policy=policy,
            keys=keys,
            metrics=metrics,
            listeners=listeners,
        )
        reconciled = await _reconcile(audit, state) if run_lock.sole else None
        await flush_policy_events()
        report = audit.startup_verification
        if not report.ok:
            log.error("audit log does not verify: %s", report.message)
            await audit.append(
                EventIn(
                    "audit.broken",
                    data={"problem": report.problem, "bad_seq": report.bad_seq, "message": report.message},
                )
            )
        await audit.append(
            EventIn(
                "guard.start",
                data={
                    "policy": policy.describe(),
                    "policy_status": policy.status,
                    "environment": config.guard.environment,
                    "upstreams": sorted(upstreams.handles),
                    **({} if reconciled is None else {"reconciled_through": reconciled}),
                },
            )
        )
        run_lock.share()
        async with anyio.create_task_group() as tg:
            await upstreams.start(tg)

            async def watch_policy() -> None:
                while True:
                    await anyio.sleep(1.0)
                    if policy.reload_if_changed():
                        catalog_upstreams = [h for h in upstreams.handles.values() if h.state == "ready"]
                        for h in catalog_upstreams:
                            catalog.update(h.name, h.tools)
                        await announce_tools_changed()  # the tiers in each tool's `_meta` follow the policy
                    await flush_policy_events()

            async def keep_jwks_current() -> None:
                # A key retired by `keys rotate` leaves the published file once its last permit expired:
                # upstreams that read the file stop trusting it then, not at the guard's next start.
                while True:
                    await anyio.sleep(jwks_interval)
                    try:
                        if keys.refresh_public_jwks(state.root / "jwks.json"):
                            log.info("jwks.json rewritten: the published keys changed")
                    except GuardError as exc:
                        log.warning("%s", exc)

            if config.guard.policy is not None:
                tg.start_soon(watch_policy)
            tg.start_soon(keep_jwks_current)
            tg.start_soon(approvals.housekeeping)
            await tg.start(run_notifier, config, state, clock)  # approvers hear of approvals (guard.notify)
            try:
                yield guard
            finally:
                listen.close()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                reason = guard.stop_reason if guard is not None else None
                await audit.append(EventIn("guard.stop", data={} if reason is None else {"reason": reason}))
            try:
                await audit.close()
            finally:
                run_lock.release()
            if pins is not None:
                pins.close()
            if credentials is not None:
                await credentials.close()
            if approvals is not None:
                await approvals.close()
            if limits is not None:
                await limits.close()
