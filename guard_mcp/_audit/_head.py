"""The head a writer knows, and what it does when the database's head is somewhere else.

A writer remembers the last event it committed or verified, as (seq, hash). Every commit already
reads the database's head inside its transaction to chain onto it, so the check costs a tuple
comparison, not a query. Most of the time the two heads are the same. The head may also have moved
on legitimately: another guard serving from the same state directory, or an operator command
recording what it did. Then each event after the known head must follow it (prev_hash, hash, MAC
with the deployment key), and the writer goes on from the new head.

Anything else is a divergence, and the writer stops appending for good: the head went back (the
newest events were deleted), the event at the known seq is a different one (rewritten), or what
follows does not chain or has a MAC this deployment did not write. Re-reading the head and carrying
on would reuse the deleted seqs, and the next checkpoint would sign the rewritten chain.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from guard_mcp._audit._chain import EventEncoder, EventMac, chain_hash

__all__ = ["HEAD_MISMATCH", "Divergence", "Head", "follow"]

Head = tuple[int, str]  # (seq, hex hash) of the newest event; (0, GENESIS) for an empty log

HEAD_MISMATCH = "head_mismatch"  # the `problem` of the audit.broken event a writer records

_AFTER = (
    "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
    "WHERE seq >= ? ORDER BY seq"
)


@dataclass(frozen=True)
class Divergence:
    """The database's head is not the writer's head, nor a valid continuation of it."""

    bad_seq: int  # the first seq where the database differs from what this writer knows
    message: str
    known: Head
    found: Head

    def data(self) -> dict[str, Any]:
        """The `audit.broken` event's data."""
        return {
            "problem": HEAD_MISMATCH,
            "bad_seq": self.bad_seq,
            "message": self.message,
            "expected_seq": self.known[0],
            "expected_hash": self.known[1],
            "found_seq": self.found[0],
            "found_hash": self.found[1],
        }


def follow(
    conn: sqlite3.Connection, known: Head, found: Head, enc: EventEncoder, mac_of: EventMac, where: str
) -> Head | Divergence:
    """Where to go on from, when the database's head `found` differs from the `known` one: the new
    head if every event after `known` follows it, else the divergence. Runs inside the writer's
    transaction (nothing can move while it looks)."""
    seq0, hash0 = known
    log = f"the audit log `{where}`"
    if found[0] < seq0:
        return Divergence(
            found[0] + 1,
            f"{log} ends at seq {found[0]} but this process wrote it up to seq {seq0}: the newest events were deleted",
            known,
            found,
        )
    if found[0] == seq0:
        return Divergence(
            seq0, f"event {seq0} of {log} is not the one this process wrote: it was rewritten", known, found
        )
    expected, prev_hex = seq0 + 1, hash0
    seen_known = seq0 == 0
    try:
        prev = bytes.fromhex(hash0)
        for seq, ts, type_, request_id, actor, upstream, tool, data, prev_hash, hash_hex, mac in conn.execute(
            _AFTER, (seq0,)
        ):
            if seq == seq0:
                if hash_hex != hash0:
                    return Divergence(
                        seq0, f"event {seq0} of {log} is not the one this process wrote: it was rewritten", known, found
                    )
                seen_known = True
                continue
            if not seen_known:
                return Divergence(
                    seq0, f"event {seq0} of {log}, the last this process wrote, was deleted", known, found
                )
            if seq != expected or prev_hash != prev_hex:
                return Divergence(
                    expected,
                    f"event {expected} of {log}, written by another process, does not "
                    f"follow event {expected - 1}: events were removed or inserted",
                    known,
                    found,
                )
            digest = chain_hash(prev, enc.event(seq, ts, type_, request_id, actor, upstream, tool, data))
            if digest.hex() != hash_hex or mac_of(digest).hex() != mac:
                return Divergence(
                    seq,
                    f"event {seq} of {log}, written by another process, has a hash or MAC "
                    "this deployment did not write: it was forged",
                    known,
                    found,
                )
            prev, prev_hex, expected = digest, hash_hex, expected + 1
    except (TypeError, ValueError, AttributeError):  # a NULL, a number or a non-hex hash where text belongs
        return Divergence(
            expected, f"event {expected} of {log} has a field of the wrong type: it was edited", known, found
        )
    if not seen_known:
        return Divergence(seq0, f"event {seq0} of {log}, the last this process wrote, was deleted", known, found)
    return (expected - 1, prev_hex)
