"""`audit export --format ocsf`: the log as OCSF events a SIEM ingests, and still verifiable.

Every line is one OCSF 1.3.0 event. Each audit event is an API Activity (class 6003: the guard's
event type as `api.operation` and `metadata.event_code`, the principal as `actor.user.name`, the
upstream as `api.service.name`, the tool as a resource, the request id as `metadata.correlation_uid`,
the reason code as `status_code`); the export's header and each signed checkpoint are Base Events
(class 0). The guard's own record travels whole in `unmapped.guard_mcp`: the jsonl export's line
(`kind` header, event or checkpoint, with seq, ts, type, data, prev_hash, hash, mac, ...).

So `audit verify --export FILE` checks an OCSF export as it checks a jsonl one: it takes the
records back out, and verifies the chain, the MACs and the signed head. It also maps each record
again and requires the line to be exactly that, so a field a SIEM shows cannot be edited apart from
the chained record it came from.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guard_mcp._audit._export import EditedLine, export_jsonl, verify_export
from guard_mcp._errors import AuditError

__all__ = ["OCSF_VERSION", "export_ocsf", "is_ocsf", "to_ocsf", "verify_ocsf"]

OCSF_VERSION = "1.3.0"
_PRODUCT = {"name": "guard-mcp", "vendor_name": "guard-mcp"}
_SEVERITY = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
_STATUS = {0: "Unknown", 1: "Success", 2: "Failure"}
_CRITICAL = frozenset({"audit.broken"})
_MEDIUM = frozenset({"tool.pin_changed", "policy.refused", "operator.refused", "http.unauthorized", "call.unresolved"})
_FAILED = frozenset(
    {
        "call.invalid",
        "call.denied",
        "call.error",
        "call.unresolved",
        "approval.expired",
        "approval.cancelled",
        "operator.refused",
        "policy.refused",
        "audit.broken",
        "http.unauthorized",
    }
)


def _status(kind: str, data: Mapping[str, Any]) -> int:
    if kind in _FAILED:
        return 2
    if kind == "call.decided":
        return {"allow": 1, "deny": 2}.get(str(data.get("effect")), 0)  # approve: not decided yet
    if kind == "call.result":
        return 2 if data.get("is_error") else 1
    if kind in ("approval.decided", "operator.decided"):
        return 1 if data.get("state") == "approved" else 2
    return 1


def _severity(kind: str, status: int) -> int:
    if kind in _CRITICAL:
        return 5
    if kind in _MEDIUM:
        return 3
    return 2 if status == 2 else 1


def _base(
    class_uid: int,
    class_name: str,
    category_uid: int,
    category_name: str,
    time: Any,
    severity: int,
    metadata: dict[str, Any],
    message: str,
    record: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": 99,
        "activity_name": "Other",
        "type_uid": class_uid * 100 + 99,
        "type_name": f"{class_name}: Other",
        "time": time if isinstance(time, int) and not isinstance(time, bool) else 0,
        "severity_id": severity,
        "severity": _SEVERITY[severity],
        "message": message,
        "metadata": {"version": OCSF_VERSION, "product": _PRODUCT, "log_name": "guard-mcp audit", **metadata},
        "unmapped": {"guard_mcp": dict(record)},
    }


def to_ocsf(record: Mapping[str, Any]) -> dict[str, Any]:
    """The OCSF event of one line of the jsonl export (a header, an event or a checkpoint)."""
    kind = record.get("kind")
    if kind == "header":
        return _base(
            0,
            "Base Event",
            0,
            "Uncategorized",
            record.get("exported_at"),
            1,
            {"event_code": "audit.export"},
            "guard-mcp audit export: the keys and how to verify it",
            record,
        )
    if kind == "checkpoint":
        return _base(
            0,
            "Base Event",
            0,
            "Uncategorized",
            record.get("ts"),
            1,
            {"event_code": "audit.checkpoint", "sequence": record.get("seq"), "uid": record.get("hash")},
            f"signed head of the audit log at seq {record.get('seq')}",
            record,
        )
    event_type = str(record.get("type"))
    raw = record.get("data")
    data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    status = _status(event_type, data)
    metadata: dict[str, Any] = {"event_code": event_type, "sequence": record.get("seq"), "uid": record.get("hash")}
    request_id, upstream, tool = record.get("request_id"), record.get("upstream"), record.get("tool")
    if request_id is not None:
        metadata["correlation_uid"] = request_id
    out = _base(
        6003,
        "API Activity",
        6,
        "Application Activity",
        record.get("ts"),
        _severity(event_type, status),
        metadata,
        event_type + (f" {tool}" if tool else ""),
        record,
    )
    api: dict[str, Any] = {"operation": event_type}
    if upstream is not None:
        api["service"] = {"name": upstream}
    if request_id is not None:
        api["request"] = {"uid": request_id}
    out.update(
        api=api,
        actor={"user": {"name": record.get("actor") or "guard-mcp"}},
        src_endpoint={"name": "mcp-client" if request_id is not None else "guard-mcp"},
        status_id=status,
        status=_STATUS[status],
    )
    if tool is not None:
        out["resources"] = [{"name": tool, "type": "mcp.tool"}]
    if isinstance(data.get("reason"), str):
        out["status_code"] = data["reason"]
    return out


def _record(n: int, event: Any) -> dict[str, Any]:
    unmapped = event.get("unmapped") if isinstance(event, dict) else None
    record = unmapped.get("guard_mcp") if isinstance(unmapped, dict) else None
    if not isinstance(record, dict):
        raise AuditError(
            f"line {n} of the export carries no guard-mcp record (`unmapped.guard_mcp`); "
            "pass the file `audit export --format ocsf` wrote"
        )
    if event != to_ocsf(record):
        raise EditedLine(
            f"line {n} of the export (seq {record.get('seq')}) shows OCSF fields that differ from "
            "the record it carries: the export was edited",
            record.get("seq"),
        )
    return record


# `export_jsonl`, every line as its OCSF event; returns the header.
export_ocsf = functools.partial(export_jsonl, line_of=to_ocsf)
# Verify an OCSF export as `verify_export` verifies a jsonl one, and every line's mapped fields too.
verify_ocsf = functools.partial(verify_export, record_of=_record)


def is_ocsf(path: Path) -> bool:
    """The file's first line is an OCSF event (an export made with `--format ocsf`)."""
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        value = json.loads(first)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(value, dict) and "class_uid" in value and "unmapped" in value
