"""Tool results the guard itself answers with. A denial is a value: a normal tool result with
`isError: true`, a machine-readable reason code in `_meta`, and one line a model can read.

The guard's own reason codes are the closed set `_codes.Reason`: `deny_result` refuses any other
(ValueError), except for a denial the policy decided, which carries the policy's label and its
author's own code."""

from __future__ import annotations

from typing import Any

import mcp_types as types

from guard_mcp._codes import Reason, reason_code

__all__ = ["DECISION_META", "deny_result", "pending_result", "upstream_error_result"]

DECISION_META = "dev.guard-mcp/decision"


def deny_result(
    reason: Reason | str, message: str, *, request_id: str | None = None, policy: str | None = None, **extra: Any
) -> types.CallToolResult:
    """A denial answered as a tool result. `reason` is a `Reason` (or its string); when `policy` names
    the policy that decided the denial, it is that policy's reason code, whatever its author chose."""
    reason = reason_code(reason) if policy is None else str(reason)
    detail = {"effect": "deny", "reason": reason, "request_id": request_id, **extra, "policy": policy}
    text = f"denied by guard-mcp: {reason}: {message}"
    if request_id:
        text += f" (request {request_id})"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        meta={DECISION_META: {k: v for k, v in detail.items() if v is not None}},
    )


def upstream_error_result(message: str, *, request_id: str | None = None) -> types.CallToolResult:
    """The guard let the call through and the upstream failed it: said as the upstream's failure, not
    as a denial (reason `upstream_error`, so clients and the audit still count it)."""
    text = f"upstream error: {message}"
    if request_id:
        text += f" (request {request_id})"
    text += "; guard-mcp allowed this call, the upstream did not complete it"
    detail = {"effect": "deny", "reason": "upstream_error", "request_id": request_id}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        meta={DECISION_META: {k: v for k, v in detail.items() if v is not None}},
    )


def pending_result(
    approval_id: str, headline: str, *, request_id: str, deadline: float, link: str | None = None
) -> types.CallToolResult:
    command = f"guard-mcp approvals approve {approval_id}"
    where = f"An approver opens {link} or runs `{command}`" if link else f"An approver runs `{command}`"
    text = (
        f"pending_approval: {headline} needs a human decision (approval {approval_id}). "
        f"{where}; then repeat this exact call once to execute it."
    )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        meta={
            DECISION_META: {
                "effect": "approve",
                "status": "pending_approval",
                "reason": "pending_approval",
                "approval_id": approval_id,
                "request_id": request_id,
                "deadline": deadline,
                "approve_command": command,
                **({"approve_url": link} if link else {}),
            }
        },
    )
