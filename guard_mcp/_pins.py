"""Tool definition pinning (trust on first use).

The first definition seen of each upstream tool (name, description, schemas, annotations) is
pinned by its canonical hash. A later, different definition is recorded as pending and withheld
from clients until a person accepts it (`guard-mcp tools accept`): a silently changed description
is how tool poisoning arrives.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard_mcp._canonical import canonical_json, sha256_hex
from guard_mcp._errors import StateError

__all__ = ["PinStatus", "PinStore", "accept_pending", "definition_diff", "definition_hash", "exposed_name",
           "tool_definition"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_pins (
    upstream TEXT NOT NULL,
    tool TEXT NOT NULL,
    pinned_hash TEXT NOT NULL,
    pinned_definition TEXT NOT NULL,
    pinned_at REAL NOT NULL,
    pending_hash TEXT,
    pending_definition TEXT,
    pending_since REAL,
    PRIMARY KEY (upstream, tool)
)
"""


def tool_definition(tool: Any) -> dict[str, Any]:
    """The parts of an upstream tool a client (and its model) acts on."""
    dumped: dict[str, Any] = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    keep = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    return {k: dumped[k] for k in keep if k in dumped}


def definition_hash(definition: dict[str, Any]) -> str:
    return "sha256:" + sha256_hex(canonical_json(definition))


@dataclass(frozen=True)
class PinStatus:
    upstream: str
    tool: str
    pinned_hash: str
    pinned_definition: dict[str, Any]
    pending_hash: str | None
    pending_definition: dict[str, Any] | None
    pending_since: float | None

    @property
    def withheld(self) -> bool:
        return self.pending_hash is not None


class PinStore:
    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open tool pins in `{path}`: {exc}; check the state directory") from None

    def close(self) -> None:
        self._db.close()

    def observe(self, upstream: str, tool: str, definition: dict[str, Any], now: float) -> tuple[bool, bool]:
        """Record a definition seen from an upstream. Returns (usable, newly_changed).

        usable: the definition matches the pin (first sight pins it). newly_changed: this
        observation is a change not recorded before (the caller audits it once).
        """
        digest = definition_hash(definition)
        blob = json.dumps(definition, sort_keys=True)
        with self._db:
            row = self._db.execute(
                "SELECT pinned_hash, pending_hash FROM tool_pins WHERE upstream=? AND tool=?", (upstream, tool)
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO tool_pins (upstream, tool, pinned_hash, pinned_definition, pinned_at) VALUES (?,?,?,?,?)",
                    (upstream, tool, digest, blob, now),
                )
                return True, False
            pinned, pending = row
            if digest == pinned:
                if pending is not None:  # the upstream went back to the accepted definition
                    self._db.execute(
                        "UPDATE tool_pins SET pending_hash=NULL, pending_definition=NULL, pending_since=NULL "
                        "WHERE upstream=? AND tool=?",
                        (upstream, tool),
                    )
                return True, False
            if digest == pending:
                return False, False
            self._db.execute(
                "UPDATE tool_pins SET pending_hash=?, pending_definition=?, pending_since=? WHERE upstream=? AND tool=?",
                (digest, blob, now, upstream, tool),
            )
            return False, True

    def is_usable(self, upstream: str, tool: str, definition_digest: str) -> bool:
        row = self._db.execute(
            "SELECT pinned_hash FROM tool_pins WHERE upstream=? AND tool=?", (upstream, tool)
        ).fetchone()
        return row is not None and row[0] == definition_digest

    def pending(self) -> list[PinStatus]:
        return [s for s in self.all() if s.withheld]

    def all(self) -> list[PinStatus]:
        rows = self._db.execute(
            "SELECT upstream, tool, pinned_hash, pinned_definition, pending_hash, pending_definition, pending_since "
            "FROM tool_pins ORDER BY upstream, tool"
        ).fetchall()
        return [
            PinStatus(r[0], r[1], r[2], json.loads(r[3]), r[4], json.loads(r[5]) if r[5] else None, r[6]) for r in rows
        ]

    def accept(self, upstream: str, tool: str, now: float, expected_hash: str | None = None) -> PinStatus:
        """Make the pending definition the pinned one. `expected_hash` guards against accepting a
        definition that changed again between `tools diff` and `tools accept`."""
        with self._db:
            row = self._db.execute(
                "SELECT pending_hash, pending_definition FROM tool_pins WHERE upstream=? AND tool=?", (upstream, tool)
            ).fetchone()
            if row is None or row[0] is None:
                raise StateError(f"tool `{upstream}__{tool}` has no pending change; `guard-mcp tools diff` lists them")
            if expected_hash is not None and row[0] != expected_hash:
                raise StateError(
                    f"tool `{upstream}__{tool}` changed again since `{expected_hash[:19]}`; review `guard-mcp tools diff`"
                )
            self._db.execute(
                "UPDATE tool_pins SET pinned_hash=pending_hash, pinned_definition=pending_definition, pinned_at=?, "
                "pending_hash=NULL, pending_definition=NULL, pending_since=NULL WHERE upstream=? AND tool=?",
                (now, upstream, tool),
            )
        status = next(s for s in self.all() if s.upstream == upstream and s.tool == tool)
        return status


def exposed_name(status: PinStatus) -> str:
    """The name `guard-mcp tools diff` and `accept` know a pinned tool by."""
    return f"{status.upstream}__{status.tool}"


def definition_diff(status: PinStatus) -> list[str]:
    """What changed, as unified-diff lines of the pretty-printed definitions (pinned -> changed)."""
    old = json.dumps(status.pinned_definition, indent=2, sort_keys=True).splitlines()
    new = json.dumps(status.pending_definition, indent=2, sort_keys=True).splitlines()
    return list(difflib.unified_diff(old, new, "pinned", "changed", lineterm=""))


def accept_pending(pins: PinStore, name: str, now: float, *, expected_hash: str | None = None) -> tuple[PinStatus,
                                                                                                       dict[str, Any]]:
    """Accept the pending change of tool `name` (as `tools diff` names it), so the guard serves it again.

    Returns the tool's pin and the data of its `tool.pin_accepted` audit event, for the caller to record
    under its own actor. `expected_hash`: the change the person reviewed; a definition that changed
    again since is refused. Every channel that accepts (the CLI, the console) comes through here."""
    pending = {exposed_name(p): p for p in pins.pending()}
    p = pending.get(name)
    if p is None:
        raise StateError(f"`{name}` has no pending change; `guard-mcp tools diff` lists the ones that do")
    want = p.pending_hash if expected_hash is None else expected_hash
    pins.accept(p.upstream, p.tool, now, expected_hash=want)
    return p, {"exposed": name, "hash": want}
