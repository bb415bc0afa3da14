"""Serving the guard: stdio (the default for desktop clients) and streamable HTTP on loopback."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

import anyio
import anyio.from_thread
import anyio.lowlevel
import uvicorn
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from guard_mcp._audit import EventIn
from guard_mcp._errors import ConfigError
from guard_mcp._identity import CALLER_SCOPE_KEY, CallerCheck, Refusal, caller_check
from guard_mcp._telemetry import with_metrics

if TYPE_CHECKING:
    from anyio.lowlevel import EventLoopToken
    from mcp.shared._stream_protocols import ReadStream, WriteStream

    from guard_mcp._server import Guard

__all__ = ["LOOPBACK", "bind_http", "build_http_app", "serve_http", "serve_stdio"]

log = logging.getLogger("guard_mcp.http")


class _StdinLines:
    """The client's messages from fd 0, a line at a time, read by a daemon thread.

    The SDK reads stdin in a worker thread that a cancel cannot interrupt, so a guard told to stop
    (SIGTERM) would wait for the client's next line or its EOF. Here the blocked read belongs to a
    daemon thread that nobody waits for. While serving, fd 0 points at the null device (as the SDK
    does it), so nothing else in the process reads the wire. Used when fd 0 is not a pipe or a
    socket (a terminal, a file); otherwise `_PipeLines` reads it on the event loop.
    """

    def __init__(self) -> None:
        # Never closed: the reading thread may still be blocked on it when serving ends.
        self._wire = os.dup(0)
        _divert(0, os.O_RDONLY)
        self._send, self._lines = anyio.create_memory_object_stream[str](0)
        threading.Thread(
            target=self._read, args=(anyio.lowlevel.current_token(),), name="guard-mcp-stdin", daemon=True
        ).start()

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


def _divert(fd: int, flags: int) -> None:
    """Point `fd` away from the wire (stdin at the null device, stdout at stderr), as the SDK does, so
    a stray read or print elsewhere in the process cannot take or tear a message."""
    other = os.open(os.devnull, flags) if flags == os.O_RDONLY else os.dup(2)
    os.dup2(other, fd)
    os.close(other)


def _is_pipe(fd: int, *, apart_from: int | None = None) -> bool:
    """A pipe or a socket (what desktop clients spawn a server with), which the event loop can watch.
    A terminal or a file is left to threads: non-blocking mode on a terminal is shared with the shell.
    `apart_from`: not the very socket that fd is (one socket for both directions, inetd style), whose
    incoming bytes the loop's write side would take for the client hanging up."""
    try:
        st = os.fstat(fd)
        other = os.fstat(apart_from) if apart_from is not None else None
    except OSError:
        return False
    if other is not None and (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino):
        return False
    return stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)


