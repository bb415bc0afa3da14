"""Who is signed in: passkey enrolment by a one-time link, sign-in by passkey (or TOTP), sign-out.

A visitor first gets a signed-out session (a cookie, a CSRF token, room for one WebAuthn challenge
per purpose). Signing in replaces it with a new session under a new cookie value, so an id planted
in a victim's browser before sign-in (session fixation) is worth nothing after it. A removed
approver's sessions end at their next request (the store joins every session to the approvers).
"""

from __future__ import annotations

import re
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from guard_mcp._console._context import BASE, Console
from guard_mcp._console._passkeys import (
    assertion_credential_id,
    authentication_options,
    registration_options,
    verify_assertion,
    verify_registration,
)
from guard_mcp._console._security import DEFAULT_NEXT, check_csrf, safe_next
from guard_mcp._console._store import ANONYMOUS_TTL, Credential, Session, digest
from guard_mcp._errors import ApprovalError

__all__ = ["enrol_complete", "enrol_options", "enrol_page", "signin_options", "signin_page", "signin_submit", "signout"]


async def _visitor(console: Console, request: Request, next_path: str | None = None) -> tuple[Session, str | None]:
    """The current session, or a new signed-out one (and its cookie value, to set)."""
    session = await console.session(request)
    if session is not None:
        return session, None
    token, session = await console.store.new_session(next_path=next_path)
    return session, token


def _with_cookie(console: Console, request: Request, response: Response, token: str | None, ttl: float) -> Response:
    if token is not None:
        console.set_cookie(request, response, token, ttl)
    return response


async def _form(request: Request) -> dict[str, str]:
    form = await request.form(max_files=0, max_fields=16, max_part_size=128 * 1024)
    return {k: v for k, v in form.items() if isinstance(v, str)}


# -- sign-in ---------------------------------------------------------------------------------------

APPROVAL_PAGE = re.compile(rf"^{BASE}/approvals/(apr_[a-z0-9]{{1,64}})$")


async def _first_run(console: Console, next_path: str) -> dict[str, str | None] | None:
    """With no approver enrolled nobody can sign in: what the page says to do instead (enrol one, or
    decide the approval the visitor came for at the terminal). None once an approver exists."""
    if await console.approvals.approvers.list():
        return None
    match = APPROVAL_PAGE.match(next_path)
    approval = None if match is None else await console.approvals.get(match.group(1))
    return {
        "group": approval.group if approval is not None else "approvers",
        "approval": approval.id if approval is not None else None,
    }


