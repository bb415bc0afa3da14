"""The pages beside the queue: tools, policy (and "explain this call"), session grants, approvers.

Who may change what, each checked here and again where the store can:
- accepting a changed tool definition: only an approver of a group named in `guard.console.admins`
  (none by default, so accepting stays a CLI action until an operator says otherwise); it goes
  through `accept_pending`, as `guard-mcp tools accept` does, bound to the hash the approver saw;
- a session grant for an approver group: a member of that group; for one tool (which covers calls
  whatever group owns them): an admin;
- revoking a grant takes authority away, so any signed-in approver may (as anyone may deny).
Every change needs the session's CSRF token and is recorded in the audit log under the approver.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from guard_mcp._approvals import Approval, Channel, escape_text
from guard_mcp._audit import EventIn
from guard_mcp._console._auth import _form
from guard_mcp._console._context import BASE, Console
from guard_mcp._console._security import check_csrf
from guard_mcp._console._store import Session
from guard_mcp._errors import ApprovalError, GuardError
from guard_mcp._pins import PinStatus, PinStore, accept_pending, definition_diff, exposed_name

__all__ = ["approvers", "explain", "grant_create", "grant_revoke", "grants", "policy", "tool_accept", "tools"]


async def _signed_in(console: Console, request: Request) -> Session | Response:
    from guard_mcp._console._views import _signed_in as signed_in

    return await signed_in(console, request)


async def _changed(console: Console, request: Request) -> tuple[Session, dict[str, str]] | Response:
    """A signed-in approver's form with the session's CSRF token, or the answer refusing it."""
    session = await console.session(request)
    form = await _form(request)
    if session is None or session.approver is None:
        return console.to_sign_in(f"{BASE}/")
    if not check_csrf(request, session.csrf, form.get("csrf")):
        return await console.message(
            request, session, "Refused", "This form is out of date; reload the page and try again.", status=403
        )
    return session, form


async def _no_guard(console: Console, request: Request, session: Session, what: str) -> Response:
    return await console.message(
        request,
        session,
        f"No {what} here",
        f"This console is not served by a running guard, so it has no {what} to show; open the "
        "console of `guard-mcp serve`.",
        status=404,
    )


# -- tools -----------------------------------------------------------------------------------------


def _pins(console: Console) -> list[PinStatus]:
    pins = PinStore(console.state.database)
    try:
        return pins.pending()
    finally:
        pins.close()


def _line(line: str) -> str:
    """A diff line as the CLI prints it: JSON already writes every non-ASCII and control character as
    `\\uXXXX`; anything else that is not plain printable ASCII is coded once more, to be sure."""
    return line if line.isascii() and line.isprintable() else escape_text(line)


async def tools(
    console: Console, request: Request, *, error: str | None = None, status: int = 200, session: Session | None = None
) -> Response:
    if session is None:
        signed = await _signed_in(console, request)
        if isinstance(signed, Response):
            return signed
        session = signed
    guard = console.guard
    entries = [] if guard is None else guard.catalog.entries()
    pending = await anyio.to_thread.run_sync(_pins, console)
    changes = [{"name": exposed_name(p), "p": p, "diff": [_line(x) for x in definition_diff(p)]} for p in pending]
    return await console.render(
        "tools.html",
        request,
        session,
        status=status,
        entries=entries,
        changes=changes,
        served=guard is not None,
        admin=console.is_admin(session),
        error=error,
    )


async def tool_accept(console: Console, request: Request) -> Response:
    checked = await _changed(console, request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    name = (form.get("name") or "")[:300]
    seen = form.get("hash") or ""
    if not console.is_admin(session):
        problem = (
            "accepting a changed tool definition needs an approver of a group in `guard.console.admins`; "
            f"run `guard-mcp tools accept {name}` in a terminal instead"
        )
        await console.event("console.refused", session, {"tool": name, "problem": problem})
        return await tools(console, request, error=problem, status=403, session=session)
    if not seen:
        return await tools(
            console,
            request,
            error="reload the page: the change you accept must be the one shown",
            status=400,
            session=session,
        )

    def accept() -> tuple[PinStatus, dict[str, Any]]:
        pins = PinStore(console.state.database)
        try:
            return accept_pending(pins, name, console.clock.now(), expected_hash=seen)
        finally:
            pins.close()

    try:
        status, data = await anyio.to_thread.run_sync(accept)
    except GuardError as exc:
        await console.event("console.refused", session, {"tool": name, "problem": str(exc)})
        return await tools(console, request, error=str(exc), status=409, session=session)
    await console.record_event(
        EventIn("tool.pin_accepted", upstream=status.upstream, tool=name, data={**data, "approver": session.approver}),
        session,
    )
    if console.guard is not None:
        console.guard.catalog.recheck_withheld()
    return RedirectResponse(f"{BASE}/tools", status_code=303)


# -- policy ----------------------------------------------------------------------------------------


def _bundle(console: Console) -> tuple[Any, dict[str, Any] | None]:
    serving = console.guard.policy.serving if console.guard is not None else None
    if serving is None:
        return None, None
    try:
        return serving, json.loads(serving.evaluator.data)
    except ValueError:
        return serving, None


def _outcome(then: dict[str, Any]) -> str:
    parts = [then.get("effect", "?"), f"({then.get('reason', '')})"]
    if then.get("approvers"):
        parts.append(f"group {then['approvers']}")
    if then.get("step_up"):
        parts.append("step-up")
    if then.get("approval"):
        parts.append(f"approval {then['approval']}")
    return " ".join(str(p) for p in parts)


def _condition(rule: dict[str, Any]) -> str:
    match = {k: v for k, v in (rule.get("match") or {}).items()}
    text = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(match.items()))
    when = rule.get("when")
    return (text or "any call") + ("" if when is None else f" when {json.dumps(when, sort_keys=True)}")


async def policy(console: Console, request: Request) -> Response:
    session = await _signed_in(console, request)
    if isinstance(session, Response):
        return session
    if console.guard is None:
        return await _no_guard(console, request, session, "policy")
    serving, bundle = _bundle(console)
    rules = (
        []
        if bundle is None
        else [
            {"id": r.get("id"), "when": _condition(r), "then": _outcome(r.get("then") or {})} for r in bundle["rules"]
        ]
    )
    return await console.render(
        "policy.html",
        request,
        session,
        described=console.guard.policy.describe(),
        serving=serving,
        bundle=bundle,
        rules=rules,
        default=None if bundle is None else _outcome(bundle.get("default") or {}),
    )


async def explain(console: Console, request: Request) -> Response:
    """How the policy serving now decides the call an approval is for: every rule, matched or not, and why."""
    from guard_mcp._policy import explanation

    session = await _signed_in(console, request)
    if isinstance(session, Response):
        return session
    approval: Approval | None = await console.approvals.get(request.path_params["approval_id"])
    if approval is None:
        return await console.message(request, session, "Unknown approval", "There is no such approval.", status=404)
    if console.guard is None:
        return await _no_guard(console, request, session, "policy")
    risk, decision = await anyio.to_thread.run_sync(
        lambda: console.guard.policy.decide(approval.bundle, full_trace=True)
    )
    return await console.render(
        "explain.html", request, session, a=approval, risk=risk, decision=decision, summary=explanation(decision)
    )


# -- grants ----------------------------------------------------------------------------------------


async def grants(
    console: Console, request: Request, *, error: str | None = None, status: int = 200, session: Session | None = None
) -> Response:
    if session is None:
        signed = await _signed_in(console, request)
        if isinstance(signed, Response):
            return signed
        session = signed
    rows = await console.approvals.grants.list(active_only=False)
    now = console.clock.now()
    shown = sorted(rows, key=lambda g: (not (g.active(now) and g.verified), -g.created))
    return await console.render(
        "grants.html",
        request,
        session,
        status=status,
        grants=shown,
        error=error,
        admin=console.is_admin(session),
        max_minutes=int(console.approvals.config.preauth_max // 60),
    )


async def grant_create(console: Console, request: Request) -> Response:
    checked = await _changed(console, request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    assert session.approver is not None
    scope = form.get("scope")
    target = (form.get("target") or "").strip()
    client_session = (form.get("session") or "").strip()
    reason = (form.get("reason") or "").strip() or None
    try:
        minutes = float(form.get("minutes") or "")
    except ValueError:
        minutes = 0.0
    tool, group = (target, None) if scope == "tool" else (None, target)
    if scope not in ("tool", "group") or not target:
        problem = "choose a tool or an approver group and name it"
    elif group is not None and group not in session.groups:
        problem = f"you are not in group `{group}`; a grant for a group is given by one of its members"
    elif tool is not None and not console.is_admin(session):
        problem = (
            "a grant for one tool covers calls whatever group owns them: it needs an approver of a group in "
            "`guard.console.admins`; grant for your own group instead"
        )
    else:
        problem = None
    if problem is None:
        try:
            grant = await console.approvals.grants.grant(
                session=client_session,
                duration=minutes * 60,
                granted_by=session.approver,
                tool=tool,
                group=group,
                reason=reason,
                channel=Channel.CONSOLE,
            )
        except ApprovalError as exc:
            problem = str(exc)
    if problem is not None:
        await console.event("console.refused", session, {"grant": {"tool": tool, "group": group}, "problem": problem})
        return await grants(console, request, error=problem, status=403 if "group" in problem else 400, session=session)
    await console.record_event(
        EventIn(
            "console.granted",
            tool=grant.tool,
            data={
                "grant_id": grant.id,
                "session": grant.session,
                "tool": grant.tool,
                "group": grant.group,
                "expires": grant.expires,
                "granted_by": grant.granted_by,
                "factor": grant.factor,
                "reason": grant.reason,
            },
        ),
        session,
    )
    return RedirectResponse(f"{BASE}/grants", status_code=303)


async def grant_revoke(console: Console, request: Request) -> Response:
    checked = await _changed(console, request)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    try:
        grant = await console.approvals.grants.revoke(request.path_params["grant_id"])
    except ApprovalError as exc:
        return await grants(console, request, error=str(exc), status=404, session=session)
    await console.record_event(
        EventIn(
            "console.revoked",
            tool=grant.tool,
            data={"grant_id": grant.id, "session": grant.session, "uses": grant.uses, "revoked_by": session.approver},
        ),
        session,
    )
    return RedirectResponse(f"{BASE}/grants", status_code=303)


# -- approvers -------------------------------------------------------------------------------------


async def approvers(console: Console, request: Request) -> Response:
    session = await _signed_in(console, request)
    if isinstance(session, Response):
        return session
    people = await console.approvals.approvers.list()
    rows = [
        {
            "a": a,
            "passkeys": len(await console.store.credentials_of(a.name)),
            "admin": bool(set(a.groups) & set(console.config.admins)),
        }
        for a in people
    ]
    groups = sorted({g for a in people for g in a.groups})
    return await console.render(
        "approvers.html", request, session, rows=rows, groups=groups, admins=console.config.admins
    )
