"""What every console view shares: the stores, the clock, the templates, the signed-in session.

Templates autoescape everything, and every string that came from an agent, a client or an upstream
(tool names, arguments, reasons, descriptions) goes through `shown`, which also writes control,
bidirectional-override and zero-width characters as visible `\\uXXXX` codes: nothing an agent
typed can become markup, a link, or text that reads differently from what it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from guard_mcp._approvals import Approval, ApprovalStore, countdown, escape_text
from guard_mcp._approvals._prompt import _json as one_line_json
from guard_mcp._audit import EventIn
from guard_mcp._clock import Clock
from guard_mcp._config import ConsoleConfig
from guard_mcp._console._security import host_name
from guard_mcp._console._store import ConsoleStore, Session
from guard_mcp._state import StateDir

__all__ = ["BASE", "COOKIE", "Console", "Recorder"]

log = logging.getLogger("guard_mcp.console")

BASE = "/console"
COOKIE = "guard_console"
_HERE = Path(__file__).parent
Recorder = Callable[[EventIn], Awaitable[object]]


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _shown(value: Any) -> str:
    return escape_text(value if isinstance(value, str) else one_line_json(value))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shown=_shown, json_value=one_line_json, countdown=countdown, when=_when)
    return env


async def _discard(_: EventIn) -> None:
    return None


@dataclass
class Console:
    """One console: the approval store it shares with the CLI and the guard, and its own tables."""

    approvals: ApprovalStore
    store: ConsoleStore
    state: StateDir
    clock: Clock
    config: ConsoleConfig
    record: Recorder = _discard
    guard: Any = None  # the running guard, when the console is served by one (tools, policy pages)
    public_url: str | None = None  # where the console is reachable; links the guard hands out start here
    templates: jinja2.Environment = field(default_factory=_environment)
    sse_poll: float = 1.0

    # -- where things are ----------------------------------------------------------------------------

    def link(self, approval_id: str) -> str | None:
        base = self.config.public_url or self.public_url
        return None if base is None else f"{base}/approvals/{quote(approval_id)}"

    def hosts(self, listen_host: str) -> set[str]:
        from guard_mcp._transports import LOOPBACK

        hosts: set[str] = set()
        if listen_host in LOOPBACK:
            hosts.update(("localhost", "127.0.0.1", "::1"))
        for url in (self.config.public_url, self.public_url):
            if url:
                hosts.add(host_name(urlsplit(url).netloc))
        return hosts

    def origin(self, request: Request) -> str:
        """The origin the browser is on: the public URL's, behind a proxy, else the request's own."""
        host = request.headers.get("host", "")
        public = self.config.public_url
        if public:
            parts = urlsplit(public)
            if parts.netloc.lower() == host.lower():
                return f"{parts.scheme}://{parts.netloc}"
        return f"{request.url.scheme}://{host}"

    def rp_id(self, request: Request) -> str:
        name = host_name(self.origin(request).split("://", 1)[1])
        return "localhost" if name in ("127.0.0.1", "::1") else name

    def secure(self, request: Request) -> bool:
        return self.origin(request).startswith("https://")

    # -- sessions ------------------------------------------------------------------------------------

    async def session(self, request: Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        return None if token is None else await self.store.session(token)

    def set_cookie(self, request: Request, response: Response, token: str, max_age: float) -> None:
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(max_age),
            path=BASE,
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def clear_cookie(self, request: Request, response: Response) -> None:
        response.delete_cookie(COOKIE, path=BASE, httponly=True, samesite="strict", secure=self.secure(request))

    # -- rendering -----------------------------------------------------------------------------------

    async def render(
        self, name: str, request: Request, session: Session | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        from guard_mcp._console._audit_view import refresh_chain_status

        chain = await refresh_chain_status(self) if session is not None and session.approver else None
        page = self.templates.get_template(name).render(
            request=request, me=session, now=self.clock.now(), base=BASE, chain=chain, **context
        )
        return HTMLResponse(page, status_code=status)

    async def message(
        self, request: Request, session: Session | None, title: str, text: str, status: int = 400
    ) -> HTMLResponse:
        return await self.render("message.html", request, session, status=status, title=title, text=text)

    def to_sign_in(self, next_path: str) -> RedirectResponse:
        return RedirectResponse(f"{BASE}/signin?next={quote(next_path, safe='/')}", status_code=303)

    async def event(
        self, kind: str, session: Session | None, data: dict[str, Any], *, approval: Approval | None = None
    ) -> None:
        actor = f"approver:{session.approver}" if session is not None and session.approver else "console"
        try:
            await self.record(
                EventIn(
                    kind,
                    request_id=None if approval is None else approval.request_id,
                    actor=actor,
                    tool=None if approval is None else approval.tool,
                    data=data,
                )
            )
        except Exception:  # the decision itself is in the store; say loudly that its record is missing
            log.exception("the audit log did not record %s %s", kind, json.dumps(data, default=str)[:200])

    async def record_event(self, event: EventIn, session: Session) -> None:
        """Record a change made from the console under the signed-in approver (`approver:NAME`)."""
        actor = f"approver:{session.approver}" if session.approver else "console"
        try:
            await self.record(
                EventIn(
                    event.type,
                    request_id=event.request_id,
                    actor=actor,
                    upstream=event.upstream,
                    tool=event.tool,
                    data=event.data,
                )
            )
        except Exception:  # the change itself is made; say loudly that its record is missing
            log.exception("the audit log did not record %s %s", event.type, json.dumps(event.data, default=str)[:200])

    def is_admin(self, session: Session) -> bool:
        """Of a group named in `guard.console.admins` (none by default)."""
        return bool(set(self.config.admins) & set(session.groups))

    async def can_decide(self, session: Session, approval: Approval) -> bool:
        owners = {approval.group, approval.escalated_from} - {None}
        return bool(owners & set(session.groups))
