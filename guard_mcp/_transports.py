"""Serving the guard: stdio (the default for desktop clients) and streamable HTTP on loopback."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
import uvicorn
from mcp.server.stdio import stdio_server
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from anyio.lowlevel import EventLoopToken

    from guard_mcp._server import Guard

__all__ = ["build_http_app", "serve_http", "serve_stdio"]


class _StdinLines:
    """The client's messages from fd 0, a line at a time, read by a daemon thread.

    The SDK reads stdin in a worker thread that a cancel cannot interrupt, so a guard told to stop
    (SIGTERM) would wait for the client's next line or its EOF. Here the blocked read belongs to a
    daemon thread that nobody waits for. While serving, fd 0 points at the null device (as the SDK
    does it), so nothing else in the process reads the wire.
    """

    def __init__(self) -> None:
        # Never closed: the reading thread may still be blocked on it when serving ends.
        self._wire = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        self._send, self._lines = anyio.create_memory_object_stream[str](0)
        threading.Thread(target=self._read, args=(anyio.lowlevel.current_token(),), name="guard-mcp-stdin",
                         daemon=True).start()

    def restore(self) -> None:
        os.dup2(self._wire, 0)

    def _read(self, token: EventLoopToken) -> None:
        wire = open(self._wire, "rb", closefd=False)  # noqa: SIM115 - lives as long as the thread
        try:
            for raw in iter(wire.readline, b""):
                anyio.from_thread.run(self._send.send, raw.decode("utf-8", errors="replace"), token=token)
        except Exception:  # the loop has stopped, or `end()` came first: nobody is reading
            return
        with contextlib.suppress(Exception):
            anyio.from_thread.run(self._send.aclose, token=token)

    def end(self) -> None:
        """End the lines here, as the client's EOF would: the SDK's transport then winds down."""
        self._send.close()

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._lines.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


async def serve_stdio(guard: Guard) -> None:
    if sys.platform == "win32":  # no signals to stop on there: the SDK's own reader
        async with stdio_server() as (read_stream, write_stream):
            await guard.server.run(read_stream, write_stream, guard.initialization_options())
        return
    stdin = _StdinLines()
    try:
        async with stdio_server(stdin=cast("anyio.AsyncFile[str]", stdin)) as (read_stream, write_stream), \
                anyio.create_task_group() as tg:

            async def stop_when_asked() -> None:
                await guard.stop_requested.wait()
                stdin.end()  # the SDK's transport lasts until its input ends
                tg.cancel_scope.cancel()  # calls in flight are cancelled, and recorded as the guard stopping

            tg.start_soon(stop_when_asked)
            await guard.server.run(read_stream, write_stream, guard.initialization_options())
            tg.cancel_scope.cancel()  # the client closed stdin
    finally:
        stdin.restore()


class _BearerGate:
    """Refuse MCP requests without the configured bearer token (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/.well-known/jwks.json":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = json.dumps({"error": "unauthorized", "detail": "send `Authorization: Bearer <token>`"})
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)


def build_http_app(guard: Guard, *, host: str, token: str | None) -> ASGIApp:
    async def jwks(_: Request) -> Response:
        return JSONResponse(guard.keys.jwks(), headers={"cache-control": "max-age=60"})

    app: Any = guard.server.streamable_http_app(
        streamable_http_path="/mcp",
        host=host,
        custom_starlette_routes=[Route("/.well-known/jwks.json", jwks, methods=["GET"])],
    )
    return _BearerGate(app, token) if token else app


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the guard's (`guard.stopping()`) say when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# Seconds a stopping guard lets open HTTP requests finish before they are cancelled (and recorded so).
_HTTP_GRACE = 2


async def serve_http(guard: Guard, *, host: str, port: int, token: str | None,
                     started: anyio.Event | None = None) -> None:
    app = build_http_app(guard, host=host, token=token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=_HTTP_GRACE)
    server = _Uvicorn(config)

    async def stop_when_asked() -> None:
        await guard.stop_requested.wait()
        server.should_exit = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_asked)
        if started is not None:
            tg.start_soon(server.serve)
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                await anyio.sleep(0.02)
            started.set()
            return
        await server.serve()
        tg.cancel_scope.cancel()
