"""A minimal upstream with one read-only tool, `echo(text)`: the fixed point benchmarks and tests
measure the proxy against (`python -m guard_mcp.demo.echo`, stdio).

Built on the low-level Server so the upstream itself adds as little as the SDK allows.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

__all__ = ["ECHO_TOOL", "build_echo", "main"]

ECHO_TOOL = types.Tool(
    name="echo",
    description="Return `text` unchanged.",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 65536}},
        "required": ["text"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
)


async def _list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[ECHO_TOOL])


async def _call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    text = args.get("text")
    if params.name != "echo" or not isinstance(text, str):
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=f"unknown tool `{params.name}` or missing `text`")],
            is_error=True,
        )
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def build_echo() -> Server[Any]:
    return Server("echo", version="1.0.0", on_list_tools=_list_tools, on_call_tool=_call_tool)


async def _serve() -> None:
    server = build_echo()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    anyio.run(_serve)


if __name__ == "__main__":
    main()
