"""The queue and the approval card, and deciding from it.

The console decides through `ApprovalStore.decide`, the same compare-and-set the CLI uses, so a
decision raced from a browser and a terminal has exactly one winner. The store also re-checks
that the signed-in approver is of the owner group inside that transaction; the views check it
first only to say so plainly. A HIGH-risk or step-up approval needs, at the moment of the
decision, a fresh passkey assertion over a challenge bound to this approval and its payload hash
(or a TOTP code); the audit records approver, credential id and factor.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from guard_mcp._approvals import Approval, ApprovalState, VerifiedFactor, headline
from guard_mcp._console._auth import _form, checked_assertion
from guard_mcp._console._context import BASE, Console
from guard_mcp._console._passkeys import (
    authentication_options,
    step_up_challenge,
    step_up_matches,
)
from guard_mcp._console._security import check_csrf
from guard_mcp._console._store import Session
from guard_mcp._errors import ApprovalError

__all__ = ["card", "decide", "events", "queue", "queue_rows", "step_up_options"]

MAX_QUEUE = 500


def _row(console: Console, approval: Approval, session: Session) -> dict[str, Any]:
    risk = approval.bundle.risk
    return {
        "a": approval,
        "headline": headline(approval.bundle),
        "tier": "UNKNOWN" if risk is None else risk.tier.value,
        "score": None if risk is None else risk.score,
        "mine": bool({approval.group, approval.escalated_from} & set(session.groups)),
        "remaining": approval.remaining(console.clock.now()),
    }


async def _pending(console: Console, session: Session, show: str) -> list[dict[str, Any]]:
    pending = await console.approvals.list(states=[ApprovalState.PENDING])
    now = console.clock.now()
    rows = [_row(console, a, session) for a in pending if a.deadline > now]
    if show == "mine":
        rows = [r for r in rows if r["mine"]]
    rows.sort(key=lambda r: (r["a"].created, r["a"].id), reverse=True)  # newest first
    return rows[:MAX_QUEUE]


async def _signed_in(console: Console, request: Request) -> Session | Response:
    session = await console.session(request)
    if session is None or session.approver is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response: Response = console.to_sign_in(target)
        if request.cookies.get("guard_console"):
            console.clear_cookie(request, response)
        return response
    return session


async def queue(console: Console, request: Request) -> Response:
    session = await _signed_in(console, request)
    if isinstance(session, Response):
        return session
    show = "mine" if request.query_params.get("show") == "mine" else "all"
    rows = await _pending(console, session, show)
    return await console.render("queue.html", request, session, rows=rows, show=show)


async def queue_rows(console: Console, request: Request) -> Response:
    session = await console.session(request)
    if session is None or session.approver is None:
        return Response("signed out", status_code=401, media_type="text/plain")
    show = "mine" if request.query_params.get("show") == "mine" else "all"
    rows = await _pending(console, session, show)
    return await console.render("_rows.html", request, session, rows=rows, show=show)


async def events(console: Console, request: Request) -> Response:
    """Server-sent events: `queue` whenever the pending set changes (by anyone: the CLI, another
    console, an expiry); the stream ends with the session."""
    session = await console.session(request)
    if session is None or session.approver is None:
        return Response("signed out", status_code=401, media_type="text/plain")
    token = request.cookies.get("guard_console", "")

    async def stream() -> AsyncIterator[str]:
        last: tuple[Any, ...] | None = None
        quiet = 0.0
        yield "retry: 3000\n\n"
        while True:
            if await console.store.session(token) is None:
                yield "event: signed-out\ndata: {}\n\n"
                return
            pending = await console.approvals.list(states=[ApprovalState.PENDING])
            now = console.clock.now()
            snapshot = tuple((a.id, a.group, a.escalated) for a in pending if a.deadline > now)
            if snapshot != last:
                last = snapshot
                quiet = 0.0
                yield f"event: queue\ndata: {json.dumps({'pending': [s[0] for s in snapshot]})}\n\n"
            elif quiet >= 15.0:
                quiet = 0.0
                yield ": keep-alive\n\n"
            await anyio.sleep(console.sse_poll)
            quiet += console.sse_poll

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


async def _approval(console: Console, request: Request) -> Approval | None:
    return await console.approvals.get(request.path_params["approval_id"])


async def card(
    console: Console, request: Request, *, error: str | None = None, status: int = 200, session: Session | None = None
) -> Response:
    if session is None:
        signed = await _signed_in(console, request)
        if isinstance(signed, Response):
            return signed
        session = signed
    approval = await _approval(console, request)
    if approval is None:
        return await console.message(request, session, "Unknown approval", "There is no such approval.", status=404)
    has_passkey = bool(await console.store.credentials_of(session.approver or ""))
    similar = await _similar(console, approval)
    return await console.render(
        "card.html",
        request,
        session,
        status=status,
        row=_row(console, approval, session),
        a=approval,
        b=approval.bundle,
        error=error,
        has_passkey=has_passkey,
        similar=similar,
        args=sorted(approval.bundle.arguments.items()),
    )


async def _similar(console: Console, approval: Approval) -> list[Approval]:
    """Earlier decided approvals of the same tool, newest first: how similar requests went."""
    decided = await console.approvals.list(states=[ApprovalState.APPROVED, ApprovalState.DENIED])
    same = [a for a in decided if a.tool == approval.tool and a.id != approval.id and a.created < approval.created]
    return sorted(same, key=lambda a: a.created, reverse=True)[:3]


async def step_up_options(console: Console, request: Request) -> Response:
    session = await console.session(request)
    if session is None or session.approver is None or not check_csrf(request, session.csrf, None):
        return JSONResponse({"error": "signed out; reload the page"}, status_code=403)
    approval = await _approval(console, request)
    if approval is None or approval.state is not ApprovalState.PENDING:
        return JSONResponse({"error": "this approval is no longer pending"}, status_code=409)
    credentials = [c.id for c in await console.store.credentials_of(session.approver)]
    if not credentials:
        return JSONResponse({"error": "you have no passkey; use a TOTP code"}, status_code=409)
    challenge = step_up_challenge(approval.id, approval.payload_hash)
    await console.store.put_challenge(session, "step-up", approval.id, challenge)
    return Response(
        authentication_options(rp_id=console.rp_id(request), challenge=challenge, allow=credentials),
        media_type="application/json",
    )


async def _passkey_factor(
    console: Console, request: Request, session: Session, approval: Approval, assertion: str
) -> VerifiedFactor:
    assert session.approver is not None
    challenge = await console.store.take_challenge(session, "step-up", approval.id)
    if challenge is None or not step_up_matches(challenge, approval.id, approval.payload_hash):
        raise ApprovalError(
            "the passkey confirmation was not made for this approval, or took too long; press Approve again"
        )
    credential = await checked_assertion(
        console,
        request,
        assertion,
        challenge,
        approver=session.approver,
        unknown="this passkey is not yours; confirm with your own passkey",
        again="press Approve again",
    )
    return VerifiedFactor(session.approver, "passkey", credential.id)


async def decide(console: Console, request: Request) -> Response:
    session = await console.session(request)
    form = await _form(request)
    if session is None or session.approver is None:
        target = f"{BASE}/approvals/{request.path_params['approval_id']}"
        return console.to_sign_in(target)
    if not check_csrf(request, session.csrf, form.get("csrf")):
        return await console.message(
            request, session, "Refused", "This form is out of date; reload the page and decide again.", status=403
        )
    approval = await _approval(console, request)
    if approval is None:
        return await console.message(request, session, "Unknown approval", "There is no such approval.", status=404)
    choice = form.get("decision")
    if choice not in ("approve", "deny"):
        return await card(console, request, error="choose Approve or Deny", status=400, session=session)
    approve = choice == "approve"
    reason = (form.get("reason") or "").strip() or None
    if not await console.can_decide(session, approval):
        problem = f"you are not in group `{approval.group}`, which owns this approval"
        await console.event(
            "console.refused", session, {"approval_id": approval.id, "problem": problem}, approval=approval
        )
        return await card(console, request, error=problem, status=403, session=session)
    code = (form.get("code") or "").strip() or None
    assertion = form.get("assertion") or None
    try:
        if approve and approval.step_up and assertion:
            factor = await _passkey_factor(console, request, session, approval, assertion)
        else:
            factor = VerifiedFactor(session.approver, "totp" if code else "session")
        decided = await console.approvals.decide(
            approval.id,
            approve=approve,
            approver=session.approver,
            reason=reason,
            totp_code=code if approve else None,
            verified=factor,
        )
    except ApprovalError as exc:
        await console.event(
            "console.refused",
            session,
            {"approval_id": approval.id, "approve": approve, "problem": str(exc)},
            approval=approval,
        )
        return await card(console, request, error=str(exc), status=409, session=session)
    await console.event(
        "console.decided",
        session,
        {
            "approval_id": decided.id,
            "state": decided.state.value,
            "approver": decided.approver,
            "reason": decided.reason,
            "payload_hash": decided.payload_hash,
            "factor": factor.factor,
            "credential_id": factor.credential_id,
            "step_up": decided.step_up,
        },
        approval=decided,
    )
    return RedirectResponse(f"{BASE}/approvals/{decided.id}", status_code=303)
