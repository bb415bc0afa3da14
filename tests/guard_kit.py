"""Shared helpers for tests that run a whole guard in-process."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.client._memory import InMemoryTransport
from mcp.server import Server, ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.message import SessionMessage
from mcp_types.jsonrpc import ErrorData, JSONRPCError, JSONRPCRequest

from guard_mcp._approvals import ApprovalStore
from guard_mcp._clock import Clock
from guard_mcp._config import GuardConfig, load_config
from guard_mcp._server import Guard, open_guard
from guard_mcp._state import StateDir

TESTS = Path(__file__).parent


def config_from(text: str, state: StateDir, source_dir: Path | None = None) -> GuardConfig:
    cfg = load_config(text=text, environ={}, builtins={"GUARD_STATE_DIR": str(state.root), "PYTHON": sys.executable})
    if source_dir is not None:
        cfg = cfg.model_copy(update={"source": source_dir / "upstreams.yaml"})
    return cfg


@contextlib.asynccontextmanager
async def running_guard(
    config: GuardConfig,
    state: StateDir,
    *,
    clock: Clock | None = None,
    inprocess: dict[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Guard]:
    async with open_guard(
        config, state, clock=clock, inprocess_upstreams=inprocess, upstream_backoff=(0.05, 0.2), **kwargs
    ) as guard:
        yield guard


class RecordingUpstream:
    """An in-process upstream that records the `_meta` and arguments of every call it receives."""

    def __init__(
        self, tools: list[types.Tool] | None = None, *, announce: InMemorySubscriptionBus | None = None
    ) -> None:
        """`announce`: serve `subscriptions/listen` from this bus (2026-07-28 change announcements)."""
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.tools = tools or [
            types.Tool(
                name="echo",
                description="Echo.",
                input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            )
        ]

        async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
            return types.ListToolsResult(tools=self.tools)

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            self.calls.append((params.name, dict(params.arguments or {}), dict(params.meta or {})))
            text = str((params.arguments or {}).get("text", ""))
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=text)], structured_content={"echoed": text}
            )

        self.server: Server[Any] = Server(
            "recording",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_subscriptions_listen=ListenHandler(announce) if announce else None,
        )


class HandshakeOnly:
    """A transport to an in-process upstream that answers `server/discover` with "method not found",
    so the guard's client falls back to the handshake era, as with most upstreams shipped today:
    such an upstream may send requests (elicitation) to the guard mid-call."""

    def __init__(self, server: Server[Any]) -> None:
        self.server = server

    @contextlib.asynccontextmanager
    async def _streams(self) -> AsyncIterator[tuple[Any, Any]]:
        to_client, client_reads = anyio.create_memory_object_stream[Any](16)
        client_writes, from_client = anyio.create_memory_object_stream[Any](16)
        # closed once the relaying tasks are done, whichever side the client left open
        async with (
            to_client,
            client_reads,
            client_writes,
            from_client,
            InMemoryTransport(self.server) as (read, write),
            anyio.create_task_group() as tg,
        ):

            async def down() -> None:
                async for message in read:
                    await to_client.send(message)

            async def up() -> None:
                async for message in from_client:
                    m = message.message
                    if isinstance(m, JSONRPCRequest) and m.method == "server/discover":
                        error = ErrorData(code=types.METHOD_NOT_FOUND, message="Method not found")
                        await to_client.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=m.id, error=error)))
                    else:
                        await write.send(message)

            tg.start_soon(down)
            tg.start_soon(up)
            try:
                yield client_reads, client_writes
            finally:
                tg.cancel_scope.cancel()

    async def __aenter__(self) -> tuple[Any, Any]:
        self._stack = contextlib.AsyncExitStack()
        return await self._stack.enter_async_context(self._streams())

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


ECHO_CONFIG = """
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public}
"""


def approval_store(guard: Guard) -> ApprovalStore:
    """The approvals store of a guard whose config has approvals."""
    assert guard.pipeline.approvals is not None, "this guard's config has no approvals"
    return guard.pipeline.approvals.store


def meta_of(values: dict[str, Any]) -> types.RequestParamsMeta:
    """A request's `_meta` with any keys: the SDK types it as an open TypedDict (PEP 728 `extra_items`),
    which mypy does not know yet, so the cast is written once, here."""
    return cast(types.RequestParamsMeta, values)


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def reason_of(result: types.CallToolResult) -> str | None:
    meta = result.meta or {}
    decision = meta.get("dev.guard-mcp/decision") or {}
    reason = decision.get("reason")
    return str(reason) if reason is not None else None
