"""`audit export --format jsonl`: the log in a form a third party can verify without the database.

One JSON object per line, in this order:

    {"kind": "header", "format": "guard-mcp.audit.v1", "jwks": {"keys": [...]}, "verify": {...}, ...}
    {"kind": "event", "seq": 1, "ts": ..., "type": ..., ..., "data": {...}, "prev_hash", "hash", "mac"}
    ...
    {"kind": "checkpoint", "seq": ..., "hash": ..., "ts": ..., "kid": ..., "jws": ..., "mac": ...}

The last checkpoint is the signed head. With the JWKS (pin it against the keys the deployment
publishes, not only the copy in the file) anyone can check the hash chain and that the signed
head is the last exported event, so nothing was edited, removed, reordered or cut off. The MACs
need the deployment key (`<state>/keys/audit.key`), which is shared out of band or not at all;
without it a forger would still have to rewrite the chain *and* forge an ES256 signature.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._audit._anchor import Anchor
from guard_mcp._audit._checkpoint import CHECKPOINT_TYP, public_jwk, public_key_from_jwk
from guard_mcp._audit._store import SCHEMA
from guard_mcp._audit._verify import ALTERED, UNREADABLE, UNSEALED, VerifyReport, trusted_keys, verify_connection
from guard_mcp._canonical import canonical_json
from guard_mcp._errors import AuditError, ConfigError

__all__ = ["FORMAT", "EditedLine", "LineOf", "RecordOf", "export_jsonl", "json_lines", "verify_export"]

FORMAT = "guard-mcp.audit.v1"

HOW_TO_VERIFY = {
    "hash": "hex SHA-256 of (prev_hash as 32 bytes || RFC 8785 JSON of {seq, ts, type, request_id, actor, "
    "upstream, tool, data}); the first event's prev_hash is 64 zeros",
    "mac": "hex HMAC-SHA256 of the hash's 32 bytes with the deployment key (not included: shared out of band "
    "or not at all)",
    "checkpoint": f"compact JWS, ES256, header kid (see jwks), payload RFC 8785 JSON of {{hash, kid, seq, ts, "
    f"typ: {CHECKPOINT_TYP}}}; the last checkpoint is the signed head",
}

_EVENT_FIELDS = ("seq", "ts", "type", "request_id", "actor", "upstream", "tool", "data", "prev_hash", "hash", "mac")

# A format is a pair of mappers over the records above (header, event, checkpoint): the line it
# writes for a record, and the record a line it wrote carries (`n` the line's number, for errors).
LineOf = Callable[[dict[str, Any]], Mapping[str, Any]]
RecordOf = Callable[[int, Any], dict[str, Any]]


class EditedLine(AuditError):
    """A line whose own fields differ from the record it carries; `seq` the record's, when it has one."""

    def __init__(self, message: str, seq: Any) -> None:
        super().__init__(message)
        self.seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _as_is(record: dict[str, Any]) -> dict[str, Any]:
    return record


def _record(n: int, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AuditError(f"line {n} of the export is not a JSON object; pass the file `audit export` wrote")
    return value


def export_jsonl(
    conn: sqlite3.Connection,
    out: TextIO,
    *,
    public_keys: Mapping[str, ec.EllipticCurvePublicKey],
    hmac_key: bytes | None,
    from_seq: int = 1,
    exported_at: int | None = None,
    line_of: LineOf = _as_is,
) -> dict[str, Any]:
    """Write the events from `from_seq` on and every checkpoint over them, each record as `line_of`
    maps it; returns the header."""

    def line(record: dict[str, Any]) -> None:
        out.write(json.dumps(line_of(record), ensure_ascii=False, separators=(",", ":")) + "\n")

    conn.execute("BEGIN")  # one snapshot: the head checkpoint and the events agree
    try:
        keys = trusted_keys(conn, hmac_key, public_keys)
        first, last, count = conn.execute(
            "SELECT min(seq), max(seq), count(*) FROM audit_events WHERE seq >= ?", (from_seq,)
        ).fetchone()
        head = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0]
        header = {
            "kind": "header",
            "format": FORMAT,
            "exported_at": exported_at,
            "first_seq": first,
            "last_seq": last,
            "events": count,
            "head_checkpoint": head,
            "unsealed": (last - head) if last is not None and head is not None and last > head else 0,
            "jwks": {"keys": [public_jwk(kid, key) for kid, key in sorted(keys.items())]},
            "verify": HOW_TO_VERIFY,
        }
        line(header)
        for row in conn.execute(
            "SELECT seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac FROM audit_events "
            "WHERE seq >= ? ORDER BY seq",
            (from_seq,),
        ):
            event = dict(zip(_EVENT_FIELDS, row, strict=True))
            with contextlib.suppress(ValueError):  # a damaged row travels as it is: verifying the export names its seq
                event["data"] = json.loads(event["data"])
            line({"kind": "event", **event})
        for seq, hash_, ts, kid, jws, mac in conn.execute(
            "SELECT seq, hash, ts, kid, jws, mac FROM audit_checkpoints WHERE seq >= ? ORDER BY seq", (from_seq,)
        ):
            line({"kind": "checkpoint", "seq": seq, "hash": hash_, "ts": ts, "kid": kid, "jws": jws, "mac": mac})
    finally:
        conn.rollback()
    return header


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """Each line's number and JSON value, blank lines skipped; a line that is not JSON is an AuditError."""
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise AuditError(f"line {n} of the export is not JSON; pass the file `audit export` wrote") from None
        yield n, value


