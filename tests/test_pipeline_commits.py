"""Where a call's permit record commits: on the caller's thread for a lone call (one fsync, no hand-off),
on the writer thread when another call is in flight (group commit, the event loop free). A call waiting
on a human is not load."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any

import anyio
import mcp_types as types
import pytest
from guard_kit import approval_store, config_from, running_guard
from mcp import Client
from mcp.server import Server, ServerRequestContext

from guard_mcp._audit import AuditLog, EventIn
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

READ = "{action: note.read, category: read, reversibility: full, blast_radius: single, sensitivity: public}"
MEDIUM = "{action: mail.send, category: communicate, reversibility: none, blast_radius: single, sensitivity: internal}"
CONFIG = f"""
guard:
  approvals: {{wait: 30s}}
upstreams:
  notes:
    command: unused-in-process
    tools:
      echo: {READ}
      send: {MEDIUM}
"""


def holding_upstream(release: anyio.Event, held: anyio.Event) -> Server[Any]:
    """`echo` answers at once, but for the text `hold`: that call waits for `release`."""

    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        return types.ListToolsResult(
            tools=[types.Tool(name=n, description=n, input_schema=schema) for n in ("echo", "send")]
        )

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        text = str((params.arguments or {}).get("text", ""))
        if text == "hold":
            held.set()
            await release.wait()
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("holding", on_list_tools=list_tools, on_call_tool=call_tool)


def spy_on_begin_many(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each permit record's `begin_many` was told: True, commit inline if the writer is idle."""
    asked: list[bool] = []
    begin_many = AuditLog.begin_many

    def spy(self: AuditLog, events: Sequence[EventIn], *, inline: bool = True) -> Coroutine[Any, Any, list[int]]:
        asked.append(inline)
        return begin_many(self, events, inline=inline)

    monkeypatch.setattr(AuditLog, "begin_many", spy)
    return asked


async def test_a_lone_call_commits_inline_and_one_beside_a_call_in_flight_goes_to_the_writer(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = spy_on_begin_many(monkeypatch)
    release, held = anyio.Event(), anyio.Event()
    upstream = holding_upstream(release, held)
    async with running_guard(config_from(CONFIG, state), state, inprocess={"notes": upstream}) as guard:
        async with Client(guard.server, mode="legacy") as client:
            alone = await client.call_tool("notes__echo", {"text": "one"})
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "notes__echo", {"text": "hold"})
                with anyio.fail_after(10):
                    await held.wait()  # in flight, at its upstream
                beside = await client.call_tool("notes__echo", {"text": "two"})
                release.set()
    assert not alone.is_error and not beside.is_error
    assert asked == [True, True, False]  # the lone call, the held one (alone then), the one beside it


async def test_a_call_waiting_for_a_human_does_not_keep_another_from_committing_inline(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = spy_on_begin_many(monkeypatch)
    upstream = holding_upstream(anyio.Event(), anyio.Event())
    async with running_guard(config_from(CONFIG, state), state, inprocess={"notes": upstream}) as guard:
        async with Client(guard.server, mode="legacy") as client, anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "notes__send", {"text": "to ana"})
            with anyio.fail_after(10):
                while not await approval_store(guard).list():  # noqa: ASYNC110 (the guard writes it)
                    await anyio.sleep(0.02)
            read = await client.call_tool("notes__echo", {"text": "one"})
            tg.cancel_scope.cancel()
    assert not read.is_error
    assert asked == [True]  # the read's record, while the other call waits on its approval
