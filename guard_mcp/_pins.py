"""Tool definition pinning (trust on first use).

The first listing of an upstream pins each tool's definition (everything the upstream says about
it: name, title, description, schemas, annotations, icons, execution, `_meta`) by its canonical
hash. Afterwards a different definition, and a tool that was not in any earlier listing, are
recorded as pending and withheld from clients until a person accepts them (`guard-mcp tools
accept`): a silently changed description, a tool slipped in mid-session, or a new `ui://` link in
its `_meta` is how tool poisoning arrives. An upstream's `new_tools: allow` pins a new tool on
first sight instead.

Pins carry the format of the definition they hash. A pin written by an older version (format 1:
name, title, description, schemas and annotations only) is carried over to the current format
when the tool's format-1 definition still matches it, so an upgrade does not withhold every tool;
if it no longer matches, the tool changed, and it is withheld like any changed tool.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard_mcp._canonical import canonical_json, sha256_hex
from guard_mcp._errors import StateError

__all__ = [
    "PIN_FORMAT",
    "Observed",
    "PinStatus",
    "PinStore",
    "accept_pending",
    "definition_diff",
    "definition_hash",
    "exposed_name",
    "tool_definition",
]

PIN_FORMAT = 2

_TABLES = """
CREATE TABLE IF NOT EXISTS tool_pins (
    upstream TEXT NOT NULL,
    tool TEXT NOT NULL,
    pinned_hash TEXT,
    pinned_definition TEXT,
    pinned_at REAL,
    pending_hash TEXT,
    pending_definition TEXT,
    pending_since REAL,
    pinned_format INTEGER NOT NULL DEFAULT 1,
    pending_format INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (upstream, tool)
);
CREATE TABLE IF NOT EXISTS tool_pin_upstreams (
    upstream TEXT PRIMARY KEY,
    first_listed_at REAL NOT NULL
);
"""
# What format 1 (before the pin format was recorded) hashed of a tool.
_FORMAT_1_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def tool_definition(tool: Any) -> dict[str, Any]:
    """Everything an upstream says about a tool, as the guard received it (the current pin format)."""
    dumped: dict[str, Any] = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def _format_1_definition(tool: Any) -> dict[str, Any]:
    dumped = tool_definition(tool)
    return {k: dumped[k] for k in _FORMAT_1_KEYS if k in dumped}


def definition_hash(definition: dict[str, Any]) -> str:
    return "sha256:" + sha256_hex(canonical_json(definition))


@dataclass(frozen=True)
class PinStatus:
    upstream: str
    tool: str
    pinned_hash: str | None  # None: a new tool, never accepted
    pinned_definition: dict[str, Any] | None
    pending_hash: str | None
    pending_definition: dict[str, Any] | None
    pending_since: float | None

    @property
    def withheld(self) -> bool:
        return self.pending_hash is not None

    @property
    def new(self) -> bool:
        """A tool that appeared after its upstream's first listing and was never accepted."""
        return self.pinned_hash is None


@dataclass(frozen=True)
class Observed:
    """What one listing said about one tool."""

    digest: str
    usable: bool  # the definition matches the pin (a first listing pins it)
    changed: bool  # a change (or a new tool) not recorded before: the caller audits it once
    new: bool = False  # withheld because it appeared after the upstream's first listing


