"""The writer's own head: a log cut or rewritten under a running guard is refused, never signed over."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from _audit_helpers import COLUMNS, call_story, db, filled_log, head_file, key_store, open_log, rechain
from click.testing import CliRunner, Result
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, reason_of, running_guard, text_of
from mcp import Client
from pydantic import ValidationError

from guard_mcp._audit import EventIn, load_audit_key
from guard_mcp._audit import _writer as writer_module
from guard_mcp._audit._chain import canonical_event, chain_hash, event_mac
from guard_mcp._clock import FakeClock
from guard_mcp._config import AuditConfig
from guard_mcp._errors import AuditError, AuditIntegrityError
from guard_mcp._state import StateDir
from guard_mcp.cli import main

pytestmark = pytest.mark.anyio
MODES = ["legacy", "auto"]


def audit_cli(state: StateDir, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        main, ["audit", *args, "--state-dir", str(state.root)], catch_exceptions=False
    )
    return result.exit_code, result.output


def verify_json(state: StateDir) -> tuple[int, dict[str, object]]:
    code, out = audit_cli(state, "verify", "--json")
    return code, json.loads(out)


def rows(state: StateDir, sql: str) -> list[tuple[object, ...]]:
    with db(state) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("mode", MODES)
async def test_attack_the_newest_events_deleted_while_the_guard_runs_stop_it_and_verify_names_the_cut(
    state: StateDir, clock: FakeClock, mode: str
) -> None:
    up = RecordingUpstream()
    async with running_guard(
        config_from(ECHO_CONFIG, state), state, clock=clock, inprocess={"echo": up.server}
    ) as guard:
        async with Client(guard.server, mode=mode) as client:
            for text in ("one", "two", "three"):
                assert not (await client.call_tool("echo__echo", {"text": text})).is_error
            # A database writer removes the newest calls: none of them is under a signed checkpoint yet.
            [(first_cut,)] = rows(
                state,
                "SELECT min(seq) FROM audit_events WHERE request_id IN "
                "(SELECT request_id FROM audit_events WHERE type = 'call.received' "
                "ORDER BY seq DESC LIMIT 2)",
            )
            with db(state) as conn:
                conn.execute("DELETE FROM audit_events WHERE seq >= ?", (first_cut,))
            assert rows(state, "SELECT count(*) FROM audit_checkpoints") == [(0,)]
            refused = [await client.call_tool("echo__echo", {"text": t}) for t in ("refund", "again")]
    for result in refused:
        assert result.is_error and reason_of(result) == "audit_unavailable", text_of(result)
        assert "audit" in text_of(result)
    assert [args["text"] for _, args, _ in up.calls] == ["one", "two", "three"]  # nothing ran after the cut

    # The guard wrote down what it found, chained to the head it knows and signed: the cut shows.
    [(data,)] = rows(state, "SELECT data FROM audit_events WHERE type = 'audit.broken'")
    broken = json.loads(str(data))
    assert broken["problem"] == "head_mismatch" and broken["bad_seq"] == first_cut
    code, report = verify_json(state)
    assert code == 1 and report["bad_seq"] == first_cut, report
    assert report["problem"] == "missing_event", report
    code, out = audit_cli(state, "verify")
    assert code == 1 and f"event {first_cut} is missing" in out


async def test_attack_the_cut_tail_and_the_guards_note_about_it_deleted_too_is_caught_by_the_signed_head(
    state: StateDir, clock: FakeClock
) -> None:
    up = RecordingUpstream()
    async with running_guard(
        config_from(ECHO_CONFIG, state), state, clock=clock, inprocess={"echo": up.server}
    ) as guard:
        async with Client(guard.server) as client:
            for text in ("one", "two"):
                await client.call_tool("echo__echo", {"text": text})
            [(head,)] = rows(state, "SELECT max(seq) FROM audit_events")
            with db(state) as conn:
                conn.execute("DELETE FROM audit_events WHERE seq > ?", (int(str(head)) - 3,))
            assert reason_of(await client.call_tool("echo__echo", {"text": "x"})) == "audit_unavailable"
    with db(state) as conn:  # the attacker comes back for the evidence: the event and its checkpoint row
        conn.execute("DELETE FROM audit_events WHERE type = 'audit.broken'")
        conn.execute("DELETE FROM audit_checkpoints")
    code, report = verify_json(state)  # audit.head.json, outside the database, still says where the log was
    assert code == 1 and report["problem"] == "truncated", report


# ------------------------------------------------------------------------------ other writers


def operator(tmp_path: Path, state: StateDir, *args: str) -> Result:
    """An operator command that records what it did (`approvers add` appends `operator.approver_added`)."""
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams: {}\n")
    return CliRunner().invoke(
        main,
        [*args, "--config", str(config), "--state-dir", str(state.root), "--json"],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )


async def in_thread(state: StateDir, tmp_path: Path, *args: str) -> Result:
    """Run an operator command beside the running log, as another terminal would."""
    return await anyio.to_thread.run_sync(lambda: operator(tmp_path, state, *args))


async def test_attack_a_command_opening_the_log_never_signs_the_unsigned_events_of_a_running_guard(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    keys = key_store(state, clock)
    guard = await open_log(state, clock, keys)  # a running guard, its newest events not yet signed
    await guard.append_many(call_story("r1"))
    for args in (
        ("audit", "tail"),
        ("audit", "verify"),
        ("audit", "export", "-o", str(tmp_path / "x.jsonl")),
        ("approvers", "add", "bob", "--group", "ops"),
    ):
        result = await in_thread(state, tmp_path, *args)
        assert result.exit_code == 0, result.output
    # Had one of them signed the head it found, a cut of the guard's tail made just before would be vouched for.
    assert rows(state, "SELECT count(*) FROM audit_checkpoints") == [(0,)]
    assert not head_file(state).exists()
    # The guard goes on after the operator's event, checked, and signs the whole chain itself.
    await guard.append_many(call_story("r2"))
    await guard.close()
    assert [t for (t,) in rows(state, "SELECT type FROM audit_events WHERE seq = 4")] == ["operator.approver_added"]
    code, report = verify_json(state)
    assert code == 0 and report["last_seq"] == 7 and report["unsealed"] == 0, report


def test_a_command_signs_its_own_events_when_nothing_else_waits_unsigned(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    anyio.run(lambda: filled_log(state, clock, calls=2))  # a guard that stopped cleanly: all signed
    assert operator(tmp_path, state, "approvers", "add", "bob", "--group", "ops").exit_code == 0
    code, report = verify_json(state)
    assert code == 0 and report["last_seq"] == 9 and report["unsealed"] == 0, report


async def test_attack_a_cut_tail_that_an_operator_command_wrote_on_is_still_refused_by_the_guard(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    guard = await open_log(state, clock, key_store(state, clock))
    await guard.append_many(call_story("r1"))
    await guard.append_many(call_story("r2"))
    with db(state) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > 3")
    # The command appends at seq 4, right where the guard's deleted events were, on a chain that verifies.
    assert (await in_thread(state, tmp_path, "approvers", "add", "bob", "--group", "ops")).exit_code == 0
    with pytest.raises(AuditError, match="deleted"):
        await guard.append_many(call_story("r3"))
    await guard.close()
    code, report = verify_json(state)
    assert code == 1 and (report["problem"], report["bad_seq"]) == ("missing_event", 5), report


async def test_attack_a_forged_event_after_the_guards_head_is_not_chained_onto(
    state: StateDir, clock: FakeClock
) -> None:
    guard = await open_log(state, clock, key_store(state, clock))
    await guard.append_many(call_story("r1"))
    with db(state) as conn:  # a database writer without the deployment key appends an approval of its own
        _, prev = conn.execute("SELECT seq, hash FROM audit_events WHERE seq = 3").fetchone()
        data = json.dumps({"state": "approved", "approver": "mallory"})
        digest = chain_hash(
            bytes.fromhex(prev), canonical_event(4, 1, "approval.decided", "r9", None, None, None, data)
        )
        conn.execute(
            f"INSERT INTO audit_events ({COLUMNS}) VALUES (4, 1, 'approval.decided', 'r9', NULL, NULL, "
            "NULL, ?, ?, ?, ?)",
            (data, prev, digest.hex(), "00" * 32),
        )
    with pytest.raises(AuditError, match="forged"):
        await guard.append(EventIn("call.received", "r2"))
    await guard.close()
    # Seq 4 is taken, so no `audit.broken` fits after the guard's head: the head it knows is signed instead.
    assert rows(state, "SELECT seq, hash FROM audit_checkpoints") == [(3, prev)]
    code, report = verify_json(state)
    assert code == 1 and (report["problem"], report["bad_seq"]) == ("mac_mismatch", 4), report


def _rewrite_the_head(conn: sqlite3.Connection, key: bytes) -> None:
    conn.execute('UPDATE audit_events SET data = \'{"effect":"deny"}\' WHERE seq = 3')
    rechain(conn, 3, key)  # with the deployment key, even: the head's hash is not the one the guard wrote


def _rewrite_under_another_writers_event(conn: sqlite3.Connection, key: bytes) -> None:
    _append_valid(conn, key)
    _rewrite_the_head(conn, key)
    rechain(conn, 4, key)


def _delete_the_guards_head_under_another_writers_event(conn: sqlite3.Connection, key: bytes) -> None:
    _append_valid(conn, key)
    conn.execute("DELETE FROM audit_events WHERE seq = 3")


def _append_valid(conn: sqlite3.Connection, key: bytes) -> None:
    """What an operator command appends: a genuine event after the guard's head."""
    (prev,) = conn.execute("SELECT hash FROM audit_events WHERE seq = 3").fetchone()
    digest = chain_hash(bytes.fromhex(prev), canonical_event(4, 1, "operator.revoked", None, None, None, None, "{}"))
    conn.execute(
        f"INSERT INTO audit_events ({COLUMNS}) VALUES (4, 1, 'operator.revoked', NULL, NULL, NULL, NULL, '{{}}', ?, ?, ?)",
        (prev, digest.hex(), event_mac(key, digest).hex()),
    )


