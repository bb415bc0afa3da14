"""Attacks on the audit log, one per test; each must be named by `verify_log` with the first bad seq."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest
from _audit_helpers import COLUMNS, db, filled_log, head_file, key_store, open_log, rechain

from guard_mcp._audit import EventIn, VerifyReport, load_audit_key, verify_log
from guard_mcp._audit._chain import canonical_event, chain_hash, event_mac
from guard_mcp._clock import FakeClock
from guard_mcp._keys import KeyStore
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio


def verify(state: StateDir, keys: KeyStore, *, with_key: bool = True) -> VerifyReport:
    return verify_log(
        state.database,
        hmac_key=load_audit_key(state) if with_key else None,
        public_keys=keys.public_keys(),
        head_file=head_file(state),
    )


async def test_untouched_log_verifies(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock, checkpoint_every=7)
    report = verify(state, keys)
    assert report.ok, report.message
    assert (report.first_seq, report.last_seq, report.events) == (1, 40, 40)
    assert report.head_checkpoint == 40 and report.unsealed == 0
    assert report.checkpoints >= 40 // 7


async def test_edited_field_in_old_event(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock)
    with db(state) as conn:
        conn.execute("UPDATE audit_events SET data = replace(data, '\"allow\"', '\"deny\"') WHERE seq = 2")
    report = verify(state, keys)
    assert not report.ok
    assert (report.bad_seq, report.problem) == (2, "hash_mismatch")
    assert "event 2" in report.message


async def test_edited_column_outside_data(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock)
    with db(state) as conn:
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5")
    report = verify(state, keys, with_key=False)
    assert (report.ok, report.bad_seq, report.problem) == (False, 5, "hash_mismatch")


async def test_deleted_middle_event(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock)
    with db(state) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 17")
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 17, "missing_event")


async def test_deleted_newest_event_is_caught_by_the_checkpoint(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock, checkpoint_every=1000)
    with db(state) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)")
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 40, "truncated")


async def test_deleted_newest_events_and_their_checkpoint_are_caught_by_the_head_file(
    state: StateDir, clock: FakeClock
) -> None:
    keys = await filled_log(state, clock, checkpoint_every=8)
    with db(state) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > 36")
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > 36")
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 37, "truncated")


async def test_two_events_swapped(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock)
    cols = COLUMNS.removeprefix("seq, ")
    with db(state) as conn:
        a = conn.execute(f"SELECT {cols} FROM audit_events WHERE seq = 9").fetchone()
        b = conn.execute(f"SELECT {cols} FROM audit_events WHERE seq = 10").fetchone()
        sets = ", ".join(f"{c} = ?" for c in cols.split(", "))
        conn.execute(f"UPDATE audit_events SET {sets} WHERE seq = 9", b)
        conn.execute(f"UPDATE audit_events SET {sets} WHERE seq = 10", a)
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 9, "prev_hash_mismatch")


async def test_inserted_forged_event_with_recomputed_hash_is_caught_by_the_mac(
    state: StateDir, clock: FakeClock
) -> None:
    keys = await filled_log(state, clock)
    with db(state) as conn:
        # Make room after event 12, forge an approval there, and rebuild the chain so every hash checks out.
        conn.execute("UPDATE audit_events SET seq = -seq WHERE seq > 12")
        conn.execute("UPDATE audit_events SET seq = 1 - seq WHERE seq < 0")
        conn.execute(
            f"INSERT INTO audit_events ({COLUMNS}) VALUES (13, 0, 'approval.decided', 'r3', 'alice', 'shop', "
            "'refund', '{\"approved\":true,\"approver\":\"bob\"}', '', '', '')"
        )
        rechain(conn, 13, mac_key=secrets.token_bytes(32))
    assert verify(state, keys, with_key=False).problem != "hash_mismatch"  # the hashes alone look fine
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 13, "mac_mismatch")


async def test_recomputed_mac_without_the_key(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock)
    with db(state) as conn:
        conn.execute('UPDATE audit_events SET data = \'{"effect":"allow"}\' WHERE seq = 30')
        rechain(conn, 30, mac_key=b"guessed-deployment-key-000000000")
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 30, "mac_mismatch")


async def test_rewritten_chain_is_caught_by_the_signed_checkpoint_without_the_key(
    state: StateDir, clock: FakeClock
) -> None:
    # A third party has the export's public keys but not the deployment key: the signed head
    # still exposes a chain recomputed after an edit.
    keys = await filled_log(state, clock, checkpoint_every=1000)
    with db(state) as conn:
        conn.execute("UPDATE audit_events SET tool = 'delete_account' WHERE seq = 3")
        rechain(conn, 3, mac_key=secrets.token_bytes(32))
    report = verify(state, keys, with_key=False)
    assert (report.ok, report.bad_seq, report.problem) == (False, 40, "checkpoint_mismatch")
    assert not report.macs_checked


async def test_truncated_database_file(state: StateDir, clock: FakeClock) -> None:
    keys = key_store(state, clock)
    log = await open_log(state, clock, keys)
    for i in range(50):
        await log.append_many([EventIn("call.received", f"r{i}", data={"note": "x" * 400, "i": i})] * 4)
    await log.close()
    cut_in_half(state)
    report = verify(state, keys)
    assert not report.ok
    # Depending on where the cut falls, SQLite refuses the file or the walk runs out of events.
    assert report.problem in {"unreadable", "truncated", "missing_event"}
    assert report.bad_seq is None or report.bad_seq <= 200
    assert "truncated" in report.message or "missing" in report.message


def cut_in_half(state: StateDir) -> None:
    wal = state.root / "guard.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # everything is in the main file
    with open(state.database, "r+b") as f:
        f.truncate(os.path.getsize(state.database) // 2)


async def test_checkpoint_from_another_deployment_signed_by_an_unknown_key(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    keys = await filled_log(state, clock, checkpoint_every=1000)
    other = StateDir(tmp_path / "other").ensure()
    await filled_log(other, clock, calls=12, checkpoint_every=1000)
    with db(other) as src:
        foreign = src.execute("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        signer = src.execute("SELECT * FROM audit_signers").fetchone()
    with db(state) as conn:
        conn.execute("INSERT INTO audit_checkpoints VALUES (?,?,?,?,?,?)", foreign)
        conn.execute("INSERT INTO audit_signers VALUES (?,?,?)", signer)  # its MAC is from the other key
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 48, "checkpoint_unknown_key")


async def test_checkpoint_from_another_deployment_sharing_the_signing_key(
    state: StateDir, clock: FakeClock, tmp_path: Path
) -> None:
    # Two deployments restored from one key backup: the signature checks out, the MAC does not.
    keys = key_store(state, clock)
    other = StateDir(tmp_path / "other").ensure()
    shutil.copytree(state.keys, other.keys, dirs_exist_ok=True)
    (other.keys / "audit.key").unlink(missing_ok=True)
    await filled_log(other, clock, calls=3)
    log = await open_log(state, clock, keys)
    for i in range(3):
        await log.append_many(call_events := [EventIn("call.received", f"x{i}")] * 4)
    assert len(call_events) == 4
    await log.close()
    with db(other) as src:
        foreign = src.execute("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
    with db(state) as conn:
        conn.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?,?,?,?,?,?)", foreign)
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 12, "checkpoint_mac_mismatch")


async def test_database_from_another_deployment(state: StateDir, clock: FakeClock, tmp_path: Path) -> None:
    keys = await filled_log(state, clock)
    other = StateDir(tmp_path / "other").ensure()
    shutil.copytree(state.keys, other.keys, dirs_exist_ok=True)
    (other.keys / "audit.key").unlink()
    await filled_log(other, clock)
    shutil.copyfile(other.database, state.database)
    report = verify(state, keys)
    assert (report.ok, report.bad_seq, report.problem) == (False, 1, "mac_mismatch")


async def test_startup_verification_reports_a_broken_chain(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock)
    with db(state) as conn:
        conn.execute("UPDATE audit_events SET ts = ts + 1 WHERE seq = 21")
    log = await open_log(state, clock, keys)
    try:
        report = log.startup_verification
        assert (report.ok, report.bad_seq, report.problem) == (False, 21, "hash_mismatch")
        # The guard records that it found the log broken; the write itself still works.
        seq = await log.append(EventIn("audit.broken", data={"seq": report.bad_seq, "problem": report.problem}))
        assert seq == 41
    finally:
        await log.close()


async def test_startup_verification_is_incremental_from_the_last_verified_checkpoint(
    state: StateDir, clock: FakeClock
) -> None:
    keys = await filled_log(state, clock)
    log = await open_log(state, clock, keys)
    assert log.startup_verification.ok and log.startup_verification.first_seq == 1
    await log.append_many([EventIn("call.received", "late")] * 3)
    await log.close()
    log = await open_log(state, clock, keys)
    report = log.startup_verification
    await log.close()
    assert report.ok and report.first_seq == 40 and report.last_seq == 43


async def test_forged_verified_marker_does_not_skip_a_tampered_range(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock)
    (await open_log(state, clock, keys)).startup_verification  # noqa: B018
    with db(state) as conn:
        conn.execute("UPDATE audit_events SET type = 'call.forwarded' WHERE seq = 2")
    log = await open_log(state, clock, keys)
    report = log.startup_verification
    await log.close()
    assert report.ok  # bounded: the edit is before the last verified checkpoint
    with db(state) as conn:
        # Moving the marker back to reach the edit needs the key; without it the marker is ignored.
        conn.execute("UPDATE audit_verified SET seq = 1")
    log = await open_log(state, clock, keys)
    report = log.startup_verification
    await log.close()
    assert (report.ok, report.bad_seq, report.problem) == (False, 2, "hash_mismatch")
    assert (verify(state, keys).bad_seq, verify(state, keys).problem) == (2, "hash_mismatch")


def test_forged_event_helper_matches_the_writer() -> None:
    # The attacker's toolkit above must hash exactly as the writer does, or the MAC tests prove nothing.
    digest = chain_hash(bytes(32), canonical_event(1, 5, "t", None, None, None, None, "{}"))
    assert event_mac(b"k" * 32, digest) != event_mac(b"j" * 32, digest)
