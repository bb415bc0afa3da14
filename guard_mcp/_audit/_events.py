"""What goes into the audit log (`EventIn`) and what comes out of it (`AuditEvent`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from guard_mcp._codes import EventType, event_type

__all__ = ["EVENT_TYPES", "AuditEvent", "EventIn"]

# The event types the guard writes: the closed set `EventType` (an event of any other type is refused).
EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class EventIn:
    """One event as a pipeline stage hands it over; the log adds seq, ts, hashes and the MAC."""

    type: str  # an `EventType` or its string (checked below)
    request_id: str | None = None
    actor: str | None = None
    upstream: str | None = None
    tool: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    # True when whoever built `data` already redacted it (or built it only from values the guard
    # made: hashes, ids, rule names), so the log stores it without a second scan.
    redacted: bool = False

    def __post_init__(self) -> None:
        # anything but an `EventType` is refused here, before it can reach the log
        object.__setattr__(self, "type", event_type(self.type))


@dataclass(frozen=True)
class AuditEvent:
    """One stored event. `ts` is milliseconds since the Unix epoch (an integer, so it hashes exactly)."""

    seq: int
    ts: int
    type: str
    request_id: str | None
    actor: str | None
    upstream: str | None
    tool: str | None
    data: Mapping[str, Any]
    prev_hash: str
    hash: str
    mac: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "type": self.type,
            "request_id": self.request_id,
            "actor": self.actor,
            "upstream": self.upstream,
            "tool": self.tool,
            "data": dict(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "mac": self.mac,
        }
