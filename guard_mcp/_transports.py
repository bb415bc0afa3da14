"""Serving the guard: stdio (the default for desktop clients) and streamable HTTP on loopback."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from mcp.server.stdio import stdio_server
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from guard_mcp._server import Guard

__all__ = ["build_http_app", "serve_http", "serve_stdio"]


async def serve_stdio(guard: Guard) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await guard.server.run(read_stream, write_stream, guard.initialization_options())


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


async def serve_http(guard: Guard, *, host: str, port: int, token: str | None,
                     started: anyio.Event | None = None) -> None:
    app = build_http_app(guard, host=host, token=token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    if started is None:
        await server.serve()
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
            await anyio.sleep(0.02)
        started.set()
