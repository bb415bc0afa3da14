"""The proxies the guard is measured against, each holding ONE upstream session open for its lifetime.

- bare:    a pass-through built on the SDK's low-level Server: forwards tools/list and tools/call and
           does nothing else. The floor any proxy on this SDK pays.
- fastmcp: FastMCP's own proxy (`fastmcp.server.create_proxy`) over an already connected FastMCP
           client, which is the mode where FastMCP reuses one backend session (its fastest).
- fastmcp-config:
           FastMCP configured the way its users write it: `create_proxy({"mcpServers": {...}})`
           mounted under a namespace on a FastMCP server run on stdio (tools become `everything_echo`).
           FastMCP then manages the backend connection itself.

`python bench/_baselines.py bare|fastmcp|fastmcp-config -- COMMAND ARGS...` serves one of them on
stdio in front of the stdio upstream COMMAND, for the fully stdio topology.
`python bench/_baselines.py bare-http PORT -- COMMAND ARGS...` serves the bare pass-through over
streamable HTTP on 127.0.0.1:PORT (`Server.streamable_http_app`, uvicorn with its defaults).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

__all__ = ["FASTMCP_NAMESPACE", "fastmcp_version", "open_bare_proxy", "open_fastmcp_proxy"]

FASTMCP_NAMESPACE = "everything"


@contextlib.asynccontextmanager
async def open_bare_proxy(upstream: StdioServerParameters) -> AsyncIterator[Server[Any]]:
    async with Client(upstream) as session:

        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            listed = await session.list_tools()
            return types.ListToolsResult(tools=listed.tools)

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            return await session.call_tool(params.name, params.arguments or {})

        yield Server("bare-proxy", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


def fastmcp_version() -> str | None:
    try:
        import fastmcp
    except ImportError:
        return None
    return str(fastmcp.__version__)


@contextlib.asynccontextmanager
async def open_fastmcp_proxy(upstream: StdioServerParameters) -> AsyncIterator[Server[Any]]:
    """FastMCP's proxy as an SDK low-level Server, so the same `mcp.Client` drives every target."""
    from fastmcp import Client as FastMCPClient
    from fastmcp.client.transports import StdioTransport
    from fastmcp.server import create_proxy

    # Its INFO lines about session reuse are advice for production, not benchmark output.
    logging.getLogger("fastmcp").setLevel(logging.WARNING)
    backend = FastMCPClient(StdioTransport(command=upstream.command, args=list(upstream.args), env=upstream.env))
    async with backend:
        proxy = create_proxy(backend, name="fastmcp-proxy")
        yield proxy._mcp_server


async def _serve_fastmcp_config(command: list[str]) -> None:
    from fastmcp import FastMCP
    from fastmcp.server import create_proxy

    logging.getLogger("fastmcp").setLevel(logging.WARNING)
    config = {"mcpServers": {FASTMCP_NAMESPACE: {"command": command[0], "args": command[1:]}}}
    server: Any = FastMCP("bench-proxy")
    server.mount(create_proxy(config), namespace=FASTMCP_NAMESPACE)
    await server.run_async(transport="stdio", show_banner=False)


async def _serve(kind: str, command: list[str]) -> None:
    if kind == "fastmcp-config":
        await _serve_fastmcp_config(command)
        return
    upstream = StdioServerParameters(command=command[0], args=command[1:])
    opener = open_bare_proxy if kind == "bare" else open_fastmcp_proxy
    async with opener(upstream) as server, stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def _serve_http(port: int, command: list[str]) -> None:
    import uvicorn

    upstream = StdioServerParameters(command=command[0], args=command[1:])
    async with open_bare_proxy(upstream) as server:
        app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        await uvicorn.Server(config).serve()


def main(argv: list[str]) -> None:
    if len(argv) >= 4 and argv[0] == "bare-http" and argv[1].isdigit() and argv[2] == "--":
        anyio.run(_serve_http, int(argv[1]), argv[3:])
        return
    if len(argv) < 3 or argv[0] not in ("bare", "fastmcp", "fastmcp-config") or argv[1] != "--":
        sys.exit(
            "usage: python bench/_baselines.py bare|fastmcp|fastmcp-config -- COMMAND ARGS...\n"
            "       python bench/_baselines.py bare-http PORT -- COMMAND ARGS..."
        )
    anyio.run(_serve, argv[0], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
