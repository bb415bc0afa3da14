"""An upstream's question to the user (`elicitation/create` to the guard, its client), relayed when safe.

The request names no call: from a handshake-era upstream it arrives on the upstream client's own
receive task, from a 2026-07-28 upstream inside the retry loop of one `tools/call`. So the forward
stage registers every call in flight per upstream (`track`), and a question is relayed only when
where it goes is beyond doubt:

- the upstream's `elicitation:` is `relay` (the default) and the question is a form. URL mode is
  declined: it sends the user to an address the upstream chose, to type what the guard never sees,
  and its completion arrives as a notification the guard would have to route as well;
- every call in flight to that upstream comes from one client connection (usually one call).
  With two clients it is a guess, and a wrong guess shows one client's user a question meant for
  another, so it is declined. A call that ended without its answer (cancelled, timed out, failed)
  may still be running upstream and asking: for the upstream's `timeout` after it, a question is
  relayed only to that same client;
- that client can take a request mid-call (the handshake era; the 2026-07-28 era has no such
  channel) and declared form elicitation;
- the form is flat and small (guard_mcp/_form.py) and the call has not asked too often.

Otherwise the upstream hears `decline`, as if the user said no. A relayed prompt waits at most the
upstream's `timeout` and ends with its call (answered, failed or cancelled); the upstream then
hears `cancel`. Every question is one `upstream.elicitation` audit event with its outcome, the
user's action and the names of the fields answered, never their values (they may be secrets).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import mcp_types as types

from guard_mcp._audit import AuditLog, EventIn
from guard_mcp._clients import connection_of
from guard_mcp._config import GuardConfig
from guard_mcp._form import Form, check_form, relayed_message

__all__ = ["MAX_PROMPTS_PER_CALL", "ElicitationRelay", "InFlight"]

log = logging.getLogger("guard_mcp.relay")

# A call that keeps asking wears the user down until they click accept: past this, decline.
MAX_PROMPTS_PER_CALL = 10
EVENT = "upstream.elicitation"


@dataclass(eq=False)
class InFlight:
    """One forwarded call while its upstream works on it."""

    request_id: str
    upstream: str
    tool: str
    actor: str | None
    session: Any  # the caller's mcp ServerSession for this request
    rpc_id: types.RequestId | None = None  # the caller's JSON-RPC id: prompts ride that request's stream
    prompts: set[anyio.CancelScope] = field(default_factory=set)
    asked: int = 0
    ended: bool = False


def _connection(session: Any) -> Any:
    # The SDK builds a ServerSession per request; what two calls share is its connection. Without
    # one, every session is its own connection: two calls in flight are then always ambiguous.
    return connection_of(session) or session


def _can_elicit_form(session: Any) -> bool:
    if session is None or not getattr(session, "can_send_request", False):
        return False
    caps = getattr(session, "client_capabilities", None)
    elicitation = getattr(caps, "elicitation", None)
    if elicitation is None:
        return False
    # `elicitation: {}` (2025-06-18 clients) means form; a client may declare URL mode alone.
    return elicitation.form is not None or elicitation.url is None


@dataclass(frozen=True)
class _Declined:
    reason: str
    detail: str | None = None


class ElicitationRelay:
    """Tracks the calls in flight per upstream and answers their upstreams' questions."""

    def __init__(self, config: GuardConfig, audit: AuditLog) -> None:
        self._config = config
        self._audit = audit
        self._inflight: dict[str, list[InFlight]] = {}
        # Per upstream: calls that ended without an answer, with when the upstream may stop asking for them.
        self._orphans: dict[str, list[tuple[float, Any]]] = {}

    @contextlib.contextmanager
    def track(self, call: InFlight) -> Iterator[None]:
        """Register `call` while its upstream works on it; when it ends, so do its open prompts."""
        self._inflight.setdefault(call.upstream, []).append(call)
        try:
            yield
        except BaseException:  # no answer came back: the upstream may still be at work on it, and ask
            until = anyio.current_time() + self._config.upstreams[call.upstream].timeout
            self._orphans.setdefault(call.upstream, []).append((until, _connection(call.session)))
            raise
        finally:
            calls = self._inflight.get(call.upstream, [])
            if call in calls:
                calls.remove(call)
            if not calls:
                self._inflight.pop(call.upstream, None)
            call.ended = True
            for scope in call.prompts:
                scope.cancel()

    async def __call__(self, upstream: str, params: types.ElicitRequestParams) -> types.ElicitResult:
        calls = list(self._inflight.get(upstream, ()))
        event = EventIn(EVENT, upstream=upstream)
        data: dict[str, Any] = {"mode": "url" if isinstance(params, types.ElicitRequestURLParams) else "form"}
        if calls:
            first = calls[0]
            one_tool = all(c.tool == first.tool for c in calls)
            event = replace(
                event,
                actor=first.actor,
                tool=first.tool if one_tool else None,
                request_id=first.request_id if len(calls) == 1 else None,
            )
            if len(calls) > 1:
                data["calls"] = [c.request_id for c in calls]
        try:
            verdict = self._check(upstream, params, calls)
            if isinstance(verdict, _Declined):
                data.update(outcome="declined", action="decline", reason=verdict.reason)
                if verdict.detail is not None:
                    data["detail"] = verdict.detail
                await self._record(replace(event, data=data))
                return types.ElicitResult(action="decline")
            assert isinstance(params, types.ElicitRequestFormParams)
            return await self._relay(upstream, calls[0], params.message, verdict, event, data)
        except Exception:  # fail closed: a question the guard could not handle is declined
            log.exception("relaying a question from upstream %s failed", upstream)
            return types.ElicitResult(action="decline")

    def _check(self, upstream: str, params: types.ElicitRequestParams, calls: list[InFlight]) -> _Declined | Form:
        """The form to show, or why the question is declined."""
        config = self._config.upstreams.get(upstream)
        if config is None or config.elicitation == "decline":
            return _Declined("disabled")
        if not isinstance(params, types.ElicitRequestFormParams):
            return _Declined("url_mode")
        if not calls:
            return _Declined("no_call")
        connection = _connection(calls[0].session)
        if any(_connection(c.session) is not connection for c in calls[1:]):
            return _Declined("ambiguous")
        now = anyio.current_time()
        orphans = [(until, owner) for until, owner in self._orphans.get(upstream, ()) if until > now]
        self._orphans[upstream] = orphans
        if any(owner is not connection for _, owner in orphans):
            return _Declined("ambiguous", "a call of another client ended without its answer and may still be asking")
        if not _can_elicit_form(calls[0].session):
            return _Declined("client_cannot_elicit")
        if calls[0].asked >= MAX_PROMPTS_PER_CALL:
            return _Declined("too_many_prompts")
        form = check_form(params.requested_schema)
        return _Declined("unsupported_schema", form) if isinstance(form, str) else form

    async def _relay(
        self, upstream: str, call: InFlight, message: str, form: Form, event: EventIn, data: dict[str, Any]
    ) -> types.ElicitResult:
        """Ask through the call's own request; the prompt ends at the upstream's timeout or with the call."""
        data.update(outcome="relayed", asked=list(form.fields))
        started = anyio.current_time()
        scope = anyio.CancelScope(deadline=started + self._config.upstreams[upstream].timeout)
        call.prompts.add(scope)
        call.asked += 1
        answer: types.ElicitResult | None = None
        try:
            with scope:
                answer = await call.session.elicit_form(
                    relayed_message(upstream, message), form.schema, related_request_id=call.rpc_id
                )
        except anyio.get_cancelled_exc_class():
            # The upstream withdrew the question, or the guard is stopping: record it without awaiting.
            data.update(action="cancel", ended="cancelled", waited_s=_since(started))
            self._record_deferred(replace(event, data=data))
            raise
        except Exception as exc:  # the client failed the request or answered with something invalid
            log.info("a client failed a question relayed from %s: %s", upstream, type(exc).__name__)
            data["ended"] = "client_error"
        finally:
            call.prompts.discard(scope)
        data["waited_s"] = _since(started)
        if answer is None:
            data.setdefault("ended", "call_ended" if call.ended else "timeout")
            data["action"] = "cancel"
            await self._record(replace(event, data=data))
            return types.ElicitResult(action="cancel")
        content = None
        if answer.action == "accept" and answer.content is not None:
            content = {k: v for k, v in answer.content.items() if k in form.fields}  # only what was asked
            data["fields"] = sorted(content)
        data["action"] = answer.action
        await self._record(replace(event, data=data))
        return types.ElicitResult(action=answer.action, content=content)

    async def _record(self, event: EventIn) -> None:
        with anyio.CancelScope(shield=True):  # a question that was asked is on record
            await self._audit.append(event)

    def _record_deferred(self, event: EventIn) -> None:
        try:
            self._audit.append_deferred(event)
        except Exception:  # the log is closing
            log.exception("audit write failed for a question from %s", event.upstream)


def _since(started: float) -> float:
    return round(anyio.current_time() - started, 3)