class PinStore:
    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            if _outdated(self._db):  # checked first: a read-only copy of a current store opens as it is
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    if _outdated(self._db):  # another process may have done it meanwhile
                        _upgrade(self._db)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open tool pins in `{path}`: {exc}; check the state directory") from None

    def close(self) -> None:
        self._db.close()

    def observe(self, upstream: str, tool: str, definition: dict[str, Any], now: float) -> tuple[bool, bool]:
        """Record one definition (in the current format) seen from an upstream, pinning a tool not seen
        before. Returns (usable, newly_changed)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seen = self._observe(upstream, tool, definition, None, now, withhold_new=False)
            self._mark_listed(upstream, now)
        return seen.usable, seen.changed

    def observe_listing(
        self, upstream: str, tools: Mapping[str, Any], now: float, *, withhold_new: bool
    ) -> dict[str, Observed]:
        """Record one tools/list answer of `upstream` (`tools`: name → the upstream's Tool), in one
        transaction. A tool no earlier listing had is pinned on the upstream's first listing, or when
        `withhold_new` is false; otherwise it is pending, and withheld."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            first = (
                self._db.execute("SELECT 1 FROM tool_pin_upstreams WHERE upstream=?", (upstream,)).fetchone() is None
            )
            out = {
                name: self._observe(
                    upstream,
                    name,
                    tool_definition(tool),
                    definition_hash(_format_1_definition(tool)),
                    now,
                    withhold_new=withhold_new and not first,
                )
                for name, tool in tools.items()
            }
            self._mark_listed(upstream, now)
        return out

    def _mark_listed(self, upstream: str, now: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO tool_pin_upstreams (upstream, first_listed_at) VALUES (?,?)", (upstream, now)
        )

    def _observe(
        self,
        upstream: str,
        tool: str,
        definition: dict[str, Any],
        format_1: str | None,
        now: float,
        *,
        withhold_new: bool,
    ) -> Observed:
        digest = definition_hash(definition)
        blob = json.dumps(definition, sort_keys=True)
        key = (upstream, tool)
        row = self._db.execute(
            "SELECT pinned_hash, pinned_format, pending_hash, pending_format FROM tool_pins WHERE upstream=? AND tool=?",
            key,
        ).fetchone()
        if row is None:
            if withhold_new:
                self._db.execute(
                    "INSERT INTO tool_pins (upstream, tool, pending_hash, pending_definition, pending_since, "
                    "pinned_format, pending_format) VALUES (?,?,?,?,?,?,?)",
                    (*key, digest, blob, now, PIN_FORMAT, PIN_FORMAT),
                )
                return Observed(digest, usable=False, changed=True, new=True)
            self._db.execute(
                "INSERT INTO tool_pins (upstream, tool, pinned_hash, pinned_definition, pinned_at, pinned_format, "
                "pending_format) VALUES (?,?,?,?,?,?,?)",
                (*key, digest, blob, now, PIN_FORMAT, PIN_FORMAT),
            )
            return Observed(digest, usable=True, changed=False)
        pinned, pinned_format, pending, pending_format = row
        if pinned is not None and pinned_format < PIN_FORMAT and format_1 == pinned:
            # an older version's pin of this same tool: carried over to what the pin covers now
            pinned = digest
            self._db.execute(
                "UPDATE tool_pins SET pinned_hash=?, pinned_definition=?, pinned_format=? WHERE upstream=? AND tool=?",
                (digest, blob, PIN_FORMAT, *key),
            )
        if pending is not None and pending_format < PIN_FORMAT and format_1 == pending:
            # a change an older version recorded and nobody accepted yet: still the same change
            pending = digest
            self._db.execute(
                "UPDATE tool_pins SET pending_hash=?, pending_definition=?, pending_format=? WHERE upstream=? AND tool=?",
                (digest, blob, PIN_FORMAT, *key),
            )
        if digest == pinned:
            if pending is not None:  # the upstream went back to the accepted definition
                self._db.execute(
                    "UPDATE tool_pins SET pending_hash=NULL, pending_definition=NULL, pending_since=NULL "
                    "WHERE upstream=? AND tool=?",
                    key,
                )
            return Observed(digest, usable=True, changed=False)
        if digest == pending:
            return Observed(digest, usable=False, changed=False, new=pinned is None)
        self._db.execute(
            "UPDATE tool_pins SET pending_hash=?, pending_definition=?, pending_since=?, pending_format=? "
            "WHERE upstream=? AND tool=?",
            (digest, blob, now, PIN_FORMAT, *key),
        )
        return Observed(digest, usable=False, changed=True, new=pinned is None)

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
            PinStatus(
                r[0], r[1], r[2], json.loads(r[3]) if r[3] else None, r[4], json.loads(r[5]) if r[5] else None, r[6]
            )
            for r in rows
        ]

    def accept(self, upstream: str, tool: str, now: float, expected_hash: str | None = None) -> PinStatus:
        """Make the pending definition the pinned one. `expected_hash` guards against accepting a
        definition that changed again between `tools diff` and `tools accept`."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
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
                "pinned_format=pending_format, pending_hash=NULL, pending_definition=NULL, pending_since=NULL "
                "WHERE upstream=? AND tool=?",
                (now, upstream, tool),
            )
        status = next(s for s in self.all() if s.upstream == upstream and s.tool == tool)
        return status


def _outdated(db: sqlite3.Connection) -> bool:
    """Whether the tables are missing, or an older version's."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(tool_pins)")}
    listed = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='tool_pin_upstreams'").fetchone()
    return "pinned_format" not in columns or listed is None


def _upgrade(db: sqlite3.Connection) -> None:
    """Create the tables, or bring an older version's up to date (inside the caller's transaction).

    Before the pin format was recorded, every row had a pinned definition (NOT NULL) and no format;
    the table is rebuilt so a new tool can be pending without one, its rows marked format 1, and
    every upstream they name marked as listed already (its later new tools are withheld)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(tool_pins)")}
    if columns and "pinned_format" not in columns:
        db.execute("ALTER TABLE tool_pins RENAME TO tool_pins_format_1")
        for statement in _TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO tool_pins (upstream, tool, pinned_hash, pinned_definition, pinned_at, pending_hash, "
            "pending_definition, pending_since, pinned_format, pending_format) SELECT upstream, tool, pinned_hash, "
            "pinned_definition, pinned_at, pending_hash, pending_definition, pending_since, 1, 1 FROM tool_pins_format_1"
        )
        db.execute(
            "INSERT OR IGNORE INTO tool_pin_upstreams (upstream, first_listed_at) "
            "SELECT upstream, MIN(pinned_at) FROM tool_pins_format_1 GROUP BY upstream"
        )
        db.execute("DROP TABLE tool_pins_format_1")
        return
    for statement in _TABLES.split(";"):
        if statement.strip():
            db.execute(statement)


def exposed_name(status: PinStatus) -> str:
    """The name `guard-mcp tools diff` and `accept` know a pinned tool by."""
    return f"{status.upstream}__{status.tool}"


def definition_diff(status: PinStatus) -> list[str]:
    """What changed, as unified-diff lines of the pretty-printed definitions (pinned -> changed; a tool
    that appeared after its upstream's first listing has no pinned side: every line is new)."""
    old = (
        []
        if status.pinned_definition is None
        else json.dumps(status.pinned_definition, indent=2, sort_keys=True).splitlines()
    )
    new = json.dumps(status.pending_definition, indent=2, sort_keys=True).splitlines()
    return list(difflib.unified_diff(old, new, "pinned", "new" if status.new else "changed", lineterm=""))


def accept_pending(
    pins: PinStore, name: str, now: float, *, expected_hash: str | None = None
) -> tuple[PinStatus, dict[str, Any]]:
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
