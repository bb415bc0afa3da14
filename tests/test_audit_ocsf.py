"""`audit export --format ocsf`: every line an OCSF event a SIEM can ingest, and the export still
verifies: its chain, its signed head, and every OCSF field against the record it carries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from click.testing import CliRunner, Result
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, running_guard
from mcp import Client

from guard_mcp._state import StateDir
from guard_mcp.cli import main


async def record(state: StateDir) -> None:
    async with running_guard(
        config_from(ECHO_CONFIG, state), state, inprocess={"echo": RecordingUpstream().server}
    ) as guard:
        async with Client(guard.server) as client:
            await client.call_tool("echo__echo", {"text": "hello"})
            await client.call_tool("echo__nope", {})


def cli(state: StateDir, *args: str) -> Result:
    return CliRunner().invoke(
        main, [*args, "--state-dir", str(state.root)], catch_exceptions=False, env={"COLUMNS": "400"}
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_an_ocsf_export_is_api_activity_and_verifies(state: StateDir, tmp_path: Path) -> None:
    anyio.run(record, state)
    out = tmp_path / "audit.ocsf.jsonl"
    assert cli(state, "audit", "export", "--format", "ocsf", "-o", str(out)).exit_code == 0
    events = lines(out)
    header, *middle, head = events
    assert (header["class_uid"], header["metadata"]["event_code"]) == (0, "audit.export")
    assert (head["class_uid"], head["metadata"]["event_code"]) == (0, "audit.checkpoint")
    for e in events:  # what OCSF 1.3 requires of every event
        assert {"activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid"} <= set(e)
        assert e["type_uid"] == e["class_uid"] * 100 + e["activity_id"] and e["metadata"]["version"] == "1.3.0"
    calls = [e for e in middle if e["class_uid"] == 6003 and e.get("api", {}).get("request")]
    assert {"actor", "api", "src_endpoint"} <= set(calls[0])  # API Activity's required attributes
    decided = next(e for e in calls if e["api"]["operation"] == "call.decided")
    assert decided["actor"]["user"]["name"] == "local-user" and decided["api"]["service"]["name"] == "echo"
    assert decided["resources"] == [{"name": "echo__echo", "type": "mcp.tool"}] and decided["status"] == "Success"
    invalid = next(e for e in calls if e["api"]["operation"] == "call.invalid")
    assert (invalid["status"], invalid["status_code"]) == ("Failure", "unknown_tool")
    assert decided["metadata"]["sequence"] == decided["unmapped"]["guard_mcp"]["seq"]

    verified = cli(state, "audit", "verify", "--export", str(out))
    assert verified.exit_code == 0, verified.output
    native = tmp_path / "audit.jsonl"
    cli(state, "audit", "export", "-o", str(native))
    assert [e["unmapped"]["guard_mcp"] for e in events][1:] == lines(native)[1:]  # the same records, exported_at aside


def test_an_edited_ocsf_export_does_not_verify(state: StateDir, tmp_path: Path) -> None:
    anyio.run(record, state)
    out = tmp_path / "audit.ocsf.jsonl"
    cli(state, "audit", "export", "--format", "ocsf", "-o", str(out))
    events = lines(out)
    i = next(n for n, e in enumerate(events) if e.get("api", {}).get("operation") == "call.decided")

    shown = [dict(e) for e in events]  # what a SIEM shows, edited: another principal
    shown[i] = {**events[i], "actor": {"user": {"name": "someone-else"}}}
    write(tmp_path / "shown.jsonl", shown)
    result = cli(state, "audit", "verify", "--export", str(tmp_path / "shown.jsonl"))
    assert result.exit_code == 1 and "(hash_mismatch)" in result.output
    assert f"line {i + 1} of the export (seq {events[i]['metadata']['sequence']}) shows OCSF fields" in result.output

    carried = json.loads(json.dumps(events))  # the chained record edited, with its OCSF fields to match
    carried[i]["unmapped"]["guard_mcp"]["data"]["effect"] = "deny"
    write(tmp_path / "carried.jsonl", carried)
    result = cli(state, "audit", "verify", "--export", str(tmp_path / "carried.jsonl"))
    assert result.exit_code == 1 and "hash" in result.output

    write(tmp_path / "cut.jsonl", events[:i] + events[i + 1 :])
    assert cli(state, "audit", "verify", "--export", str(tmp_path / "cut.jsonl")).exit_code == 1


def test_a_damaged_ocsf_export_is_one_line_and_exit_1(state: StateDir, tmp_path: Path) -> None:
    anyio.run(record, state)
    out = tmp_path / "audit.ocsf.jsonl"
    cli(state, "audit", "export", "--format", "ocsf", "-o", str(out))
    first, *rest = out.read_bytes().splitlines(keepends=True)
    damaged = {
        b"{not json\n": "line 2 of the export is not JSON",
        b"[1, 2]\n": "line 2 of the export carries no guard-mcp record",
        b'{"class_uid": 6003, "unmapped": 7}\n': "line 2 of the export carries no guard-mcp record",
        b'{"class_uid": 6003, "unmapped": {"guard_mcp": "x"}}\n': "line 2 of the export carries no guard-mcp record",
        b'{"class_uid": 6003, "message": "\xff"}\n': "cannot read the export",
    }
    for line, message in damaged.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(first + line + b"".join(rest))
        result = cli(state, "audit", "verify", "--export", str(bad))
        assert result.exit_code == 1, (line, result.output)
        assert message in result.output and f"`{bad}`" in result.output, (line, result.output)
        assert len(result.output.strip().splitlines()) == 1, (line, result.output)
