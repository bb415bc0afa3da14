"""Anchors: the signed head kept off the machine catches what the state directory alone cannot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anyio
import pytest
from _audit_helpers import call_story, db, filled_log, head_file, key_store, open_log
from click.testing import CliRunner

from guard_mcp._audit import EventIn
from guard_mcp._clock import FakeClock
from guard_mcp._keys import KeyStore
from guard_mcp._state import StateDir
from guard_mcp.cli import main


def run(state: StateDir, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        main, ["audit", *args, "--state-dir", str(state.root)], catch_exceptions=False
    )
    return result.exit_code, result.output


def verify_json(state: StateDir, *args: str) -> tuple[int, dict[str, object]]:
    code, out = run(state, "verify", *args, "--json")
    return code, json.loads(out)


def take_anchor(state: StateDir, path: Path) -> dict[str, object]:
    code, out = run(state, "anchor", "-o", str(path))
    assert code == 0, out
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def fill(state: StateDir, clock: FakeClock, calls: int = 10, **config: object) -> KeyStore:
    return anyio.run(lambda: filled_log(state, clock, calls, **config))


def more_calls(state: StateDir, clock: FakeClock, keys: KeyStore, prefix: str, calls: int = 3) -> None:
    async def go() -> None:
        log = await open_log(state, clock, keys)
        for i in range(calls):
            await log.append_many(call_story(f"{prefix}{i}"))
        await log.close()

    anyio.run(go)


def test_anchor_is_the_newest_signed_head_and_a_growing_log_still_holds_it(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    keys = fill(state, clock)
    doc = take_anchor(state, tmp_path / "a1.json")
    assert doc["format"] == "guard-mcp.audit-anchor.v1" and doc["seq"] == 40
    assert {"hash", "ts", "kid", "jws", "jwk"} <= doc.keys()
    assert doc["kid"] == keys.current().kid == doc["jwk"]["kid"]  # type: ignore[index]
    with db(state) as conn:
        assert conn.execute("SELECT hash FROM audit_events WHERE seq = 40").fetchone()[0] == doc["hash"]
    code, out = run(state, "anchor")  # stdout: the same document
    assert code == 0 and json.loads(out) == doc

    more_calls(state, clock, keys, "late")
    code, report = verify_json(state, "--anchor", str(tmp_path / "a1.json"))
    assert code == 0, report
    assert report["anchors"] == 1 and report["last_seq"] == 49
    code, out = run(state, "verify", "--anchor", str(tmp_path / "a1.json"))
    assert code == 0 and "anchor" in out


def test_an_anchor_from_before_a_key_rotation_still_verifies(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    keys = fill(state, clock)
    old = take_anchor(state, tmp_path / "old.json")
    keys.rotate(300)
    clock.advance(3600)  # the old key is long out of the published set
    more_calls(state, clock, keys, "after")
    new = take_anchor(state, tmp_path / "new.json")
    assert old["kid"] != new["kid"] == keys.current().kid
    code, report = verify_json(state, "--anchor", str(tmp_path / "old.json"), "--anchor", str(tmp_path / "new.json"))
    assert code == 0 and report["anchors"] == 2, report
    code, report = verify_json(state, "--no-mac", "--anchor", str(tmp_path / "old.json"))
    assert code == 0, report


def test_anchor_signs_the_head_first_while_a_guard_keeps_writing(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    async def go() -> None:
        keys = key_store(state, clock)
        log = await open_log(state, clock, keys, checkpoint_every=1000)
        try:
            for i in range(3):
                await log.append_many(call_story(f"r{i}"))
            doc = take_anchor(state, tmp_path / "a.json")  # the guard is still running
            assert doc["seq"] == 9
            await log.append(EventIn("call.result", "r2", "alice", "shop", "refund", {"ok": True}))
            await log.append_many(call_story("r3"))
        finally:
            await log.close()

    anyio.run(go)
    with db(state) as conn:
        seqs = [s for (s,) in conn.execute("SELECT seq FROM audit_checkpoints ORDER BY seq")]
    assert seqs == [9, 13]  # the anchor's seal, then the guard's own at stop, on one chain
    code, report = verify_json(state, "--anchor", str(tmp_path / "a.json"))
    assert code == 0 and report["last_seq"] == 13 and report["unsealed"] == 0, report


def test_anchor_of_a_sealed_head_appends_nothing(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    fill(state, clock)
    with db(state) as conn:
        before = conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0]
    take_anchor(state, tmp_path / "a.json")
    take_anchor(state, tmp_path / "b.json")
    with db(state) as conn:
        assert conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0] == before
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


# ----------------------------------------------------------------------------------------- attacks


def test_newest_events_deleted_with_their_checkpoints_and_head_file(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    keys = fill(state, clock, checkpoint_every=8)
    more_calls(state, clock, keys, "late")
    take_anchor(state, tmp_path / "a.json")  # seq 49
    more_calls(state, clock, keys, "later")
    with db(state) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > 40")
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > 40")
    head_file(state).unlink()
    # The gap: everything kept in the state directory agrees with the shortened log.
    code, report = verify_json(state)
    assert code == 0 and report["last_seq"] == 40, report
    code, report = verify_json(state, "--anchor", str(tmp_path / "a.json"))
    assert (code, report["problem"], report["bad_seq"]) == (1, "anchor_missing", 49)
    assert "ends at seq 40" in str(report["message"])
    code, out = run(state, "verify", "--anchor", str(tmp_path / "a.json"))
    assert code == 1 and "seq 49" in out and "anchor_missing" in out


def test_an_older_copy_of_the_state_directory_put_back(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    keys = fill(state, clock)
    backup = tmp_path / "backup"
    shutil.copytree(state.root, backup)
    more_calls(state, clock, keys, "late")
    take_anchor(state, tmp_path / "a.json")  # seq 49
    shutil.rmtree(state.root)
    shutil.copytree(backup, state.root)
    assert verify_json(state)[0] == 0
    code, report = verify_json(state, "--anchor", str(tmp_path / "a.json"))
    assert (code, report["problem"], report["bad_seq"]) == (1, "anchor_missing", 49)

    # Written on past the anchored seq after the roll-back: the seq is there, the event is not.
    more_calls(state, clock, keys, "other", calls=5)
    assert verify_json(state)[0] == 0
    code, report = verify_json(state, "--anchor", str(tmp_path / "a.json"))
    assert (code, report["problem"], report["bad_seq"]) == (1, "anchor_mismatch", 49)


def test_a_log_emptied_fails_its_anchor(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    fill(state, clock)
    take_anchor(state, tmp_path / "a.json")
    with db(state) as conn:
        for table in ("audit_events", "audit_checkpoints", "audit_signers", "audit_verified"):
            conn.execute(f"DELETE FROM {table}")
    head_file(state).unlink()
    assert verify_json(state)[0] == 0  # an empty log is intact
    code, report = verify_json(state, "--anchor", str(tmp_path / "a.json"))
    assert (code, report["problem"], report["bad_seq"]) == (1, "anchor_missing", 40)


@pytest.mark.parametrize(("field", "value"), [("seq", 20), ("hash", "0" * 64), ("ts", 1)])
def test_an_edited_anchor_is_forged(
    state: StateDir, clock: FakeClock, tmp_path: Path, field: str, value: object
) -> None:
    fill(state, clock)
    doc = take_anchor(state, tmp_path / "a.json")
    (tmp_path / "a.json").write_text(json.dumps({**doc, field: value}))
    code, report = verify_json(state, "--anchor", str(tmp_path / "a.json"))
    assert (code, report["problem"]) == (1, "anchor_forged"), report


def test_an_anchor_signed_by_a_foreign_key_is_refused_unless_trusted(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    fill(state, clock)
    other = StateDir(tmp_path / "other").ensure()
    fill(other, clock, calls=12)
    foreign = take_anchor(other, tmp_path / "foreign.json")
    code, report = verify_json(state, "--anchor", str(tmp_path / "foreign.json"))
    assert (code, report["problem"], report["bad_seq"]) == (1, "anchor_unknown_key", 48)
    code, out = run(state, "verify", "--anchor", str(tmp_path / "foreign.json"))
    assert code == 1 and "--jwks" in out and "Traceback" not in out
    # Trusted by name, its signature holds; it is still not this log's head.
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [foreign["jwk"]]}))
    code, report = verify_json(state, "--jwks", str(tmp_path / "jwks.json"), "--anchor", str(tmp_path / "foreign.json"))
    assert (code, report["problem"]) == (1, "anchor_missing"), report


def test_anchoring_a_broken_log_is_refused(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    fill(state, clock)
    with db(state) as conn:
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5")
    before = head_file(state).read_text()
    code, out = run(state, "anchor", "-o", str(tmp_path / "a.json"))
    assert code == 1 and not (tmp_path / "a.json").exists()
    assert "seq 5" in out and "refusing to anchor" in out and "Traceback" not in out
    code, out = run(state, "anchor", "--json")
    assert code == 1 and json.loads(out)["problem"] == "hash_mismatch"
    assert head_file(state).read_text() == before  # nothing was signed


def test_anchoring_an_unsealed_log_with_a_broken_chain_signs_nothing(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    fill(state, clock)
    with db(state) as conn:  # the newest events lost their checkpoint, and one was edited
        conn.execute("DELETE FROM audit_checkpoints WHERE seq = 40")
        conn.execute("UPDATE audit_events SET tool = 'delete_account' WHERE seq = 39")
    head_file(state).unlink()
    code, _ = run(state, "anchor")
    assert code == 1
    with db(state) as conn:
        assert conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0] == 0
    assert not head_file(state).exists()


def test_anchor_file_that_is_not_an_anchor_is_one_line(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    fill(state, clock)
    bad = tmp_path / "bad.json"
    for content in ("not json", '{"seq": 1}', '{"format": "guard-mcp.audit-anchor.v1", "seq": "40"}'):
        bad.write_text(content)
        code, out = run(state, "verify", "--anchor", str(bad))
        assert code == 2 and len(out.strip().splitlines()) == 1 and "audit anchor" in out, out


def test_anchor_of_an_empty_log(state: StateDir, clock: FakeClock) -> None:
    async def go() -> None:
        await (await open_log(state, clock)).close()

    anyio.run(go)
    code, out = run(state, "anchor")
    assert code == 1 and "nothing to anchor" in out


def test_an_export_checked_against_an_anchor(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    keys = fill(state, clock)
    take_anchor(state, tmp_path / "early.json")  # seq 40
    early = tmp_path / "early.jsonl"
    assert run(state, "export", "-o", str(early))[0] == 0
    more_calls(state, clock, keys, "late")
    take_anchor(state, tmp_path / "a.json")  # seq 49
    full = tmp_path / "full.jsonl"
    assert run(state, "export", "-o", str(full))[0] == 0
    header = json.loads(full.read_text().splitlines()[0])
    (tmp_path / "jwks.json").write_text(json.dumps(header["jwks"]))
    code, report = verify_json(
        state,
        "--export",
        str(full),
        "--jwks",
        str(tmp_path / "jwks.json"),
        "--anchor",
        str(tmp_path / "early.json"),
        "--anchor",
        str(tmp_path / "a.json"),
    )
    assert code == 0 and report["anchors"] == 2, report
    # An export made before the anchored head (or cut back to it, signed head and all) falls short.
    code, report = verify_json(state, "--export", str(early), "--anchor", str(tmp_path / "a.json"))
    assert (code, report["problem"], report["bad_seq"]) == (1, "anchor_missing", 49)
    # Exported from a later seq, the anchored event is not in the file to check: not a pass.
    tail = tmp_path / "tail.jsonl"
    assert run(state, "export", "--from-seq", "45", "-o", str(tail))[0] == 0
    assert verify_json(state, "--export", str(tail), "--anchor", str(tmp_path / "a.json"))[0] == 0
    code, report = verify_json(state, "--export", str(tail), "--anchor", str(tmp_path / "early.json"))
    assert (code, report["problem"], report["bad_seq"]) == (1, "anchor_missing", 40)
    assert "export from seq 40" in str(report["message"])
