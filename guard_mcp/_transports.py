"""Serving the guard: stdio (the default for desktop clients) and streamable HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
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
from uvicorn.protocols.http.h11_impl import H11Protocol

from guard_mcp._audit import EventIn
from guard_mcp._errors import ConfigError
from guard_mcp._identity import http_token

if TYPE_CHECKING:
    from anyio.lowlevel import EventLoopToken

    from guard_mcp._server import Guard

__all__ = ["LOOPBACK", "bind_http", "build_http_app", "serve_http", "serve_stdio"]

log = logging.getLogger("guard_mcp.http")


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


LOOPBACK = ("127.0.0.1", "localhost", "::1")  # bind addresses whose browser origins are allowed by default
_LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
_JWKS_PATH = "/.well-known/jwks.json"
_REFUSALS_EVERY = 60.0  # seconds: refused tokens are audited at once, then summed up at most this often


async def _refuse(send: Send, status: int, error: str, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *extra]})
    await send({"type": "http.response.body", "body": body})


def _one_line_errors(send: Send) -> Send:
    """Cut the message of a JSON-RPC error in a 4xx answer to its first line: the SDK's handshake-era
    parser answers a malformed request with a multi-line pydantic dump (model names, echoed input)."""
    start: dict[str, Any] | None = None
    chunks: list[bytes] = []

    async def filtered(message: dict[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = _first_line(b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        start = None
        chunks.clear()

    return cast("Send", filtered)


def _first_line(body: bytes) -> bytes:
    try:
        doc = json.loads(body)
        error = doc["error"]
        text = error["message"]
    except (ValueError, TypeError, KeyError):
        return body
    if not isinstance(text, str) or "\n" not in text:
        return body
    error["message"] = text.splitlines()[0][:200]
    return json.dumps(doc).encode()


class _Gate:
    """In front of the MCP app, on every bind address: a request carrying an `Origin` the guard does
    not allow is refused (403; the MCP spec's defence against DNS rebinding, which the SDK applies on
    loopback binds only), and one without `Authorization: Bearer <token>` (401; the scheme in any case,
    the token compared in constant time), loopback included: any local process could call every tool
    otherwise. The JWKS stays public.

    Refused tokens leave a trace without flooding the log: the first is audited at once
    (`http.unauthorized`, with the client address, never the token), the rest of the minute as one
    count when the minute is up.
    """

    def __init__(self, app: ASGIApp, guard: Guard, *, host: str, token: str, origins: list[str]) -> None:
        self.app = app
        self.guard = guard
        self.token = token.encode()
        self.origins = [*origins, *(_LOOPBACK_ORIGINS if host in LOOPBACK else ())]
        self._refused = 0
        self._clients: set[str] = set()
        self._window_open = False

    def _origin_ok(self, origin: str) -> bool:
        return any(origin == allowed or (allowed.endswith(":*") and origin.startswith(allowed[:-1]))
                   for allowed in self.origins)

    def _token_ok(self, authorization: bytes) -> bool:
        scheme, _, credential = authorization.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != _JWKS_PATH:
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin")
            if origin is not None and not self._origin_ok(origin.decode("latin-1")):
                await _refuse(send, 403, "forbidden_origin",
                              "requests from this origin are refused; allow it in `guard.http.allowed_origins`", [])
                return
            if not self._token_ok(headers.get(b"authorization", b"")):
                await self._note_refusal(scope)
                await _refuse(send, 401, "unauthorized", "send `Authorization: Bearer <token>`",
                              [(b"www-authenticate", b"Bearer")])
                return
            await self._serve(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, _one_line_errors(cast("Send", tracked)))
        except asyncio.CancelledError:
            if not self.guard.stop_requested.is_set():
                raise
            # uvicorn cancels what outlived a stopping guard's grace, and would log it as a crash and
            # answer a bare 500. The call itself is already recorded (`call.unresolved`): say why plainly.
            if not started:
                with contextlib.suppress(Exception):
                    await _refuse(send, 503, "guard_stopping", "the guard is stopping; repeat the call once it is "
                                  "back", [])

    async def _note_refusal(self, scope: Scope) -> None:
        client = scope.get("client")
        if client and len(self._clients) < 16:
            self._clients.add(str(client[0]))
        self._refused += 1
        if self._window_open:
            return
        self._window_open = True
        await self._record()  # the first of a quiet minute, at once
        asyncio.get_running_loop().call_later(_REFUSALS_EVERY, self._close_window)

    def _close_window(self) -> None:
        self._window_open = False
        if self._refused:
            task = asyncio.ensure_future(self._record())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _record(self) -> None:
        refused, clients = self._refused, sorted(self._clients)
        self._refused, self._clients = 0, set()
        log.warning("refused %d HTTP request(s) without the bearer token (from %s)", refused, ", ".join(clients))
        with contextlib.suppress(Exception):  # the log is closing: the warning above still tells
            await self.guard.audit.append(EventIn("http.unauthorized", data={"refused": refused, "clients": clients}))


def build_http_app(guard: Guard, *, host: str, token: str | None, origins: list[str] | None = None) -> ASGIApp:
    """The MCP endpoint behind the gate. No caller is anonymous, on any bind: without `token`, the
    configured `guard.http.token` or the one kept in the state directory (made now if need be) is required."""
    if token is None:
        token, _ = http_token(guard.config, guard.state)

    async def jwks(_: Request) -> Response:
        return JSONResponse(guard.keys.jwks(), headers={"cache-control": "max-age=60"})

    app: Any = guard.server.streamable_http_app(
        streamable_http_path="/mcp",
        host=host,
        custom_starlette_routes=[Route(_JWKS_PATH, jwks, methods=["GET"])],
    )
    return _Gate(app, guard, host=host, token=token, origins=list(origins or []))


_HEAD_TIMEOUT = 10.0  # seconds a connection has to send a complete request head


class _Http(H11Protocol):
    """uvicorn's HTTP/1.1 with a deadline on the request head. uvicorn closes an idle connection only
    after a first response, and any byte received stops that clock: a client that connects and sends
    nothing, or trickles its headers, held its connection (and a file descriptor) for ever, before any
    token was checked. Here one that has not sent a complete head within _HEAD_TIMEOUT of opening, or
    of its last response, is closed."""

    _head_timer: asyncio.TimerHandle | None = None
    _waiting: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._waiting = self.cycle
        self._head_timer = self.loop.call_later(_HEAD_TIMEOUT, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting:  # a request head arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def _head_overdue(self) -> None:
        self._head_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.cycle is self._waiting and idle and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def bind_http(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts, so a taken port is one clear error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on `{host}:{port}`: {exc.strerror or exc}; choose another `--port` "
                          "(or `guard.http.port`), or stop what is using it") from None


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the guard's (`guard.stopping()`) say when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# Seconds a stopping guard lets open HTTP requests finish before they are cancelled (and recorded so).
_HTTP_GRACE = 2


async def serve_http(guard: Guard, sock: socket.socket, *, host: str, token: str | None,
                     origins: list[str] | None = None) -> None:
    app = build_http_app(guard, host=host, token=token, origins=origins)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", http=_Http,
                            timeout_graceful_shutdown=_HTTP_GRACE)
    server = _Uvicorn(config)

    async def stop_when_asked() -> None:
        await guard.stop_requested.wait()
        server.should_exit = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_asked)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
