"""Anchors: a signed head of the log kept where whoever writes the state directory cannot reach it.

Everything else that protects the log (checkpoints, `audit.head.json`, the keys) lives in the state
directory, so someone who can write it can delete the newest events together with their
checkpoints, or put back an older copy of the whole directory, and the log still verifies. An
anchor is the newest signed checkpoint as a small document to keep elsewhere:

    {"format": "guard-mcp.audit-anchor.v1", "seq", "hash", "ts", "kid", "jws", "jwk"}

`audit verify --anchor` then needs the event at `seq` to exist with exactly `hash`. Trust comes
from the verifier's keys (the key store, the signers the log recorded, `--jwks`), never from the
`jwk` the anchor carries: that copy is for a reader who has nothing but the anchor.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._audit._checkpoint import Checkpoint, public_jwk, verify_checkpoint_signature
from guard_mcp._errors import AuditError, ConfigError

__all__ = [
    "ANCHOR_FORGED",
    "ANCHOR_FORMAT",
    "ANCHOR_MISMATCH",
    "ANCHOR_MISSING",
    "ANCHOR_UNKNOWN_KEY",
    "Anchor",
    "anchor_document",
    "anchor_for",
    "check_anchor",
    "read_anchor",
]

ANCHOR_FORMAT = "guard-mcp.audit-anchor.v1"

# Problem codes (VerifyReport.problem), stable like the others in _verify.py.
ANCHOR_MISSING = "anchor_missing"  # the log ends before the anchored seq: cut off or rolled back
ANCHOR_MISMATCH = "anchor_mismatch"  # another event at the anchored seq: the chain was rewritten
ANCHOR_FORGED = "anchor_forged"  # the anchor's signature does not hold: the file was edited
ANCHOR_UNKNOWN_KEY = "anchor_unknown_key"  # signed by a key the verifier does not trust


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    ts: int
    kid: str
    jws: str
    source: str  # where it was read from, for messages

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.seq, self.hash, self.ts, self.kid, self.jws, "")


def anchor_document(cp: Checkpoint, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    return {
        "format": ANCHOR_FORMAT,
        "seq": cp.seq,
        "hash": cp.hash,
        "ts": cp.ts,
        "kid": cp.kid,
        "jws": cp.jws,
        "jwk": public_jwk(cp.kid, key),
    }


def anchor_for(
    conn: sqlite3.Connection,
    seq: int,
    hash_hex: str,
    keys: Mapping[str, ec.EllipticCurvePublicKey],
    outside: Checkpoint | None,
) -> dict[str, Any]:
    """The anchor for the checkpoint at `seq` that a verification just accepted with head `hash_hex`
    (from the database, else `outside`: the copy in `audit.head.json`). Checked again on the way out."""
    row = conn.execute("SELECT seq, hash, ts, kid, jws, mac FROM audit_checkpoints WHERE seq = ?", (seq,)).fetchone()
    cp = Checkpoint(*row) if row is not None else outside if outside is not None and outside.seq == seq else None
    key = keys.get(cp.kid) if cp is not None else None
    if cp is None or key is None or cp.hash != hash_hex or verify_checkpoint_signature(cp, key) is not None:
        raise AuditError(
            f"the checkpoint at seq {seq} changed while it was being anchored; run `guard-mcp audit "
            "verify`, then `guard-mcp audit anchor` again"
        )
    return anchor_document(cp, key)


def read_anchor(path: Path) -> Anchor:
    """The anchor in `path`; ConfigError (one line) when it is not a file `audit anchor` wrote."""
    hint = "pass a file `guard-mcp audit anchor` wrote"
    try:
        raw = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the anchor `{path}`: {exc.strerror}; {hint}") from None
    except (ValueError, RecursionError):
        raise ConfigError(f"the anchor `{path}` is not JSON; {hint}") from None
    if not isinstance(raw, dict) or raw.get("format") != ANCHOR_FORMAT:
        raise ConfigError(f"`{path}` is not an audit anchor (no `format: {ANCHOR_FORMAT}`); {hint}")
    fields = {"seq": int, "hash": str, "ts": int, "kid": str, "jws": str}
    for name, kind in fields.items():
        value = raw.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"the anchor `{path}` has no valid `{name}`; {hint}")
    return Anchor(raw["seq"], raw["hash"], raw["ts"], raw["kid"], raw["jws"], str(path))


def _when(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"ts {ms}"


def check_anchor(
    conn: sqlite3.Connection,
    anchor: Anchor,
    keys: Mapping[str, ec.EllipticCurvePublicKey],
    start: int,
    last_seq: int | None,
) -> tuple[int, str, str] | None:
    """None when `anchor` is genuine and the log (verified from `start` to `last_seq`) still holds its
    head; otherwise (seq, problem, message). Runs inside the verifier's snapshot."""
    where = f"the anchor `{anchor.source}`"
    key = keys.get(anchor.kid)
    if key is None:
        return (
            anchor.seq,
            ANCHOR_UNKNOWN_KEY,
            f"{where} is signed by key `{anchor.kid}`, which this deployment does not know: it comes from "
            "another deployment or was forged; pass the keys to trust with `--jwks`",
        )
    wrong = verify_checkpoint_signature(anchor.checkpoint(), key)
    if wrong is not None:
        return (anchor.seq, ANCHOR_FORGED, f"{where} does not hold up ({wrong}): it was edited or forged")
    said = f"{where} says the log had reached seq {anchor.seq} at {_when(anchor.ts)}"
    if anchor.seq < start:
        return (
            anchor.seq,
            ANCHOR_MISSING,
            f"{said} but the events examined start at seq {start}; export from seq {anchor.seq} or earlier",
        )
    row = (
        conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (anchor.seq,)).fetchone()
        if last_seq is not None and anchor.seq <= last_seq
        else None
    )
    if row is None:
        ends = "the log is empty" if last_seq is None else f"the log ends at seq {last_seq}"
        return (
            anchor.seq,
            ANCHOR_MISSING,
            f"{said} but {ends}: the newest events were deleted or the state directory was rolled back "
            "to an older copy",
        )
    if row[0] != anchor.hash:
        return (
            anchor.seq,
            ANCHOR_MISMATCH,
            f"{said} with another event there: the chain was rewritten since, or rolled back and written on again",
        )
    return None
