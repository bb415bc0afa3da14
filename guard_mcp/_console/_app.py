"""The console as one ASGI app: its routes under `/console/`, behind the Host/Origin checks and the
security headers, and the ways it is served: mounted beside the MCP endpoint on the HTTP transport,
or on a loopback listener of its own for `serve` over stdio.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from guard_mcp._approvals import ApprovalStore
from guard_mcp._clock import Clock
from guard_mcp._config import ConsoleConfig
from guard_mcp._console import _audit_view, _auth, _manage, _views
from guard_mcp._console._context import BASE, Console, Recorder
from guard_mcp._console._security import Guarded, host_name
from guard_mcp._console._store import ConsoleStore
from guard_mcp._state import StateDir

__all__ = [
    "URL_FILE",
    "build_console_app",
    "console_enabled",
    "mount_console",
    "open_console",
    "open_guard_console",
    "serve_console",
    "write_url_file",
]

log = logging.getLogger("guard_mcp.console")

URL_FILE = "console.url"  # where a running guard says its console is, for `guard-mcp approvers add` links
_STATIC = Path(__file__).parent / "static"
View = Callable[[Console, Request], Awaitable[Response]]


def _bind(console: Console, view: View) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await view(console, request)

    return endpoint


class _Localhost:
    """A page opened on 127.0.0.1 or [::1] moves to `localhost`: browsers allow passkeys there, not on an IP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(host) in ("127.0.0.1", "::1"):
                port = urlsplit(f"//{host}").port
                query = scope.get("query_string", b"").decode("latin-1")
                target = f"{scope.get('scheme', 'http')}://localhost{f':{port}' if port else ''}{scope['path']}"
                await RedirectResponse(target + (f"?{query}" if query else ""), status_code=307)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_console_app(console: Console, *, listen_host: str) -> ASGIApp:
    def b(view: View) -> Callable[[Request], Awaitable[Response]]:
        return _bind(console, view)

    routes: list[Route | Mount] = [
        Route("/", b(_views.queue), methods=["GET"]),
        Route("/queue/rows", b(_views.queue_rows), methods=["GET"]),
        Route("/events", b(_views.events), methods=["GET"]),
        Route("/approvals/{approval_id}", b(_views.card), methods=["GET"]),
        Route("/approvals/{approval_id}/challenge", b(_views.step_up_options), methods=["POST"]),
        Route("/approvals/{approval_id}/decide", b(_views.decide), methods=["POST"]),
        Route("/signin", b(_auth.signin_page), methods=["GET"]),
        Route("/signin", b(_auth.signin_submit), methods=["POST"]),
        Route("/signin/options", b(_auth.signin_options), methods=["POST"]),
        Route("/signout", b(_auth.signout), methods=["POST"]),
        Route("/enrol/{token}", b(_auth.enrol_page), methods=["GET"]),
        Route("/enrol/{token}", b(_auth.enrol_complete), methods=["POST"]),
        Route("/enrol/{token}/options", b(_auth.enrol_options), methods=["POST"]),
        Route("/audit", b(_audit_view.audit_page), methods=["GET"]),
        Route("/audit/verify", b(_audit_view.verify_now), methods=["POST"]),
        Route("/audit/calls/{request_id}", b(_audit_view.timeline), methods=["GET"]),
        Route("/approvals/{approval_id}/explain", b(_manage.explain), methods=["GET"]),
        Route("/tools", b(_manage.tools), methods=["GET"]),
        Route("/tools/accept", b(_manage.tool_accept), methods=["POST"]),
        Route("/policy", b(_manage.policy), methods=["GET"]),
        Route("/grants", b(_manage.grants), methods=["GET"]),
        Route("/grants", b(_manage.grant_create), methods=["POST"]),
        Route("/grants/{grant_id}/revoke", b(_manage.grant_revoke), methods=["POST"]),
        Route("/approvers", b(_manage.approvers), methods=["GET"]),
        Mount("/static", StaticFiles(directory=_STATIC)),
    ]

    async def home(_: Request) -> Response:
        return RedirectResponse(f"{BASE}/", status_code=307)

    app = Starlette(routes=[Mount(BASE, routes=routes), Route("/", home, methods=["GET"])])
    return Guarded(
        _Localhost(app),
        hosts=console.hosts(listen_host),
        origins=[
            f"{p.scheme}://{p.netloc}"
            for p in (urlsplit(u) for u in (console.config.public_url, console.public_url) if u)
        ],
    )


def mount_console(app: ASGIApp, console_app: ASGIApp) -> ASGIApp:
    """`app` with `/console` (and its sub-paths) answered by the console, everything else as before.

    The console is in front of the MCP endpoint's gate on purpose: a browser cannot send the MCP
    bearer token, and the console authenticates its own visitors (passkeys, sessions, CSRF)."""

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == BASE or path.startswith(BASE + "/"):
            await console_app(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


@contextlib.asynccontextmanager
async def open_console(
    *,
    approvals: ApprovalStore,
    state: StateDir,
    clock: Clock,
    config: ConsoleConfig,
    record: Recorder | None = None,
    guard: Any = None,
    public_url: str | None = None,
) -> AsyncIterator[Console]:
    store = await ConsoleStore.open(state, clock, session_ttl=config.session, idle_ttl=config.idle)
    try:
        console = Console(
            approvals=approvals,
            store=store,
            state=state,
            clock=clock,
            config=config,
            guard=guard,
            public_url=public_url,
        )
        if record is not None:
            console.record = record
        yield console
    finally:
        await store.close()


def write_url_file(state: StateDir, url: str) -> None:
    """Say where this guard's console is (the CLI's enrolment links use it when no public URL is set)."""
    try:
        (state.root / URL_FILE).write_text(url + "\n")
    except OSError as exc:
        log.warning("could not write %s: %s", state.root / URL_FILE, exc)


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:  # the guard's own signal handling says when to stop
        yield


async def serve_console(app: ASGIApp, sock: socket.socket, stop: anyio.Event) -> None:
    """Serve the console on its own listener until `stop` is set."""
    server = _Uvicorn(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))

    async def stop_when_asked() -> None:
        await stop.wait()
        server.should_exit = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_asked)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()


def console_enabled(config: ConsoleConfig, listen_host: str) -> bool:
    from guard_mcp._transports import LOOPBACK

    return config.enabled if config.enabled is not None else listen_host in LOOPBACK


@contextlib.asynccontextmanager
async def open_guard_console(guard: Any, *, listen_host: str, url: str) -> AsyncIterator[ASGIApp]:
    """The console of a running guard: its approval store and audit log, reachable at `url`; the
    guard's paused calls link to it from here on, and the CLI finds it through `<state>/console.url`."""
    stage = guard.pipeline.approvals
    config: ConsoleConfig = guard.config.guard.console
    async with open_console(
        approvals=stage.store,
        state=guard.state,
        clock=guard.clock,
        config=config,
        record=guard.audit.append,
        guard=guard,
        public_url=url,
    ) as console:
        write_url_file(guard.state, config.public_url or url)
        stage.console_link = console.link
        try:
            yield build_console_app(console, listen_host=listen_host)
        finally:
            stage.console_link = None
