"""`guard-mcp audit show ID`: everything recorded about one call or one approval, by request id, by the
approval id a client is given, or by an event's seq."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from click.testing import CliRunner, Result
from guard_kit import config_from, reason_of, running_guard, text_of
from mcp import Client
from mcp.server import Server

from guard_mcp._state import StateDir
from guard_mcp.cli import main

CONFIG = """
guard:
  approvals: {wait: 0.2s}
upstreams:
  vault:
    command: unused-in-process
    tools:
      store: {action: note.store, category: write, reversibility: none, blast_radius: single,
              sensitivity: confidential, resource: note, headline: "Store the note {note}"}
"""


def _vault() -> Server[object]:
    async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"note": {"type": "string"}}}
        return types.ListToolsResult(tools=[types.Tool(name="store", input_schema=schema)])

    async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="stored")])

    return Server("vault", on_list_tools=list_tools, on_call_tool=call_tool)


def cli(config: Path, state: StateDir, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        [*args, "--config", str(config), "--state-dir", str(state.root)],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )


@pytest.fixture
def story(state: StateDir, tmp_path: Path) -> dict[str, Any]:
    """A call that waited for approval, the approval given at the terminal, the repeated call that used it,
    and a later call whose argument quotes the approval's id."""
    config = tmp_path / "upstreams.yaml"
    config.write_text(CONFIG)

    async def run() -> dict[str, Any]:
        async with running_guard(config_from(CONFIG, state), state, inprocess={"vault": _vault()}) as guard:
            async with Client(guard.server) as client:
                first = await client.call_tool("vault__store", {"note": "hello"})
                assert reason_of(first) == "pending_approval"
                approval_id = re.search(r"apr_[a-z2-7]{26}", text_of(first))
                assert approval_id is not None
                ok = await anyio.to_thread.run_sync(
                    lambda: cli(config, state, "approvals", "approve", approval_id.group(0))
                )
                assert ok.exit_code == 0, ok.output
                repeated = await client.call_tool("vault__store", {"note": "hello"})
                assert text_of(repeated) == "stored"
                await client.call_tool("vault__store", {"note": approval_id.group(0)})  # quotes the id
        return {"config": config, "approval_id": approval_id.group(0)}

    return anyio.run(run)


def test_show_an_approval_id_tells_the_whole_story_in_order(story: dict[str, Any], state: StateDir) -> None:
    shown = cli(story["config"], state, "audit", "show", story["approval_id"], "--json")
    assert shown.exit_code == 0, shown.output
    out = json.loads(shown.output)
    assert set(out) == {"query", "kind", "call", "calls", "approval", "events"} and out["kind"] == "approval"
    approval = out["approval"]
    asked, used = approval["calls"]
    assert (approval["state"], approval["request_id"], approval["used_by"]) == ("approved", asked, used)
    assert approval["headline"] == "Store the note hello" and approval["approver"]
    assert out["call"]["request_id"] == asked and [c["request_id"] for c in out["calls"]] == [asked, used]
    seqs = [e["seq"] for e in out["events"]]
    assert seqs == sorted(seqs) and all(e["intact"] for e in out["events"])
    types_ = [e["type"] for e in out["events"]]
    for kind in (
        "call.received",
        "approval.requested",
        "approval.pending",
        "operator.decided",
        "approval.consumed",
        "permit.issued",
        "call.result",
    ):
        assert kind in types_
    assert types_.index("approval.requested") < types_.index("operator.decided") < types_.index("approval.consumed")
    # the later call that quoted the id in an argument is not part of the approval's story
    assert {e["request_id"] for e in out["events"]} == {asked, used}


def test_show_an_approval_id_as_text_says_who_decided_and_which_call_used_it(
    story: dict[str, Any], state: StateDir
) -> None:
    shown = cli(story["config"], state, "audit", "show", story["approval_id"], "--plain")
    assert shown.exit_code == 0, shown.output
    out = json.loads(cli(story["config"], state, "audit", "show", story["approval_id"], "--json").output)
    assert f"{story['approval_id']}  Store the note hello" in shown.output
    assert f"used by {out['approval']['used_by']}" in shown.output and "approved by" in shown.output
    table = [line.split("\t") for line in shown.output.splitlines() if "\t" in line]
    assert table[0] == ["+ms", "time", "seq", "event", "request", "detail", "intact"]
    assert [row[3] for row in table[1:]] == [e["type"] for e in out["events"]]


def test_show_on_an_80_column_terminal_puts_each_event_on_its_own_lines(story: dict[str, Any], state: StateDir) -> None:
    # seven columns at 80 characters folded every detail into a column a few letters wide
    result = CliRunner(env={"COLUMNS": "80", "FORCE_COLOR": "1"}).invoke(
        main, ["audit", "show", story["approval_id"], "--state-dir", str(state.root)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    assert "│" not in text and 'state="approved" approver=' in text
    heads = [line.split() for line in text.splitlines() if line[:7].strip().isdigit()]
    assert [h[3] for h in heads][:3] == ["call.received", "call.decided", "approval.requested"]
    assert all(h[-1] == "intact" for h in heads)


def test_show_a_seq_tells_the_story_of_the_call_its_event_belongs_to(story: dict[str, Any], state: StateDir) -> None:
    out = json.loads(cli(story["config"], state, "audit", "show", story["approval_id"], "--json").output)
    decided = next(e for e in out["events"] if e["type"] == "operator.decided")
    by_seq = json.loads(cli(story["config"], state, "audit", "show", str(decided["seq"]), "--json").output)
    assert by_seq["kind"] == "seq" and by_seq["call"]["request_id"] == decided["request_id"]
    assert decided["seq"] in [e["seq"] for e in by_seq["events"]]
    by_request = json.loads(cli(story["config"], state, "audit", "show", decided["request_id"], "--json").output)
    assert by_request["kind"] == "request" and by_request["events"] == by_seq["events"]


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("apr_notanid", "is not an approval id"),
        ("apr_" + "a" * 26, "no audit events for approval"),
        ("999999", "no audit event with seq `999999`"),
        ("99999999999999999999999", "no audit event with seq"),
        ("req_nothing", "no audit events for request `req_nothing`"),
    ],
)
def test_show_what_is_not_there_is_one_line(story: dict[str, Any], state: StateDir, target: str, said: str) -> None:
    result = CliRunner().invoke(main, ["audit", "show", target, "--state-dir", str(state.root)])
    assert result.exit_code == 2 and said in result.output and len(result.output.strip().splitlines()) == 1
