"""Walking the log: chain, MACs and checkpoints. Names the first bad seq and what is wrong.

The walk is one pass over the rows in seq order with hashlib/hmac in a tight loop; nothing is
parsed or re-canonicalised (see _chain.py), so a million events verify in seconds.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._audit._anchor import Anchor, check_anchor
from guard_mcp._audit._chain import GENESIS, EventEncoder, EventMac, chain_hash
from guard_mcp._audit._checkpoint import (
    Checkpoint,
    checkpoint_mac,
    public_key_from_jwk,
    signer_mac,
    verify_checkpoint_signature,
)
from guard_mcp._audit._store import connect_reader
from guard_mcp._errors import AuditError

__all__ = ["HEAD_FILE", "VerifyReport", "read_head_file", "trusted_keys", "verify_connection", "verify_log"]

# The newest checkpoint, also kept outside the database (in the state directory): deleting the newest
# events and their checkpoints from the database shows against it.
HEAD_FILE = "audit.head.json"

# Problem codes (VerifyReport.problem). Stable: scripts match on them.
MISSING_EVENT = "missing_event"
OUT_OF_ORDER = "prev_hash_mismatch"
ALTERED = "hash_mismatch"
BAD_MAC = "mac_mismatch"
BAD_CHECKPOINT = "checkpoint_invalid"
UNKNOWN_SIGNER = "checkpoint_unknown_key"
FOREIGN_CHECKPOINT = "checkpoint_mac_mismatch"
CHECKPOINT_MISMATCH = "checkpoint_mismatch"
TRUNCATED = "truncated"
UNSEALED = "unsealed"  # an export whose newest events no signed head covers
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    message: str
    problem: str | None = None
    bad_seq: int | None = None
    first_seq: int | None = None  # first event examined
    last_seq: int | None = None  # last event examined
    events: int = 0
    checkpoints: int = 0
    head_checkpoint: int | None = None  # seq of the newest checkpoint that verified
    head_checkpoint_hash: str | None = None
    unsealed: int = 0  # events after the newest checkpoint
    macs_checked: bool = True
    anchors: int = 0  # anchors kept elsewhere that the log still holds
    last_hash: str | None = None  # hash of the last event examined: where a writer that verified goes on

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Broken(Exception):
    def __init__(self, seq: int | None, problem: str, message: str) -> None:
        self.seq, self.problem, self.message = seq, problem, message


def read_head_file(path: Path) -> Checkpoint | None:
    """The newest checkpoint as also written outside the database (None when there is none)."""
    try:
        raw = json.loads(path.read_text())
        return Checkpoint(
            int(raw["seq"]), str(raw["hash"]), int(raw["ts"]), str(raw["kid"]), str(raw["jws"]), str(raw["mac"])
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Checkpoint(-1, "", 0, "", "", "")  # present but unreadable: fails verification below


def trusted_keys(
    conn: sqlite3.Connection, hmac_key: bytes | None, public_keys: Mapping[str, ec.EllipticCurvePublicKey]
) -> dict[str, ec.EllipticCurvePublicKey]:
    keys = dict(public_keys)
    if hmac_key is None:
        return keys  # recorded signers are only trusted when their MAC can be checked
    for kid, jwk_json, mac in conn.execute("SELECT kid, jwk, mac FROM audit_signers"):
        if kid in keys or signer_mac(hmac_key, kid, jwk_json) != mac:
            continue
        try:
            key = public_key_from_jwk(json.loads(jwk_json))
        except ValueError:
            key = None
        if key is not None:
            keys[kid] = key
    return keys


def _check_checkpoint(
    cp: Checkpoint, keys: Mapping[str, ec.EllipticCurvePublicKey], hmac_key: bytes | None, where: str
) -> None:
    key = keys.get(cp.kid)
    if key is None:
        raise _Broken(
            cp.seq,
            UNKNOWN_SIGNER,
            f"{where} at seq {cp.seq} is signed by key `{cp.kid}`, which this deployment does not know: "
            "it comes from another deployment or was forged",
        )
    wrong = verify_checkpoint_signature(cp, key)
    if wrong is not None:
        raise _Broken(cp.seq, BAD_CHECKPOINT, f"{where} at seq {cp.seq}: {wrong}")
    if hmac_key is not None and checkpoint_mac(hmac_key, cp.payload()) != cp.mac:
        raise _Broken(
            cp.seq,
            FOREIGN_CHECKPOINT,
            f"{where} at seq {cp.seq} carries a MAC from another deployment key: it was not written here",
        )


def verify_log(
    path: Path,
    *,
    hmac_key: bytes | None,
    public_keys: Mapping[str, ec.EllipticCurvePublicKey],
    from_seq: int | None = None,
    from_hash: str | None = None,
    head_file: Path | None = None,
    anchors: Sequence[Anchor] = (),
) -> VerifyReport:
    """Verify the audit log in the database at `path`.

    `hmac_key` None skips the MACs (a third party without the deployment key): the chain and the
    signed checkpoints still verify. `from_seq` starts at a checkpoint that verified before
    (incremental verification at start) whose hash was `from_hash`; events before it are not
    examined. `head_file` is the newest checkpoint as also written outside the database. Each of
    `anchors` (heads kept elsewhere, see _anchor.py) must be signed by a trusted key and still be in the log.
    """
    # Read before the database snapshot starts: the file is replaced only after its checkpoint
    # committed, so the snapshot is never older than the file.
    outside = read_head_file(head_file) if head_file is not None else None
    try:
        conn = connect_reader(path)
    except AuditError as exc:
        return VerifyReport(False, str(exc), UNREADABLE, macs_checked=hmac_key is not None)
    try:
        return verify_connection(
            conn,
            hmac_key=hmac_key,
            public_keys=public_keys,
            from_seq=from_seq,
            from_hash=from_hash,
            outside=outside,
            anchors=anchors,
        )
    finally:
        conn.close()


def verify_connection(
    conn: sqlite3.Connection,
    *,
    hmac_key: bytes | None,
    public_keys: Mapping[str, ec.EllipticCurvePublicKey],
    from_seq: int | None = None,
    from_hash: str | None = None,
    outside: Checkpoint | None = None,
    anchors: Sequence[Anchor] = (),
) -> VerifyReport:
    """`verify_log` on an open connection (an export loads into an in-memory database)."""
    start = from_seq if from_seq is not None and from_seq > 1 else 1
    counts = {"events": 0, "checkpoints": 0}
    last_seq: int | None = None
    last_hash: str | None = None
    head_cp: Checkpoint | None = None
    checkpoint_problem: _Broken | None = None
    try:
        conn.execute("BEGIN")  # one consistent snapshot while a guard keeps appending
        keys = trusted_keys(conn, hmac_key, public_keys)
        cps: dict[int, Checkpoint] = {}
        for row in conn.execute(
            "SELECT seq, hash, ts, kid, jws, mac FROM audit_checkpoints WHERE seq >= ? ORDER BY seq", (start,)
        ):
            cp = Checkpoint(*row)
            try:
                _check_checkpoint(cp, keys, hmac_key, "checkpoint")
            except _Broken as broken:
                checkpoint_problem = checkpoint_problem or broken
                continue
            cps[cp.seq] = cp
        counts["checkpoints"] = len(cps)
        if outside is not None and outside.seq not in cps:
            try:
                _check_checkpoint(outside, keys, hmac_key, "the head checkpoint kept outside the database")
            except _Broken as broken:
                if outside.seq >= start or outside.seq < 0:
                    checkpoint_problem = checkpoint_problem or broken
            else:
                if outside.seq >= start:
                    cps[outside.seq] = outside
        try:
            last_seq, last_hash = _walk_events(
                conn,
                start,
                from_seq is not None and start > 1,
                from_hash,
                hmac_key,
                cps,
                counts,
                stop_at=checkpoint_problem.seq if checkpoint_problem else None,
            )
        except _Broken as broken:
            if checkpoint_problem is None or (broken.seq or 0) <= (checkpoint_problem.seq or 0):
                raise
            raise checkpoint_problem from None
        if checkpoint_problem is not None:
            raise checkpoint_problem
        beyond = [s for s in cps if last_seq is None or s > last_seq]
        if beyond:
            end = last_seq if last_seq is not None else start - 1
            raise _Broken(
                end + 1,
                TRUNCATED,
                f"the log ends at seq {end} but a signed checkpoint covers seq {max(beyond)}: "
                "the newest events were deleted",
            )
        if cps:
            head_cp = cps[max(cps)]
        for anchor in anchors:
            wrong = check_anchor(conn, anchor, keys, start, last_seq)
            if wrong is not None:
                raise _Broken(*wrong)
    except _Broken as broken:
        return VerifyReport(
            False,
            broken.message,
            broken.problem,
            broken.seq,
            start,
            last_seq,
            counts["events"],
            counts["checkpoints"],
            macs_checked=hmac_key is not None,
        )
    except sqlite3.DatabaseError as exc:
        seq = (last_seq or start - 1) + 1
        return VerifyReport(
            False,
            f"the database cannot be read past seq {seq - 1}: {exc}; the file was damaged "
            "or truncated; restore it from backup",
            UNREADABLE,
            seq,
            start,
            last_seq,
            counts["events"],
            counts["checkpoints"],
            macs_checked=hmac_key is not None,
        )
    finally:
        conn.rollback()
    if last_seq is None:
        return VerifyReport(True, "the audit log is empty", macs_checked=hmac_key is not None)
    head = head_cp.seq if head_cp is not None else None
    unsealed = last_seq - (head if head is not None else start - 1)
    what = "chain, MACs and checkpoints" if hmac_key is not None else "chain and checkpoints (MACs not checked)"
    msg = f"{what} intact: seq {start}..{last_seq}, {counts['events']} events, {counts['checkpoints']} signed checkpoint(s)"
    if anchors:
        msg += f"; holds the head of {len(anchors)} anchor(s), newest seq {max(a.seq for a in anchors)}"
    if unsealed:
        msg += f"; the newest {unsealed} events are not yet covered by a signed checkpoint"
    return VerifyReport(
        True,
        msg,
        None,
        None,
        start,
        last_seq,
        counts["events"],
        counts["checkpoints"],
        head,
        head_cp.hash if head_cp is not None else None,
        unsealed,
        hmac_key is not None,
        len(anchors),
        last_hash,
    )


def _walk_events(
    conn: sqlite3.Connection,
    start: int,
    resume: bool,
    resume_hash: str | None,
    hmac_key: bytes | None,
    cps: Mapping[int, Checkpoint],
    counts: dict[str, int],
    stop_at: int | None,
) -> tuple[int | None, str | None]:
    enc = EventEncoder()
    mac_of = EventMac(hmac_key) if hmac_key is not None else None
    expected = start
    prev_hex = GENESIS
    prev = bytes.fromhex(GENESIS)
    last: int | None = None
    sql = (
        "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
        "WHERE seq >= ? ORDER BY seq"
    )
    if stop_at is not None:
        sql = sql.replace("ORDER BY", f"AND seq <= {int(stop_at)} ORDER BY")
    n = 0
    try:
        for seq, ts, type_, request_id, actor, upstream, tool, data, prev_hash, hash_hex, mac in conn.execute(
            sql, (start,)
        ):
            if seq != expected:
                if seq < expected:
                    raise _Broken(
                        expected,
                        OUT_OF_ORDER,
                        f"a row with seq {seq} follows event {expected - 1}: rows "
                        "were duplicated or the file is damaged",
                    )
                raise _Broken(
                    expected,
                    MISSING_EVENT,
                    f"event {expected} is missing: the log jumps from seq {expected - 1} to {seq}",
                )
            if resume and seq == start:
                # Resuming at a verified checkpoint: this event's predecessor was verified before.
                prev_hex = prev_hash
                try:
                    prev = bytes.fromhex(prev_hash)
                except ValueError:
                    raise _Broken(seq, OUT_OF_ORDER, f"event {seq} has a malformed prev_hash") from None
            elif prev_hash != prev_hex:
                raise _Broken(
                    seq,
                    OUT_OF_ORDER,
                    f"event {seq} does not follow event {seq - 1} (prev_hash differs): events were "
                    "removed, reordered or inserted",
                )
            digest = chain_hash(prev, enc.event(seq, ts, type_, request_id, actor, upstream, tool, data))
            prev_hex = digest.hex()
            if prev_hex != hash_hex:
                raise _Broken(seq, ALTERED, f"event {seq} was altered after it was written (its hash differs)")
            if mac_of is not None and mac_of(digest).hex() != mac:
                raise _Broken(
                    seq, BAD_MAC, f"event {seq} has a MAC this deployment did not write: it was forged or re-hashed"
                )
            if resume and seq == start and resume_hash is not None and hash_hex != resume_hash:
                raise _Broken(
                    seq,
                    CHECKPOINT_MISMATCH,
                    f"event {seq} differs from the head verified at the last start: the chain was rewritten",
                )
            cp = cps.get(seq)
            if cp is not None and cp.hash != hash_hex:
                raise _Broken(
                    seq,
                    CHECKPOINT_MISMATCH,
                    f"event {seq} differs from the head signed by checkpoint {seq}: the chain was rewritten",
                )
            prev = digest
            last = seq
            expected += 1
            n += 1
    except TypeError:
        # A NULL or a non-text value where the schema stores text: a hand-edited row.
        raise _Broken(expected, ALTERED, f"event {expected} has a field of the wrong type: it was edited") from None
    finally:
        counts["events"] = n
    if resume and last is None:
        raise _Broken(start, MISSING_EVENT, f"event {start}, the last verified checkpoint, is missing")
    return last, prev_hex if last is not None else None
