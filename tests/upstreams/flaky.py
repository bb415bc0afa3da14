"""A stdio upstream for failure tests: `echo`, `crash` (the process dies mid-call), `slow`, and
a description that follows FLAKY_DESCRIPTION, so a test can change a tool definition."""

from __future__ import annotations

import os
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

server: MCPServer[Any] = MCPServer("flaky")


@server.tool(description=os.environ.get("FLAKY_DESCRIPTION", "Echo the text back."))
def echo(text: str) -> str:
    return text


@server.tool(description="Exit the process in the middle of the call.")
def crash() -> str:
    os._exit(3)


@server.tool(description="Take a while.")
async def slow(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "done"


if __name__ == "__main__":
    if os.environ.get("FLAKY_EXIT_AT_ONCE"):
        raise SystemExit(1)
    server.run("stdio")