def verify_export(
    path: Path,
    *,
    public_keys: Mapping[str, ec.EllipticCurvePublicKey] | None = None,
    hmac_key: bytes | None = None,
    anchors: Sequence[Anchor] = (),
    record_of: RecordOf = _record,
) -> VerifyReport:
    """Verify an export without the database, each line's record taken out by `record_of`.
    `public_keys` None trusts the export's own JWKS, for the checkpoints and the `anchors` alike."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.executescript(SCHEMA)
        embedded: dict[str, ec.EllipticCurvePublicKey] = {}
        first: int | None = None
        try:
            with path.open(encoding="utf-8") as f:
                for n, value in json_lines(f):
                    rec = record_of(n, value)
                    kind = rec.get("kind")
                    if kind == "header":
                        if rec.get("format") != FORMAT:
                            raise AuditError(f"export format `{rec.get('format')}` is not `{FORMAT}`")
                        jwks = rec.get("jwks")
                        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
                            raise AuditError("the header's `jwks` is not a key set; pass the file `audit export` wrote")
                        for jwk in jwks["keys"]:
                            key = public_key_from_jwk(jwk) if isinstance(jwk, dict) else None
                            if key is not None and isinstance(jwk.get("kid"), str):
                                embedded[jwk["kid"]] = key
                    elif kind == "event":
                        row = [rec.get(k) for k in _EVENT_FIELDS]
                        row[7] = canonical_json(row[7]).decode()  # the stored text is this canonical form
                        first = row[0] if first is None else first
                        conn.execute("INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
                    elif kind == "checkpoint":
                        conn.execute(
                            "INSERT INTO audit_checkpoints VALUES (?,?,?,?,?,?)",
                            [rec.get(k) for k in ("seq", "hash", "ts", "kid", "jws", "mac")],
                        )
        except EditedLine as exc:
            return VerifyReport(False, str(exc), ALTERED, bad_seq=exc.seq, macs_checked=hmac_key is not None)
        except (OSError, sqlite3.Error, ConfigError, AuditError) as exc:
            return VerifyReport(
                False, f"cannot read the export `{path}`: {exc}", UNREADABLE, macs_checked=hmac_key is not None
            )
        except (ValueError, OverflowError):  # not UTF-8, or a number no audit field can hold
            return VerifyReport(
                False,
                f"cannot read the export `{path}`: it is not an export `audit export` "
                "wrote (not UTF-8, or a field out of range)",
                UNREADABLE,
                macs_checked=hmac_key is not None,
            )
        keys = embedded if public_keys is None else public_keys
        report = verify_connection(
            conn,
            hmac_key=hmac_key,
            public_keys=keys,
            from_seq=first if first is not None and first > 1 else None,
            anchors=anchors,
        )
        return _sealed(report)
    finally:
        conn.close()


def _sealed(report: VerifyReport) -> VerifyReport:
    """An export proves where it ends only by a signed head on its last event: without one, its tail
    could have been cut off (the head with it) or, without the MACs, rewritten."""
    if not report.ok or not report.unsealed or report.last_seq is None:
        return report
    head = (
        f"its signed head covers seq {report.head_checkpoint}"
        if report.head_checkpoint is not None
        else "it holds no signed checkpoint"
    )
    return replace(
        report,
        ok=False,
        problem=UNSEALED,
        bad_seq=report.last_seq - report.unsealed + 1,
        message=f"the export ends at seq {report.last_seq} but {head}: the newest {report.unsealed} "
        "events may have been cut off or rewritten; export again after the guard's next "
        "checkpoint (one is written at every stop)",
    )