async def signin_page(console: Console, request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    session = await console.session(request)
    if session is not None and session.approver is not None:
        return RedirectResponse(next_path, status_code=303)
    session, token = await _visitor(console, request, next_path)
    response = await console.render(
        "signin.html",
        request,
        session,
        next_path=next_path,
        notice=request.query_params.get("enrolled") == "1",
        first_run=await _first_run(console, next_path),
    )
    return _with_cookie(console, request, response, token, ANONYMOUS_TTL)


async def signin_options(console: Console, request: Request) -> Response:
    session = await console.session(request)
    if session is None or not check_csrf(request, session.csrf, None):
        return JSONResponse({"error": "session expired; reload the page"}, status_code=403)
    challenge = secrets.token_bytes(32)
    await console.store.put_challenge(session, "signin", "", challenge)
    return Response(
        authentication_options(rp_id=console.rp_id(request), challenge=challenge), media_type="application/json"
    )


async def _refuse_signin(
    console: Console, request: Request, session: Session | None, why: str, next_path: str
) -> Response:
    await console.event("console.signin_refused", session, {"problem": why})
    return await console.render(
        "signin.html",
        request,
        session,
        status=403,
        next_path=next_path,
        error=why,
        notice=False,
        first_run=await _first_run(console, next_path),
    )


async def signin_submit(console: Console, request: Request) -> Response:
    session = await console.session(request)
    form = await _form(request)
    next_path = safe_next(form.get("next") or (session.next if session is not None else None))
    if session is None or not check_csrf(request, session.csrf, form.get("csrf")):
        return await console.message(
            request, None, "Session expired", "The sign-in page was open too long; sign in again.", status=403
        )
    assertion = form.get("assertion")
    try:
        if assertion:
            approver, factor, credential = await _passkey_signin(console, request, session, assertion)
        else:
            approver, factor, credential = await _totp_signin(console, form), "totp", None
    except ApprovalError as exc:
        return await _refuse_signin(console, request, session, str(exc), next_path)
    token, signed_in = await console.store.sign_in(session, approver, factor=factor, credential=credential)
    await console.event(
        "console.signed_in", signed_in, {"approver": approver, "factor": factor, "credential_id": credential}
    )
    response = RedirectResponse(next_path, status_code=303)
    console.set_cookie(request, response, token, console.store.session_ttl)
    return response


async def _passkey_signin(console: Console, request: Request, session: Session, assertion: str) -> tuple[str, str, str]:
    challenge = await console.store.take_challenge(session, "signin", "")
    if challenge is None:
        raise ApprovalError("the sign-in took too long; press the button again")
    credential = await checked_assertion(
        console,
        request,
        assertion,
        challenge,
        unknown="this passkey is not enrolled here; use the enrolment link you were given",
        again="sign in again",
    )
    return credential.approver, "passkey", credential.id


async def checked_assertion(
    console: Console,
    request: Request,
    assertion: str,
    challenge: bytes,
    *,
    unknown: str,
    again: str,
    approver: str | None = None,
) -> Credential:
    """The enrolled passkey (of `approver`, when given) that signed `challenge` in `assertion`, its signature
    counter advanced; else ApprovalError: `unknown` for a passkey not enrolled (or another approver's),
    `again` says what to do after one used elsewhere at the same moment."""
    credential_id = assertion_credential_id(assertion)
    credential = None if credential_id is None else await console.store.credential(credential_id)
    if credential is None or (approver is not None and credential.approver != approver):
        raise ApprovalError(unknown)
    count = verify_assertion(
        assertion,
        challenge=challenge,
        rp_id=console.rp_id(request),
        origin=console.origin(request),
        public_key=credential.public_key,
        sign_count=credential.sign_count,
    )
    if not await console.store.advance_counter(credential, count):
        raise ApprovalError(f"this passkey was used elsewhere at the same moment; {again}")
    return credential


async def _totp_signin(console: Console, form: dict[str, str]) -> str:
    name = (form.get("name") or "").strip()
    code = (form.get("code") or "").strip()
    if not name or not code:
        raise ApprovalError("use your passkey, or enter your approver name and the code your app shows")
    approver = await console.approvals.approvers.get(name)
    if approver is None or not approver.groups:
        raise ApprovalError(f"approver `{name[:64]}` is not enrolled; ask for `guard-mcp approvers add`")
    await console.approvals.approvers.verify(name, approver.groups[0], code)
    return name


async def signout(console: Console, request: Request) -> Response:
    session = await console.session(request)
    form = await _form(request)
    if session is not None and check_csrf(request, session.csrf, form.get("csrf")):
        await console.store.end(session)
        await console.event("console.signed_out", session, {"approver": session.approver})
    response = RedirectResponse(f"{BASE}/signin", status_code=303)
    console.clear_cookie(request, response)
    return response


# -- enrolment -------------------------------------------------------------------------------------


async def enrol_page(console: Console, request: Request) -> Response:
    token = request.path_params["token"]
    approver = await console.store.enrolment(token)
    session, cookie = await _visitor(console, request)
    if approver is None:
        response = await console.message(
            request,
            session,
            "Link not valid",
            "This enrolment link was already used or has expired. Ask for a new one: guard-mcp approvers link NAME",
            status=410,
        )
    else:
        response = await console.render("enrol.html", request, session, approver=approver, token=token)
    return _with_cookie(console, request, response, cookie, ANONYMOUS_TTL)


async def enrol_options(console: Console, request: Request) -> Response:
    token = request.path_params["token"]
    session = await console.session(request)
    if session is None or not check_csrf(request, session.csrf, None):
        return JSONResponse({"error": "session expired; reload the page"}, status_code=403)
    approver = await console.store.enrolment(token)
    if approver is None:
        return JSONResponse({"error": "this enrolment link was already used or has expired"}, status_code=410)
    existing = [c.id for c in await console.store.credentials_of(approver)]
    user_handle = secrets.token_bytes(32)
    options, challenge = registration_options(
        rp_id=console.rp_id(request), name=approver, user_handle=user_handle, exclude=existing
    )
    await console.store.put_challenge(session, "enrol", digest(token), challenge + user_handle)
    return Response(options, media_type="application/json")


async def enrol_complete(console: Console, request: Request) -> Response:
    token = request.path_params["token"]
    session = await console.session(request)
    form = await _form(request)
    if session is None or not check_csrf(request, session.csrf, form.get("csrf")):
        return await console.message(request, None, "Session expired", "Open the enrolment link again.", status=403)
    approver = await console.store.enrolment(token)
    stored = await console.store.take_challenge(session, "enrol", digest(token))
    if approver is None or stored is None:
        return await console.message(
            request,
            session,
            "Link not valid",
            "This enrolment link was already used or has expired, or the page was open too "
            "long. Ask for a new one: guard-mcp approvers link NAME",
            status=410,
        )
    challenge, user_handle = stored[:-32], stored[-32:]
    try:
        registered = verify_registration(
            form.get("credential") or "",
            challenge=challenge,
            rp_id=console.rp_id(request),
            origin=console.origin(request),
        )
    except ApprovalError as exc:
        return await console.message(request, session, "Passkey not enrolled", str(exc), status=400)
    credential = Credential(
        registered.credential_id, approver, user_handle.hex(), registered.public_key, registered.sign_count
    )
    if not await console.store.enrol(token, credential):
        return await console.message(
            request,
            session,
            "Link not valid",
            "This enrolment link was already used. Ask for a new one: guard-mcp approvers link NAME",
            status=410,
        )
    await console.event(
        "console.passkey_enrolled", session, {"approver": approver, "credential_id": registered.credential_id}
    )
    return RedirectResponse(f"{BASE}/signin?enrolled=1&next={DEFAULT_NEXT}", status_code=303)
