"""Session pre-authorisation: "approve MEDIUM-risk calls of tool T (or of group G) in session S for N minutes".

A grant stands in for a human's click on routine calls, so it is narrow by construction: one client
session, one tool or one approver group, a bounded lifetime (`approvals.preauth_max`), revocable, and
never for HIGH risk, a call of unknown risk, or a rule that demands step-up. Every call a grant covers
is recorded against it, so the audit can say which grant let which request through.

A grant row is only a grant with its record (`_proof`), written when it is granted: a row inserted,
widened or extended in the database does not verify, covers nothing, and a call it alone would have
covered is refused (`ApprovalUnverified`).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from dataclasses import dataclass

from guard_mcp._approvals._approvers import SecretSealer, check_code, check_name
from guard_mcp._approvals._db import Database
from guard_mcp._approvals._proof import TOTP, ApprovalUnverified, Channel, DecisionKey
from guard_mcp._approvals._record import DEFAULT_GROUP, new_id, valid_id
from guard_mcp._canonical import payload_hash as hash_payload
from guard_mcp._clock import Clock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._errors import ApprovalError
from guard_mcp._models import ActionBundle, Decision, Effect, Tier

__all__ = ["Grant", "GrantUse", "Grants"]


@dataclass(frozen=True)
class Grant:
    id: str
    session: str
    tool: str | None
    group: str | None
    granted_by: str
    reason: str | None
    created: float
    expires: float
    revoked_at: float | None
    uses: int
    factor: str | None = None  # `totp` (a named approver's code) or the channel it was granted from
    verified: bool = False  # the grant's record (MAC) matches this row

    def active(self, now: float) -> bool:
        return self.revoked_at is None and self.created <= now < self.expires


@dataclass(frozen=True)
class GrantUse:
    grant_id: str
    request_id: str
    tool: str
    payload_hash: str
    at: float


_SELECT = (
    "SELECT g.*, (SELECT COUNT(*) FROM approval_grant_uses u WHERE u.grant_id = g.id) AS uses FROM approval_grants g"
)


def _grant(row: sqlite3.Row, key: DecisionKey) -> Grant:
    return Grant(
        id=row["id"],
        session=row["session"],
        tool=row["tool"],
        group=row["owner"],
        granted_by=row["granted_by"],
        reason=row["reason"],
        created=row["created"],
        expires=row["expires"],
        revoked_at=row["revoked_at"],
        uses=row["uses"],
        factor=row["factor"],
        verified=key.grant_problem(row) is None,
    )


class Grants:
    def __init__(
        self, db: Database, clock: Clock, config: ApprovalsConfig, sealer: SecretSealer, key: DecisionKey
    ) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._sealer = sealer
        self._key = key

    async def grant(
        self,
        *,
        session: str,
        duration: float,
        granted_by: str,
        tool: str | None = None,
        group: str | None = None,
        reason: str | None = None,
        totp_code: str | None = None,
        channel: Channel = Channel.CLI,
    ) -> Grant:
        """Pre-authorise MEDIUM-risk calls of `tool` or of approver `group` in `session` for `duration` s,
        and write the grant's record.

        With `totp_code`, `granted_by` must be an enrolled approver (of `group`, for a group grant) and the
        code is spent as for a decision. Never from the agent's own client (`Channel.IN_BAND`).
        """
        if channel is Channel.IN_BAND:
            raise ApprovalError(
                "a session grant cannot be given from the agent's client; run `guard-mcp approvals grant` in a terminal"
            )
        if (tool is None) == (group is None):
            raise ApprovalError("a grant covers one tool or one approver group; pass exactly one of `--tool`/`--group`")
        if not session:
            raise ApprovalError("a grant needs the client session id; copy it from the pending result or the audit")
        if group is not None:
            check_name(group, "group")
        limit = self._config.preauth_max
        if not 0 < duration <= limit:
            raise ApprovalError(f"grant duration `{duration:g}s` must be more than 0 and at most {limit:g}s")
        now = self._clock.now()
        factor = TOTP if totp_code is not None else channel.value
        grant = Grant(
            new_id("grt"), session, tool, group, granted_by, reason, now, now + duration, None, 0, factor, True
        )
        record = {
            "id": grant.id,
            "session": session,
            "tool": tool,
            "owner": group,
            "granted_by": granted_by,
            "factor": factor,
            "created": grant.created,
            "expires": grant.expires,
        }

        def work(conn: sqlite3.Connection) -> str | None:
            if totp_code is not None:
                groups = [group] if group is not None else _all_groups(conn, granted_by)
                error = check_code(conn, self._sealer, name=granted_by, groups=groups, code=totp_code, now=now)
                if error is not None:
                    return error
            conn.execute(
                "INSERT INTO approval_grants (id, session, tool, owner, granted_by, reason, created, expires, factor, "
                "grant_mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    grant.id,
                    session,
                    tool,
                    group,
                    granted_by,
                    reason,
                    grant.created,
                    grant.expires,
                    factor,
                    self._key.grant(record),
                ),
            )
            return None

        error = await self._db.write(work)
        if error is not None:
            raise ApprovalError(error)
        return grant

    async def check(self, bundle: ActionBundle, decision: Decision, tool: str, session: str | None) -> str | None:
        """The id of an active grant covering this call (its use is recorded), else None.

        Only a grant whose record verifies covers anything; when the only grants that would cover the
        call do not verify, `ApprovalUnverified` is raised for the caller to refuse the call, on record.
        """
        if not session or decision.effect is not Effect.APPROVE or decision.step_up:
            return None
        if bundle.risk is None or bundle.risk.tier is not Tier.MEDIUM:
            return None
        if bundle.actor.session is not None and bundle.actor.session != session:
            return None
        phash = bundle.payload_hash
        if hash_payload(bundle.arguments) != phash:
            return None
        group = decision.approvers or DEFAULT_GROUP
        now = self._clock.now()

        def work(conn: sqlite3.Connection) -> tuple[str | None, tuple[str, str] | None]:
            rows = conn.execute(
                "SELECT * FROM approval_grants WHERE session = ? AND revoked_at IS NULL AND created <= ? "
                "AND expires > ? AND (tool = ? OR owner = ?) ORDER BY expires DESC, id",
                (session, now, now, tool, group),
            ).fetchall()
            unverified: tuple[str, str] | None = None
            for row in rows:
                problem = self._key.grant_problem(row)
                if problem is not None:
                    # the id goes back to the agent with the denial: only one in the guard's own format
                    shown = str(row["id"]) if valid_id(str(row["id"]), "grt") else "grt_(malformed)"
                    unverified = unverified or (shown, problem)
                    continue
                conn.execute(
                    "INSERT INTO approval_grant_uses (grant_id, request_id, tool, payload_hash, at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (row["id"], bundle.request_id, tool, phash, now),
                )
                return str(row["id"]), None
            return None, unverified

        grant_id, unverified = await self._db.write(work)
        if unverified is not None:
            bad, problem = unverified
            raise ApprovalUnverified(
                bad,
                f"grant `{bad}` does not verify: {problem}; it covers nothing, revoke it "
                f"with `guard-mcp approvals revoke {bad}`",
            )
        return grant_id

    async def revoke(self, grant_id: str) -> Grant:
        now = self._clock.now()

        def work(conn: sqlite3.Connection) -> sqlite3.Row | None:
            if not valid_id(grant_id, "grt"):
                return None
            conn.execute(
                "UPDATE approval_grants SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, grant_id)
            )
            row: sqlite3.Row | None = conn.execute(f"{_SELECT} WHERE g.id = ?", (grant_id,)).fetchone()
            return row

        row = await self._db.write(work)
        if row is None:
            raise ApprovalError(f"unknown grant `{grant_id}`; list grants with `guard-mcp approvals grants`")
        return _grant(row, self._key)

    async def list(self, *, active_only: bool = True) -> builtins.list[Grant]:
        now = self._clock.now()
        rows = await self._db.read(lambda conn: conn.execute(f"{_SELECT} ORDER BY g.created, g.id").fetchall())
        grants = [_grant(r, self._key) for r in rows]
        return [g for g in grants if g.active(now)] if active_only else grants

    async def uses(self, grant_id: str) -> builtins.list[GrantUse]:
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM approval_grant_uses WHERE grant_id = ? ORDER BY at, rowid", (grant_id,)
            ).fetchall()
        )
        return [GrantUse(r["grant_id"], r["request_id"], r["tool"], r["payload_hash"], r["at"]) for r in rows]


def _all_groups(conn: sqlite3.Connection, name: str) -> builtins.list[str]:
    row = conn.execute("SELECT groups FROM approval_approvers WHERE name = ?", (name,)).fetchone()
    return [] if row is None else builtins.list(json.loads(row["groups"]))