class _LineProtocol(asyncio.Protocol):
    """Bytes from the wire cut into lines for `_PipeLines`; reading pauses while lines wait unread."""

    def __init__(self) -> None:
        self.lines: collections.deque[bytes] = collections.deque()
        self.ended = False
        self._partial = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.ReadTransport", transport)

    def data_received(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._partial:
                self._partial += data[start : end + 1]
                self.lines.append(bytes(self._partial))
                self._partial.clear()
            else:
                self.lines.append(data[start : end + 1])
            start = end + 1
        if start < len(data):
            self._partial += data[start:]
        if self.lines:
            if len(self.lines) >= _PIPE_BACKLOG and self._transport is not None and not self._paused:
                self._paused = True  # the client writes faster than the guard reads: let the pipe fill
                self._transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        self.end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.end()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            if self._partial:  # a last line without its newline is still a line (as `readline` gives it)
                self.lines.append(bytes(self._partial))
                self._partial.clear()
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_line(self) -> bytes | None:
        while not self.lines:
            if self.ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        line = self.lines.popleft()
        if self._paused and len(self.lines) < _PIPE_BACKLOG // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return line


_PIPE_BACKLOG = 64  # lines read ahead of the server before the pipe is left to fill

_Transport = TypeVar("_Transport", bound=asyncio.BaseTransport)
_Protocol = TypeVar("_Protocol", bound=asyncio.BaseProtocol)


async def _take_fd(
    fd: int, connect: Callable[[IO[bytes]], Awaitable[tuple[_Transport, _Protocol]]]
) -> tuple[_Transport, _Protocol, int]:
    """Hand the wire on `fd` (0 or 1) to the event loop through `connect`, and divert `fd`; returns the
    transport, its protocol, and `wire`: a duplicate of the wire for `_give_back_fd`."""
    wire = os.dup(fd)
    try:
        transport, protocol = await connect(os.fdopen(os.dup(wire), "rb" if fd == 0 else "wb", buffering=0))
    except BaseException:
        os.close(wire)
        raise
    _divert(fd, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    return transport, protocol, wire


def _give_back_fd(fd: int, transport: asyncio.BaseTransport, wire: int) -> None:
    """Undo `_take_fd`: close the transport (a write transport writes what it still buffers first), and
    put the wire back on `fd` in blocking mode."""
    transport.close()
    with contextlib.suppress(OSError):
        os.set_blocking(wire, True)  # the description is shared with whoever gave us the pipe
    os.dup2(wire, fd)
    os.close(wire)


class _PipeLines:
    """The client's messages from fd 0 when it is a pipe or a socket, read on the event loop itself.

    The SDK's reader, and `_StdinLines`, block a thread on each line and hand it over to the loop: a
    round trip between threads on every message, which a busy machine makes slow. Here the loop
    watches the pipe (non-blocking mode, restored when serving ends), so a line costs no thread, and
    ending the lines needs no thread to give up a read either.
    """

    def __init__(self, transport: asyncio.ReadTransport, protocol: _LineProtocol, wire: int) -> None:
        self._transport = transport
        self._protocol = protocol
        self._wire = wire

    @classmethod
    async def open(cls) -> _PipeLines:
        loop = asyncio.get_running_loop()
        transport, protocol, wire = await _take_fd(0, lambda pipe: loop.connect_read_pipe(_LineProtocol, pipe))
        return cls(transport, protocol, wire)

    def restore(self) -> None:
        _give_back_fd(0, self._transport, self._wire)

    def end(self) -> None:
        """End the lines here, as the client's EOF would: the SDK's transport then winds down."""
        self._protocol.lines.clear()  # read ahead but not yet served: a stopping guard takes nothing more
        self._protocol.end()
        self._transport.pause_reading()

    def __aiter__(self) -> _PipeLines:
        return self

    async def __anext__(self) -> str:
        line = await self._protocol.next_line()
        if line is None:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _WriteProtocol(asyncio.Protocol):
    """Flow control for `_PipeOut`: `drained` waits until the pipe took everything written."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.lost: Exception | None = None
        self.closed = False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        self.resume_writing()

    async def drained(self) -> None:
        while self._paused and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.closed:
            raise self.lost if self.lost is not None else BrokenPipeError("the client closed the guard's stdout")


class _PipeOut:
    """The guard's answers to fd 1 when it is a pipe or a socket, written by the event loop.

    The SDK writes and flushes each message in a worker thread (two round trips between threads per
    answer). Here a message goes to the pipe at once from the loop; `flush` returns when the pipe has
    taken all of it (the write buffer's limits are zero), so a client that stops reading holds the
    guard's writer back as before, and nothing is left in a buffer when serving ends.
    """

    def __init__(self, transport: asyncio.WriteTransport, protocol: _WriteProtocol, wire: int) -> None:
        self._transport = transport
        self._protocol = protocol
        self._wire = wire

    @classmethod
    async def open(cls) -> _PipeOut:
        loop = asyncio.get_running_loop()
        transport, protocol, wire = await _take_fd(1, lambda pipe: loop.connect_write_pipe(_WriteProtocol, pipe))
        transport.set_write_buffer_limits(high=0, low=0)
        return cls(transport, protocol, wire)

    async def write(self, text: str) -> None:
        if self._protocol.closed:
            await self._protocol.drained()  # raises: the client is gone
        self._transport.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._protocol.drained()

    def restore(self) -> None:
        _give_back_fd(1, self._transport, self._wire)  # what is still buffered is written first


_NOT_A_MESSAGE = "Invalid Request: not a JSON-RPC 2.0 request, notification or response"


def _rejection(exc: Exception) -> JSONRPCError:
    """The JSON-RPC 2.0 answer to a line that is not a message: -32700 when it is not JSON (nesting
    deeper than the parser's limit included), else -32600, with the request's id when it has a usable
    one and null otherwise (a malformed response or notification is answered with null too)."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    for error in errors:
        if error["type"] == "json_invalid":
            detail = str(error.get("ctx", {}).get("error", "not JSON")).splitlines()[0][:200]
            return JSONRPCError(
                jsonrpc="2.0",
                id=None,
                error=ErrorData(code=PARSE_ERROR, message=f"Parse error: {detail}; send one JSON-RPC message per line"),
            )
    request_id: str | int | None = None
    for error in errors:  # the parser reports the whole object beside the members it is missing
        whole = error.get("input")
        if isinstance(whole, dict) and "method" in whole:
            found = whole.get("id")
            if isinstance(found, str | int) and not isinstance(found, bool):
                request_id = found
            break
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=INVALID_REQUEST, message=_NOT_A_MESSAGE))


def _blank(exc: Exception) -> bool:
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    return len(errors) == 1 and isinstance(errors[0].get("input"), str) and not errors[0]["input"].strip()


class _AnsweringMalformed:
    """The client's messages as the SDK's stdio transport parses them, with each line that does not
    parse answered at once (`_rejection`). The SDK hands such a line to the server as an exception,
    which only logs it: the client heard nothing and waited for its timeout. Well-formed messages
    pass straight through, with the sender's context the SDK's dispatcher reads."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], answers: WriteStream[SessionMessage]) -> None:
        self._inner = inner
        self._answers = answers

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            if _blank(item):  # a stray newline is not a message, and not worth an answer
                continue
            log.debug("answered a malformed message: %s", item)
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):  # the client left
                await self._answers.send(SessionMessage(_rejection(item)))

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _AnsweringMalformed:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _AnsweringMalformed:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def serve_stdio(guard: Guard) -> None:
    if sys.platform == "win32":  # no signals to stop on there: the SDK's own reader
        async with stdio_server() as (read_stream, write_stream):
            await guard.server.run(
                _AnsweringMalformed(read_stream, write_stream), write_stream, guard.initialization_options()
            )
        return
    # Checked before fd 0 is diverted; None for stdout: the SDK writes it (a terminal, a file).
    out_is_pipe = _is_pipe(1, apart_from=0)
    stdin: _PipeLines | _StdinLines = await _PipeLines.open() if _is_pipe(0) else _StdinLines()
    stdout: _PipeOut | None = None
    try:
        stdout = await _PipeOut.open() if out_is_pipe else None
        async with (
            stdio_server(
                stdin=cast("anyio.AsyncFile[str]", stdin), stdout=cast("anyio.AsyncFile[str] | None", stdout)
            ) as (read_stream, write_stream),
            anyio.create_task_group() as tg,
        ):

            async def stop_when_asked() -> None:
                await guard.stop_requested.wait()
                stdin.end()  # the SDK's transport lasts until its input ends
                tg.cancel_scope.cancel()  # calls in flight are cancelled, and recorded as the guard stopping

            tg.start_soon(stop_when_asked)
            await guard.server.run(
                _AnsweringMalformed(read_stream, write_stream), write_stream, guard.initialization_options()
            )
            tg.cancel_scope.cancel()  # the client closed stdin
    finally:
        if stdout is not None:
            stdout.restore()
        stdin.restore()


LOOPBACK = ("127.0.0.1", "localhost", "::1")  # bind addresses whose browser origins are allowed by default
_LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
_JWKS_PATH = "/.well-known/jwks.json"
_REFUSALS_EVERY = 60.0  # seconds: refused tokens are audited at once, then summed up at most this often


async def _refuse(send: Send, status: int, error: str, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), *extra]}
    )
    await send({"type": "http.response.body", "body": body})


def _one_line_errors(send: Send) -> Send:
    """Cut the message of a JSON-RPC error in a 4xx answer to its first line: the SDK's handshake-era
    parser answers a malformed request with a multi-line pydantic dump (model names, echoed input),
    and with -32602 (invalid params) where JSON-RPC 2.0 says -32600 (`_first_line`)."""
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


_SDK_SAYS_NOT_A_MESSAGE = "Validation error:"  # how the SDK's handshake-era HTTP transport begins that answer


def _first_line(body: bytes) -> bytes:
    try:
        doc = json.loads(body)
        error = doc["error"]
        text = error["message"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return body
    if not isinstance(text, str):
        return body
    if error.get("code") == INVALID_PARAMS and text.startswith(_SDK_SAYS_NOT_A_MESSAGE):
        error["code"] = INVALID_REQUEST
        error["message"] = _NOT_A_MESSAGE
    elif "\n" in text:
        error["message"] = text.splitlines()[0][:200]
    else:
        return body
    return json.dumps(doc).encode()


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(text: str) -> tuple[str, str, int] | None:
    """An origin as (scheme, host, port), the port made explicit; None for anything that is not exactly
    `http(s)://host[:port]` (a port that is not a number, user info, a path, `null`). Compared as parsed
    parts, never as a prefix: `http://localhost:1.evil.example` is not a port of localhost."""
    if not text.isascii() or not text.isprintable() or any(c in text for c in " \\?#@"):
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme, parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.path:
        return None
    return scheme, host, _DEFAULT_PORTS[scheme] if port is None else port


class _Gate:
    """In front of the MCP app, on every bind address: a request carrying an `Origin` the guard does
    not allow is refused (403; the MCP spec's defence against DNS rebinding, which the SDK applies on
    loopback binds only), and one without `Authorization: Bearer <token>` (401; the scheme in any case,
    the token compared in constant time), loopback included: any local process could call every tool
    otherwise. With an identity provider configured the bearer is a JWT it signed (`_identity`), and the
    caller it names rides the ASGI scope to the server. The JWKS and the OAuth metadata stay public.

    Refused tokens leave a trace without flooding the log: the first is audited at once
    (`http.unauthorized`, with the client address, never the token), the rest of the minute as one
    count when the minute is up.
    """

    def __init__(self, app: ASGIApp, guard: Guard, *, host: str, callers: CallerCheck, origins: list[str]) -> None:
        self.app = app
        self.guard = guard
        self.callers = callers
        self.public = {_JWKS_PATH, *callers.public_paths}
        self.origins: list[tuple[str, str, int | None]] = []
        for allowed in [*origins, *(_LOOPBACK_ORIGINS if host in LOOPBACK else ())]:
            any_port = allowed.endswith(":*")
            parsed = _origin(allowed[:-2] if any_port else allowed)
            if parsed is None:  # allows nothing, and says so
                log.warning(
                    "`%s` in `guard.http.allowed_origins` is not an origin and allows nothing; write it like "
                    "`https://app.example.com` or `http://localhost:*`",
                    allowed,
                )
                continue
            self.origins.append((parsed[0], parsed[1], None if any_port else parsed[2]))
        self._refused = 0
        self._clients: set[str] = set()
        self._window_open = False

    def _origin_ok(self, origin: str) -> bool:
        seen = _origin(origin)
        return seen is not None and any(
            seen[:2] == allowed[:2] and allowed[2] in (None, seen[2]) for allowed in self.origins
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.public:
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin")
            if origin is not None and not self._origin_ok(origin.decode("latin-1")):
                await _refuse(
                    send,
                    403,
                    "forbidden_origin",
                    "requests from this origin are refused; allow it in `guard.http.allowed_origins`",
                    [],
                )
                return
            caller = await self.callers.check(headers.get(b"authorization", b""))
            if isinstance(caller, Refusal):
                if caller.status == 401:
                    await self._note_refusal(scope)
                await _refuse(
                    send,
                    caller.status,
                    caller.error,
                    caller.detail,
                    [
                        (b"www-authenticate", caller.challenge.encode()),
                        *((k.encode(), v.encode()) for k, v in caller.extra.items()),
                    ],
                )
                return
            scope = {**scope, CALLER_SCOPE_KEY: caller}
            user = caller.user()
            if user is not None:  # the SDK binds each HTTP session to the credential that opened it
                scope["user"] = user
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
                    await _refuse(
                        send, 503, "guard_stopping", "the guard is stopping; repeat the call once it is back", []
                    )

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


def build_http_app(
    guard: Guard,
    *,
    host: str,
    token: str | None,
    origins: list[str] | None = None,
    resource: str | None = None,
    console: ASGIApp | None = None,
) -> ASGIApp:
    """The MCP endpoint behind the gate. No caller is anonymous, on any bind: with `guard.http.auth` a JWT
    of the identity provider is required (`resource`: the guard's URL as served, the default audience);
    otherwise `token`, else the configured `guard.http.token`, else the one kept in the state directory."""
    callers = caller_check(guard.config, guard.state, guard.clock, token=token, resource=resource)

    async def jwks(_: Request) -> Response:
        return JSONResponse(guard.keys.jwks(), headers={"cache-control": "max-age=60"})

    app: Any = guard.server.streamable_http_app(
        streamable_http_path="/mcp",
        host=host,
        custom_starlette_routes=[Route(_JWKS_PATH, jwks, methods=["GET"]), *callers.routes()],
    )
    served: ASGIApp = _Gate(app, guard, host=host, callers=callers, origins=list(origins or []))
    if console is not None:
        from guard_mcp._console import mount_console  # `/console` authenticates its own visitors (passkeys)

        served = mount_console(served, console)
    return with_metrics(served, guard.metrics, guard.config.guard.metrics)  # scrapers: guard.metrics, not the MCP token


_HEAD_TIMEOUT = 10.0  # seconds a connection has to send a complete request head


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Send each write at once (TCP_NODELAY). asyncio sets it only on sockets whose `proto` says TCP,
    and a socket from `socket.create_server` (`bind_http`), like every connection it accepts, says 0.
    With Nagle on, uvicorn's second write of a response (the body after the head) waited for the
    client's ACK of the first, which Linux delays by up to 40 ms: about 40 ms on every JSON answer."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Http(H11Protocol):
    """uvicorn's HTTP/1.1 with a deadline on the request head. uvicorn closes an idle connection only
    after a first response, and any byte received stops that clock: a client that connects and sends
    nothing, or trickles its headers, held its connection (and a file descriptor) for ever, before any
    token was checked. Here one that has not sent a complete head within _HEAD_TIMEOUT of opening, or
    of its last response, is closed."""

    _head_timer: asyncio.TimerHandle | None = None
    _waiting: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
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
        raise ConfigError(
            f"cannot listen on `{host}:{port}`: {exc.strerror or exc}; choose another `--port` "
            "(or `guard.http.port`), or stop what is using it"
        ) from None


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the guard's (`guard.stopping()`) say when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# Seconds a stopping guard lets open HTTP requests finish before they are cancelled (and recorded so).
_HTTP_GRACE = 2


async def serve_http(
    guard: Guard,
    sock: socket.socket,
    *,
    host: str,
    token: str | None,
    origins: list[str] | None = None,
    console: ASGIApp | None = None,
) -> None:
    port = sock.getsockname()[1]
    app = build_http_app(
        guard,
        host=host,
        token=token,
        origins=origins,
        console=console,
        resource=f"http://{f'[{host}]' if ':' in host else host}:{port}/mcp",
    )
    config = uvicorn.Config(app, log_level="warning", lifespan="on", http=_Http, timeout_graceful_shutdown=_HTTP_GRACE)
    server = _Uvicorn(config)

    async def stop_when_asked() -> None:
        await guard.stop_requested.wait()
        server.should_exit = True

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_asked)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()
    finally:
        sock.close()  # ours from here: uvicorn closes it on a clean stop, not when the serving is cancelled
