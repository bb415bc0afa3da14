"""`guard-mcp audit …` against a state directory, and the queries behind it."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import pytest
from _audit_helpers import call_story, connect, db, key_store, open_log
from click.testing import CliRunner

from guard_mcp._audit import AuditEvent, EventIn
from guard_mcp._audit._query import follow
from guard_mcp._audit._store import connect_reader
from guard_mcp._clock import FakeClock
from guard_mcp._errors import ConfigError
from guard_mcp._state import StateDir
from guard_mcp.cli import main
from guard_mcp.cli._audit import parse_when

APPROVAL_WAIT_S = 30


def _story(request_id: str, kind: str) -> list[EventIn]:
    event = partial(EventIn, request_id=request_id, actor="alice", upstream="shop", tool="shop__refund")
    received = event("call.received", data={"arguments": {"amount": 9000}})
    if kind == "invalid":
        return [received, event("call.invalid", data={"reason": "schema_violation"})]
    decided = event(
        "call.decided",
        data={
            "effect": {"denied": "deny", "auto": "allow"}.get(kind, "approve"),
            "reason": {"denied": "amount_exceeds_policy_limit", "auto": "within_limit"}.get(kind, "needs_approval"),
        },
    )
    return [received, decided]


async def _build(state: StateDir, clock: FakeClock) -> None:
    """Five calls: auto-allowed (bob, `lookup`), denied, invalid, approved after 30 s, expired."""
    keys = key_store(state, clock)
    log = await open_log(state, clock, keys)
    await log.append_many(call_story("auto-1", tool="shop__lookup", actor="bob"))
    await log.append(EventIn("call.result", "auto-1", "bob", "shop", "shop__lookup", {"is_error": False}))
    clock.advance(60)
    await log.append_many(_story("denied-1", "denied"))
    await log.append_many(_story("invalid-1", "invalid"))
    for rid, end in (("approved-1", "approved"), ("expired-1", "expired")):
        event = partial(EventIn, request_id=rid, actor="alice", upstream="shop", tool="shop__refund")
        await log.append_many([*_story(rid, "approve"), event("approval.requested", data={"group": "ops"})])
        clock.advance(APPROVAL_WAIT_S)
        if end == "approved":
            await log.append_many(
                [
                    event("approval.decided", data={"state": "approved", "approver": "carol", "reason": "ok"}),
                    event("permit.issued", data={"jti": "j1", "exp": 1}),
                ]
            )
            await log.append(event("call.result", data={"is_error": False}))
        else:
            await log.append(event("approval.expired", data={"approval_id": "a2"}))
    await log.close()


@pytest.fixture
def built(state: StateDir, clock: FakeClock) -> StateDir:
    anyio.run(_build, state, clock)
    return state


def run(state: StateDir, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        main, ["audit", *args, "--state-dir", str(state.root)], catch_exceptions=False
    )
    return result.exit_code, result.output


def run_json(state: StateDir, *args: str) -> object:
    code, out = run(state, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def _iso(ms_epoch_s: float) -> str:
    return datetime.fromtimestamp(ms_epoch_s, UTC).isoformat()


def test_tail_shows_the_newest_events_in_order(built: StateDir) -> None:
    events = run_json(built, "tail", "-n", "3")
    assert isinstance(events, list)
    assert [e["type"] for e in events] == ["call.decided", "approval.requested", "approval.expired"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    code, out = run(built, "tail")
    assert code == 0 and "approval.expired" in out and "shop__lookup" in out


def test_show_tells_the_story_of_one_call(built: StateDir) -> None:
    story = run_json(built, "show", "approved-1")
    assert isinstance(story, dict)
    assert [e["type"] for e in story["events"]] == [
        "call.received",
        "call.decided",
        "approval.requested",
        "approval.decided",
        "permit.issued",
        "call.result",
    ]
    assert all(e["intact"] for e in story["events"])
    assert story["call"]["effect"] == "approve" and story["call"]["decision"] == "allow"
    assert story["call"]["approval_latency_ms"] == APPROVAL_WAIT_S * 1000
    code, out = run(built, "show", "approved-1")
    assert code == 0 and "approval.decided" in out and "carol" in out


def test_show_marks_an_edited_event(built: StateDir) -> None:
    with db(built) as conn:
        conn.execute(
            'UPDATE audit_events SET data = \'{"state":"approved","approver":"mallory"}\' '
            "WHERE type = 'approval.decided'"
        )
    story = run_json(built, "show", "approved-1")
    assert isinstance(story, dict)
    assert [e["type"] for e in story["events"] if not e["intact"]] == ["approval.decided"]


def test_show_an_unknown_request(built: StateDir) -> None:
    code, out = run(built, "show", "nope")
    assert code == 2 and "`nope`" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--decision", "deny"), {"denied-1", "invalid-1", "expired-1"}),
        (("--decision", "approve"), {"approved-1", "expired-1"}),
        (("--decision", "allow"), {"auto-1", "approved-1"}),
        (("--tool", "lookup"), {"auto-1"}),
        (("--tool", "shop__refund", "--decision", "allow"), {"approved-1"}),
        (("--actor", "bob"), {"auto-1"}),
    ],
)
def test_search_filters(built: StateDir, args: tuple[str, ...], expected: set[str]) -> None:
    found = run_json(built, "search", *args)
    assert isinstance(found, list)
    assert {c["request_id"] for c in found} == expected


def test_search_by_time(built: StateDir, clock: FakeClock) -> None:
    # `clock` is where _build left it; the first call was 60 + 2 * 30 s earlier. A call matches when
    # any of its events falls in [since, until).
    start = clock.now() - 60 - 2 * APPROVAL_WAIT_S
    found = run_json(built, "search", "--since", _iso(start + 1), "--until", _iso(start + 61))
    assert isinstance(found, list)
    assert {c["request_id"] for c in found} == {"denied-1", "invalid-1", "approved-1"}
    found = run_json(built, "search", "--since", _iso(start + 61 + APPROVAL_WAIT_S))
    assert isinstance(found, list)
    assert [(c["request_id"], c["effect"]) for c in found] == [("expired-1", "approve")]  # its whole story


def test_parse_when_reads_ages_and_dates() -> None:
    assert parse_when("2h", now=10_000.0, option="--since") == (10_000 - 7200) * 1000
    assert parse_when("2027-01-15T08:00:00Z", now=0, option="--since") == 1_800_000_000_000
    assert parse_when(None, now=0, option="--since") is None
    with pytest.raises(ConfigError, match="`--since` value `yesterday`"):
        parse_when("yesterday", now=0, option="--since")


@pytest.mark.parametrize(
    "args",
    [
        ["tail", "-n", "9" * 20],
        ["search", "--since", "9" * 20 + "d"],
        ["stats", "--until", "9" * 20 + "d"],
        ["export", "--from-seq", "9" * 23],
    ],
    ids=["tail", "since", "until", "from-seq"],
)
def test_numbers_past_what_sqlite_holds_are_an_answer_not_a_traceback(built: StateDir, args: list[str]) -> None:
    code, out = run(built, *args)
    assert code in (0, 2) and "Traceback" not in out


def test_stats_counts_decisions_tools_reasons_and_approval_latency(built: StateDir) -> None:
    s = run_json(built, "stats")
    assert isinstance(s, dict)
    assert s["calls"] == 5
    assert s["by_decision"] == {"deny": 3, "allow": 2}
    assert s["by_effect"]["approve"] == 2
    assert s["by_tool"] == {"shop__refund": 4, "shop__lookup": 1}
    assert s["by_reason"]["schema_violation"] == 1 and s["by_reason"]["approval_expired"] == 1
    assert s["approval_latency"]["count"] == 1  # the expired one was never decided
    assert s["approval_latency"]["median_s"] == APPROVAL_WAIT_S
    terminal = CliRunner(env={"COLUMNS": "250", "FORCE_COLOR": "1"}).invoke(
        main, ["audit", "stats", "--state-dir", str(built.root)], catch_exceptions=False
    )
    assert terminal.exit_code == 0 and "approval latency" in terminal.output
    code, out = run(built, "stats")  # piped: one tab-separated table
    assert code == 0 and "approval_latency\tcount\t1" in out and "decision\tdeny\t3" in out


def test_verify_exit_status(built: StateDir) -> None:
    code, out = run(built, "verify")
    assert code == 0 and "intact" in out
    with db(built) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 4")
    code, out = run(built, "verify")
    assert code == 1 and "seq 4" in out and "missing" in out
    report = run(built, "verify", "--json")
    assert report[0] == 1 and json.loads(report[1])["problem"] == "missing_event"


def test_export_verifies_without_the_database_or_the_key(built: StateDir, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    code, text = run(built, "export", "--format", "jsonl", "-o", str(out))
    assert code == 0, text
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    header = lines[0]
    events = [x for x in lines if x["kind"] == "event"]
    checkpoints = [x for x in lines if x["kind"] == "checkpoint"]
    assert lines == [header, *events, *checkpoints]
    assert header["kind"] == "header" and header["jwks"]["keys"] and "deployment key" in header["verify"]["mac"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert checkpoints[-1]["seq"] == events[-1]["seq"]  # the last line is the signed head
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(header["jwks"]))
    code, text = run(built, "verify", "--export", str(out), "--jwks", str(jwks))
    assert code == 0, text
    code, text = run(built, "verify", "--export", str(out), "--mac-key", str(built.keys / "audit.key"))
    assert code == 0 and "MACs not checked" not in text

    # Cut the newest event out of the file: the signed head gives it away.
    out.write_text("\n".join(json.dumps(x) for x in [header, *events[:-1], *checkpoints]) + "\n")
    code, text = run(built, "verify", "--export", str(out), "--jwks", str(jwks))
    assert code == 1 and "truncated" in text


def test_export_with_its_tail_cut_off_signed_head_and_all_fails(built: StateDir, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    assert run(built, "export", "-o", str(out))[0] == 0
    lines = out.read_text().splitlines()
    header = json.loads(lines[0])
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(header["jwks"]))
    # The last lines are the newest events and the signed head after them: cut all of them.
    out.write_text("\n".join(lines[:-4]) + "\n")
    code, report = run(built, "verify", "--export", str(out), "--jwks", str(jwks), "--json")
    assert code == 1 and json.loads(report)["problem"] == "unsealed"


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe not utf-8\n",
        b'{"kind": "header", "format": "guard-mcp.audit.v1", "jwks": [1, 2]}\n',
        b'{"kind": "header", "format": "guard-mcp.audit.v1", "jwks": {"keys": {"a": 1}}}\n',
        b'{"kind": "event", "seq": 1180591620717411303424, "ts": 1, "type": "x", "data": {}}\n',
        b'{"kind": "event", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    ],
    ids=["not-utf8", "jwks-not-an-object", "keys-not-a-list", "huge-seq", "deep-nesting"],
)
def test_a_malformed_export_file_is_one_line_and_exit_1(built: StateDir, tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "audit.jsonl"
    out.write_bytes(content)
    code, report = run(built, "verify", "--export", str(out), "--json")
    assert code == 1 and json.loads(report)["problem"] == "unreadable"


def test_export_edited_in_transit_fails(built: StateDir, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    assert run(built, "export", "-o", str(out))[0] == 0
    text = out.read_text().replace('"approver":"carol"', '"approver":"mallory"')
    out.write_text(text)
    code, report = run(built, "verify", "--export", str(out), "--json")
    assert code == 1 and json.loads(report)["problem"] == "hash_mismatch"


def test_follow_yields_events_as_they_are_written(state: StateDir, clock: FakeClock) -> None:
    anyio.run(_build, state, clock)
    conn = connect_reader(state.database)
    last = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0]
    polls: list[int] = []

    def write_more() -> None:
        async def go() -> None:
            log = await open_log(state, clock)
            await log.append(EventIn("guard.stop"))
            await log.close()

        polls.append(1)
        anyio.run(go)

    seen: list[AuditEvent] = []
    try:
        for event in follow(conn, last, sleep=write_more, keep_going=lambda: len(seen) < 1):
            seen.append(event)
    finally:
        conn.close()
    assert [e.type for e in seen] == ["guard.stop"] and seen[0].seq > last
    assert polls == [1]


def test_commands_read_a_database_other_connections_are_writing(built: StateDir) -> None:
    writer = connect(built)
    writer.execute("BEGIN IMMEDIATE")  # e.g. the approvals module mid-transaction
    try:
        code, _ = run(built, "verify")
    finally:
        writer.rollback()
        writer.close()
    assert code == 0


def test_export_to_a_path_that_cannot_be_written_is_one_line(built: StateDir, tmp_path: Path) -> None:
    code, out = run(built, "export", "-o", str(tmp_path / "no" / "such" / "dir" / "audit.jsonl"))
    assert code == 2 and "cannot write" in out and "Traceback" not in out


def test_tail_on_a_narrow_terminal_prints_one_line_an_event(built: StateDir) -> None:
    result = CliRunner(env={"COLUMNS": "80", "FORCE_COLOR": "1"}).invoke(
        main, ["audit", "tail", "-n", "3", "--state-dir", str(built.root)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    seqs = [line.split()[0] for line in result.output.splitlines() if line[:7].strip().isdigit()]
    assert len(seqs) == 3 and seqs == sorted(seqs, key=int)
    assert "│" not in result.output  # not the table, whose cells wrap at this width


@pytest.mark.parametrize("command", [("tail",), ("show", "hostile-1"), ("search",), ("stats",)])
def test_attack_what_an_agent_chose_is_printed_as_text_not_read_as_markup_or_escapes(
    state: StateDir, clock: FakeClock, command: tuple[str, ...]
) -> None:
    # An unknown tool name and an argument are the agent's: `[/x]` crashed every reader with a
    # MarkupError, and an ESC sequence could forge or hide audit lines on the operator's terminal.
    hostile = "[/x][conceal]\x1b[2K\rforged line"

    async def build() -> None:
        log = await open_log(state, clock, key_store(state, clock))
        event = partial(EventIn, request_id="hostile-1", actor="alice", upstream="shop", tool=hostile)
        await log.append_many(
            [
                event("call.received", data={"arguments": {"order_id": "[/y]"}}),
                event("call.invalid", data={"reason": "unknown_tool", "message": "[/z]"}),
            ]
        )
        await log.close()

    anyio.run(build)
    code, out = run(state, *command)
    assert code == 0, out
    assert "\x1b" not in out and "\r" not in out
    if command[0] != "stats":
        assert "[/x][conceal]" in out or "[/x]" in out  # shown as typed, escapes and all
        assert "\\u001b" in out


def test_attack_an_id_with_markup_is_echoed_as_typed_in_the_error(built: StateDir) -> None:
    code, out = run(built, "show", "[bold]req_x[/bold][/x]")
    assert code == 2 and "[bold]req_x[/bold][/x]" in out and "Traceback" not in out


def test_a_mac_key_without_an_export_or_too_short_is_refused_not_taken_for_a_forgery(
    built: StateDir, tmp_path: Path
) -> None:
    out = tmp_path / "audit.jsonl"
    assert run(built, "export", "--format", "jsonl", "-o", str(out))[0] == 0
    short = tmp_path / "short.key"
    short.write_bytes(b"8 bytes!")
    code, text = run(built, "verify", "--mac-key", str(short))
    assert code == 2 and "pass `--export FILE`" in text  # it was ignored, and the log reported intact
    code, text = run(built, "verify", "--export", str(out), "--mac-key", str(short))
    assert code == 2 and "is 8 bytes" in text and "BROKEN" not in text


@pytest.mark.parametrize("args", [("tail", "-f", "--interval", "inf"), ("tail", "-f", "--interval", "nan")])
def test_unbounded_numbers_are_refused_by_the_option_not_a_traceback(built: StateDir, args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, ["audit", *args, "--state-dir", str(built.root)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)


def test_an_event_whose_data_is_not_json_is_exported_whole_and_named_by_verify(built: StateDir, tmp_path: Path) -> None:
    with sqlite3.connect(built.database) as conn:
        conn.execute("UPDATE audit_events SET data = 'not json' WHERE seq = 3")
    out = tmp_path / "audit.jsonl"
    code, text = run(built, "export", "--format", "jsonl", "-o", str(out))
    assert code == 0, text
    assert len(out.read_text().splitlines()) > 5  # every event, not a file cut off at seq 3
    code, text = run(built, "verify", "--export", str(out))
    assert code == 1 and "seq 3" in text


def test_a_log_in_a_read_only_directory_verifies_instead_of_reading_as_broken(
    built: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the directory is read-only SQLite cannot make the WAL's shared-memory file, and an intact
    # log was reported BROKEN (unreadable). Simulated: the sandbox's root ignores file modes.
    from guard_mcp._audit import _store

    real = _store._open_reader
    tried: list[str] = []

    def read_only_dir(path: Path, how: str) -> sqlite3.Connection:
        tried.append(how)
        if how == "mode=ro":
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(path, how)

    monkeypatch.setattr(_store, "_open_reader", read_only_dir)
    code, text = run(built, "verify")
    assert code == 0 and "intact" in text, text
    assert tried[:2] == ["mode=ro", "immutable=1"]