@pytest.mark.parametrize(
    ("attack", "said"),
    [
        (_rewrite_the_head, "rewritten"),
        (_rewrite_under_another_writers_event, "rewritten"),
        (_delete_the_guards_head_under_another_writers_event, "was deleted"),
    ],
)
async def test_attack_the_guards_own_head_rewritten_or_removed_is_refused(
    state: StateDir, clock: FakeClock, attack: Callable[[sqlite3.Connection, bytes], None], said: str
) -> None:
    guard = await open_log(state, clock, key_store(state, clock))
    await guard.append_many(call_story("r1"))
    key = load_audit_key(state)
    assert key is not None
    with db(state) as conn:
        attack(conn, key)
    with pytest.raises(AuditError, match=said):
        await guard.append(EventIn("call.received", "r2"))
    with pytest.raises(AuditError, match=said):  # and every append after it, without looking again
        await guard.append(EventIn("call.received", "r3"))
    await guard.close()
    assert verify_json(state)[0] == 1


async def test_a_head_that_moved_is_raised_as_an_integrity_error_naming_the_problem_and_the_seq(
    state: StateDir, clock: FakeClock
) -> None:
    guard = await open_log(state, clock, key_store(state, clock))
    await guard.append_many(call_story("r1"))
    with db(state) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 3")
    for request_id in ("r2", "r3"):  # the append that finds it, and every one after it
        with pytest.raises(AuditIntegrityError) as raised:
            await guard.append(EventIn("call.received", request_id))
        assert (raised.value.problem, raised.value.seq) == ("head_mismatch", 3)
    await guard.close()


