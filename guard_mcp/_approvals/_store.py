"""The approval store: create, decide, consume, expire and escalate approvals in the guard's database.

Every transition is a compare-and-set inside one IMMEDIATE transaction, so it holds across
processes: `guard-mcp approvals approve` in one terminal and `deny` in another on the same request
cannot both win; an approval is consumed once, and only by the payload hash it was created for.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from guard_mcp._approvals._approvers import Approvers, SecretSealer, check_code, check_member
from guard_mcp._approvals._db import Database
from guard_mcp._approvals._grants import Grants
from guard_mcp._approvals._prompt import escape_text
from guard_mcp._approvals._record import DEFAULT_GROUP, Approval, ApprovalState, new_id, valid_id
from guard_mcp._canonical import payload_hash as hash_payload
from guard_mcp._clock import Clock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._errors import ApprovalError, StateError
from guard_mcp._models import ActionBundle, Decision, Effect, Tier
from guard_mcp._state import StateDir

__all__ = ["MAX_REASON", "ApprovalStore", "VerifiedFactor", "needs_step_up", "unknown_approval"]

MAX_REASON = 500  # characters of an approver's free-text reason


def unknown_approval(approval_id: str) -> ApprovalError:
    """One message for "malformed", "never existed" and "someone else's": a guess learns nothing."""
    shown = escape_text(approval_id if len(approval_id) <= 40 else approval_id[:40] + "…")
    return ApprovalError(f"unknown approval `{shown}`; list pending approvals with `guard-mcp approvals list`")


def _row_to_approval(row: sqlite3.Row) -> Approval:
    try:
        bundle = ActionBundle.model_validate_json(row["bundle"])
    except ValidationError:
        raise StateError(
            f"approval `{row['id']}` in the database is damaged; cancel it with `guard-mcp approvals deny {row['id']}`"
        ) from None
    return Approval(
        id=row["id"],
        request_id=row["request_id"],
        bundle=bundle,
        payload_hash=row["payload_hash"],
        tool=row["tool"],
        action=row["action"],
        rule_id=row["rule_id"],
        policy=row["policy"],
        group=row["owner"],
        step_up=bool(row["step_up"]),
        created=row["created"],
        deadline=row["deadline"],
        state=ApprovalState(row["state"]),
        approver=row["approver"],
        reason=row["reason"],
        decided_at=row["decided_at"],
        consumed=bool(row["consumed"]),
        session=row["session"],
        escalated=bool(row["escalated"]),
        policy_reason=row["policy_reason"],
        escalated_from=row["escalated_from"],
    )


def _fetch(conn: sqlite3.Connection, approval_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    return row


@dataclass(frozen=True)
class VerifiedFactor:
    """A decision's authentication that the caller already verified (the console): `passkey` is a fresh
    WebAuthn assertion bound to this approval and payload (it satisfies step-up); `session` is a
    signed-in console session (it does not). Either way the approver must be of the owner group."""

    approver: str
    factor: str  # "passkey" | "session"
    credential_id: str | None = None


@dataclass(frozen=True)
class _Outcome:
    """What a transaction decided; an error is raised only after the transaction committed."""

    approval: Approval | None
    error: str | None = None


class ApprovalStore:
    def __init__(self, db: Database, *, clock: Clock, config: ApprovalsConfig, sealer: SecretSealer) -> None:
        self._db = db
        self.clock = clock
        self.config = config
        self._sealer = sealer
        self.approvers = Approvers(db, sealer, clock)
        self.grants = Grants(db, clock, config, sealer)

    @classmethod
    async def open(cls, state: StateDir, *, clock: Clock, config: ApprovalsConfig) -> ApprovalStore:
        """Open (and create if needed) the approval tables in `<state>/guard.db`."""
        state.ensure()
        db = await Database.open(state.database)
        return cls(db, clock=clock, config=config, sealer=SecretSealer(state.keys / "approvers.key"))

    async def close(self) -> None:
        await self._db.close()

    # -- creating and reading ----------------------------------------------------------------------

    async def create(self, bundle: ActionBundle, decision: Decision, *, tool: str) -> Approval:
        """Persist a PENDING approval for exactly this bundle's payload."""
        if decision.effect is not Effect.APPROVE:
            raise ApprovalError(
                f"decision `{decision.effect.value}` does not ask for approval; only `approve` decisions create one"
            )
        # The prompt shows `bundle.arguments` and consume() checks `payload_hash`: they must be the same
        # payload, or a human would approve one thing and authorise another.
        if hash_payload(bundle.arguments) != bundle.payload_hash:
            raise ApprovalError(
                f"payload hash `{bundle.payload_hash}` of request `{bundle.request_id}` does not match its "
                "arguments; rebuild the action bundle"
            )
        if decision.approval_ttl is not None and decision.approval_ttl <= 0:
            raise ApprovalError(f"approval ttl `{decision.approval_ttl}` must be positive; fix the policy rule")
        ttl = float(decision.approval_ttl) if decision.approval_ttl else self.config.expire
        step_up = needs_step_up(bundle, decision)
        now = self.clock.now()
        approval = Approval(
            id=new_id("apr"),
            request_id=bundle.request_id,
            bundle=bundle,
            payload_hash=bundle.payload_hash,
            tool=tool,
            action=bundle.action,
            rule_id=decision.rule_id,
            policy=decision.policy,
            group=decision.approvers or DEFAULT_GROUP,
            step_up=step_up,
            created=now,
            deadline=now + ttl,
            state=ApprovalState.PENDING,
            approver=None,
            reason=None,
            decided_at=None,
            consumed=False,
            session=bundle.actor.session,
            escalated=False,
            policy_reason=decision.reason,
        )
        row: dict[str, Any] = {
            "id": approval.id,
            "request_id": approval.request_id,
            "bundle": bundle.model_dump_json(),
            "payload_hash": approval.payload_hash,
            "principal": approval.principal,
            "session": approval.session,
            "tool": tool,
            "action": approval.action,
            "rule_id": approval.rule_id,
            "policy": approval.policy,
            "policy_reason": approval.policy_reason,
            "owner": approval.group,
            "step_up": int(step_up),
            "created": approval.created,
            "deadline": approval.deadline,
            "state": approval.state.value,
        }
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        await self._db.write(lambda conn: conn.execute(f"INSERT INTO approvals ({columns}) VALUES ({marks})", row))  # noqa: S608
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        if not valid_id(approval_id, "apr"):
            return None
        row = await self._db.read(lambda conn: _fetch(conn, approval_id))
        return None if row is None else _row_to_approval(row)

    async def find_reusable(self, *, tool: str, payload_hash: str, principal: str,
                            step_up: bool = False) -> Approval | None:
        """An APPROVED, unconsumed, unexpired approval of exactly this payload by this principal, if any.

        For clients that cannot be asked in-band: the retry of the identical call finds the approval
        granted out of band; the caller must still `consume` it, which is what makes it single-use.
        With `step_up` (the call needs it now), only an approval that was itself a step-up qualifies.
        """
        now = self.clock.now()
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM approvals WHERE tool = ? AND payload_hash = ? AND principal = ? AND state = ? "
                "AND consumed = 0 AND deadline > ? AND step_up >= ? ORDER BY decided_at LIMIT 1",
                (tool, payload_hash, principal, ApprovalState.APPROVED.value, now, int(step_up)),
            ).fetchone()
        )
        return None if row is None else _row_to_approval(row)

    async def list(self, *, states: Sequence[ApprovalState] | None = None) -> builtins.list[Approval]:
        wanted = [s.value for s in (states if states is not None else ApprovalState)]
        marks = ", ".join("?" for _ in wanted)
        rows = await self._db.read(
            lambda conn: conn.execute(
                f"SELECT * FROM approvals WHERE state IN ({marks}) ORDER BY created, id", wanted  # noqa: S608
            ).fetchall()
        )
        return [_row_to_approval(r) for r in rows]

    # -- transitions ---------------------------------------------------------------------------------

    async def decide(
        self,
        approval_id: str,
        *,
        approve: bool,
        approver: str,
        reason: str | None = None,
        totp_code: str | None = None,
        in_band: bool = False,
        verified: VerifiedFactor | None = None,
    ) -> Approval:
        """Approve or deny a PENDING approval, exactly once.

        Step-up approvals are never approved in-band (inside the agent's own client) and need a named
        approver of the owner group with a fresh TOTP code; a denial is always accepted, as it grants
        nothing. A deadline that has passed turns the approval EXPIRED and refuses the decision.
        """
        if not valid_id(approval_id, "apr"):
            raise unknown_approval(approval_id)
        if not approver:
            raise ApprovalError("a decision needs the approver's identity; pass `--as NAME`")
        if reason is not None and len(reason) > MAX_REASON:
            raise ApprovalError(f"reason is {len(reason)} characters; keep it under {MAX_REASON}")
        now = self.clock.now()
        sealer = self._sealer

        def work(conn: sqlite3.Connection) -> _Outcome:
            row = _fetch(conn, approval_id)
            if row is None:
                return _Outcome(None, str(unknown_approval(approval_id)))
            if row["state"] != ApprovalState.PENDING.value:
                return _Outcome(
                    _row_to_approval(row),
                    f"approval `{approval_id}` is already {row['state']}; a decision cannot be changed",
                )
            if now >= row["deadline"]:
                _expire_one(conn, approval_id, now)
                return _Outcome(
                    _row_to_approval(_fetch(conn, approval_id) or row),
                    f"approval `{approval_id}` expired; the call was denied, and the agent must ask again",
                )
            if approve and row["step_up"]:
                if in_band:
                    return _Outcome(
                        None,
                        f"approval `{approval_id}` needs step-up and cannot be approved from the agent's client; "
                        f"run `guard-mcp approvals approve {approval_id} --as NAME --code CODE`",
                    )
                if totp_code is None and (verified is None or verified.factor != "passkey"):
                    return _Outcome(
                        None,
                        f"approval `{approval_id}` needs step-up: approve it as a named approver of group "
                        f"`{row['owner']}` with `--as NAME --code CODE`",
                    )
            if totp_code is not None:
                # Escalation widens who may decide; the original owners keep the right.
                groups = [row["owner"], row["escalated_from"]]
                error = check_code(conn, sealer, name=approver, groups=groups, code=totp_code, now=now)
                if error is not None:
                    return _Outcome(None, error)
            if verified is not None:  # a console decision: still of the owner group, in this transaction
                error = (f"approver `{approver}` is not the signed-in approver" if verified.approver != approver
                         else check_member(conn, name=approver, groups=[row["owner"], row["escalated_from"]]))
                if error is not None:
                    return _Outcome(None, error)
            state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
            changed = conn.execute(
                "UPDATE approvals SET state = ?, approver = ?, reason = ?, decided_at = ? WHERE id = ? AND state = ?",
                (state.value, approver, reason, now, approval_id, ApprovalState.PENDING.value),
            ).rowcount
            after = _fetch(conn, approval_id)
            if changed != 1 or after is None:
                return _Outcome(None, f"approval `{approval_id}` was decided by someone else first")
            return _Outcome(_row_to_approval(after))

        outcome = await self._db.write(work)
        if outcome.error is not None or outcome.approval is None:
            raise ApprovalError(outcome.error or str(unknown_approval(approval_id)))
        return outcome.approval

    async def consume(self, approval_id: str, *, payload_hash: str) -> bool:
        """Spend an APPROVED approval for exactly `payload_hash`; True once, False ever after."""
        if not valid_id(approval_id, "apr"):
            return False
        now = self.clock.now()
        changed = await self._db.write(
            lambda conn: conn.execute(
                "UPDATE approvals SET consumed = 1, consumed_at = ? WHERE id = ? AND state = ? AND consumed = 0 "
                "AND payload_hash = ? AND deadline > ?",
                (now, approval_id, ApprovalState.APPROVED.value, payload_hash, now),
            ).rowcount
        )
        return bool(changed == 1)

    async def cancel(self, approval_id: str, reason: str) -> None:
        """Make sure an approval never runs: PENDING, or APPROVED but not yet consumed, becomes CANCELLED.

        Final states are left as they are, so cancelling after a client disconnected is always safe.
        """
        if not valid_id(approval_id, "apr"):
            raise unknown_approval(approval_id)
        now = self.clock.now()

        def work(conn: sqlite3.Connection) -> bool:
            if _fetch(conn, approval_id) is None:
                return False
            conn.execute(
                "UPDATE approvals SET state = ?, reason = COALESCE(reason, ?), decided_at = COALESCE(decided_at, ?) "
                "WHERE id = ? AND (state = ? OR (state = ? AND consumed = 0))",
                (
                    ApprovalState.CANCELLED.value,
                    reason[:MAX_REASON],
                    now,
                    approval_id,
                    ApprovalState.PENDING.value,
                    ApprovalState.APPROVED.value,
                ),
            )
            return True

        if not await self._db.write(work):
            raise unknown_approval(approval_id)

    async def expire(self, approval_id: str) -> Approval | None:
        """Expire this one approval if it is PENDING and overdue; return its current record."""
        if not valid_id(approval_id, "apr"):
            return None
        now = self.clock.now()

        def work(conn: sqlite3.Connection) -> sqlite3.Row | None:
            _expire_one(conn, approval_id, now)
            return _fetch(conn, approval_id)

        row = await self._db.write(work)
        return None if row is None else _row_to_approval(row)

    async def expire_due(self) -> builtins.list[Approval]:
        """Mark every overdue PENDING approval EXPIRED; each is returned by exactly one caller, to audit."""
        now = self.clock.now()
        rows = await self._db.write(
            lambda conn: conn.execute(
                "UPDATE approvals SET state = ?, decided_at = ? WHERE state = ? AND deadline <= ? RETURNING *",
                (ApprovalState.EXPIRED.value, now, ApprovalState.PENDING.value, now),
            ).fetchall()
        )
        return sorted((_row_to_approval(r) for r in rows), key=lambda a: (a.created, a.id))

    async def escalate_due(self) -> builtins.list[Approval]:
        """Re-route PENDING approvals unanswered for `escalate_after` to `escalate_to`; once each."""
        after, target = self.config.escalate_after, self.config.escalate_to
        if after is None or not target:
            return []
        now = self.clock.now()
        rows = await self._db.write(
            lambda conn: conn.execute(
                "UPDATE approvals SET escalated = 1, escalated_from = owner, owner = ? "
                "WHERE state = ? AND escalated = 0 AND created + ? <= ? AND deadline > ? AND owner != ? RETURNING *",
                (target, ApprovalState.PENDING.value, after, now, now, target),
            ).fetchall()
        )
        return sorted((_row_to_approval(r) for r in rows), key=lambda a: (a.created, a.id))


def needs_step_up(bundle: ActionBundle, decision: Decision) -> bool:
    """HIGH risk needs a named second factor whatever the rule says."""
    return decision.step_up or (bundle.risk is not None and bundle.risk.tier is Tier.HIGH)


def _expire_one(conn: sqlite3.Connection, approval_id: str, now: float) -> None:
    conn.execute(
        "UPDATE approvals SET state = ?, decided_at = ? WHERE id = ? AND state = ? AND deadline <= ?",
        (ApprovalState.EXPIRED.value, now, approval_id, ApprovalState.PENDING.value, now),
    )