async def test_a_valid_event_another_writer_appended_is_followed(state: StateDir, clock: FakeClock) -> None:
    guard = await open_log(state, clock, key_store(state, clock))
    await guard.append_many(call_story("r1"))
    key = load_audit_key(state)
    assert key is not None
    with db(state) as conn:
        _append_valid(conn, key)
    assert await guard.append(EventIn("call.received", "r2")) == 5
    await guard.close()
    code, report = verify_json(state)
    assert code == 0 and report["last_seq"] == 5 and report["unsealed"] == 0, report


async def test_two_guards_on_one_state_directory_follow_each_other(state: StateDir, clock: FakeClock) -> None:
    keys = key_store(state, clock)
    first = await open_log(state, clock, keys, checkpoint_every=5)
    second = await open_log(state, clock, keys, checkpoint_every=5)
    for i in range(6):
        await (first if i % 2 else second).append_many(call_story(f"r{i}"))
    await first.close()
    await second.close()
    code, report = verify_json(state)
    assert code == 0 and report["last_seq"] == 18 and report["unsealed"] == 0, report


# ------------------------------------------------------------------------------ signed by time


async def test_a_checkpoint_is_signed_once_an_unsigned_event_is_checkpoint_interval_old(
    state: StateDir, clock: FakeClock
) -> None:
    log = await open_log(state, clock, checkpoint_every=1000, checkpoint_interval="10s")
    try:
        await log.append_many(call_story("r1"))
        clock.advance(6)
        await log.append_many(call_story("r2"))
        assert rows(state, "SELECT seq FROM audit_checkpoints") == []
        clock.advance(4)  # r1 has waited 10 s: this commit signs everything up to itself
        await log.append_many(call_story("r3"))
        assert rows(state, "SELECT seq FROM audit_checkpoints") == [(9,)]
        clock.advance(9.5)
        await log.append(EventIn("call.received", "r4"))
        assert rows(state, "SELECT seq FROM audit_checkpoints") == [(9,)]  # counted from r4, not from the seal
    finally:
        await log.close()


async def test_an_idle_guard_signs_its_unsigned_tail_when_the_interval_is_up(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_INLINE_GAP", 0.0)  # an idle writer: the seal commits on the loop's thread
    log = await open_log(state, clock, checkpoint_every=1000, checkpoint_interval="10s")
    try:
        await log.append_many(call_story("r1"))
        timer = log._seal_timer  # armed by the append: no further traffic is needed for the seal
        assert timer is not None and 0 < timer.when() - asyncio.get_running_loop().time() <= 10
        log.seal_if_due()  # what the timer runs; early (by the guard's clock): nothing to sign yet
        assert rows(state, "SELECT seq FROM audit_checkpoints") == []
        clock.advance(10)
        log.seal_if_due()
        assert rows(state, "SELECT seq FROM audit_checkpoints") == [(3,)]
        assert json.loads(head_file(state).read_text())["seq"] == 3
    finally:
        await log.close()


@pytest.mark.parametrize(("given", "seconds"), [("10s", 10.0), ("250ms", 0.25), (2, 2.0)])
def test_checkpoint_interval_is_a_duration(given: object, seconds: float) -> None:
    assert AuditConfig.model_validate({"checkpoint_interval": given}).checkpoint_interval == seconds
    assert AuditConfig().checkpoint_interval == 10.0


@pytest.mark.parametrize("given", [0, "0s", -1, "soon"])
def test_checkpoint_interval_refuses_what_would_never_sign(given: object) -> None:
    with pytest.raises(ValidationError, match="checkpoint_interval"):
        AuditConfig.model_validate({"checkpoint_interval": given})
