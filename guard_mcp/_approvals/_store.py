"""The approval store: create, decide, consume, expire and escalate approvals in the guard's database.

Every transition is a compare-and-set inside one IMMEDIATE transaction, so it holds across
processes: `guard-mcp approvals approve` in one terminal and `deny` in another on the same request
cannot both win; an approval is consumed once, and only by the payload hash it was created for.

Deciding: `decide()` is the one way to decide an approval, for every channel: the CLI, the agent's
own client (in-band), and any new one (a web console passes a `Channel` of its own). It checks the
second factor a step-up approval needs and writes the decision's record (`_proof`) in the same
transaction; a row set to `approved` any other way authorises nothing. A channel that decides out
of band then puts the decision on record in the audit log: an `operator.decided` event with
`decision_event_data()` (the CLI does). A repeated call spends an approval only once that event is
there (`decision_on_record`), and never once the call that waited for the decision has run it
(its `approval.decided` is there).

In-band: an answer given in the agent's own client (`Channel.IN_BAND`) never approves a step-up
approval, nor one whose rule says `approval: authenticated`: `decide()` refuses it with
`InBandRefused`, whose `reason` is the code (`step_up_required`, `authenticated_approval_required`),
whatever path the answer came by; `consume()` refuses an in-band approval for a call that needs a
signed-in approver, so a row whose flag was cleared in the database does not run either.

Consuming: `consume()` is the only door to an execution. Before it spends an approval it checks the
record, and that a call which needs step-up was approved with a TOTP code; a row its record does not
back is cancelled and raises `ApprovalUnverified`, which the caller turns into an
`approval_unverified` denial on record.

Arguments: a pending approval keeps the call's arguments in clear, for the approver to read. Once it
is consumed, denied, expired or cancelled, those the audit redacts are replaced by the audit's digests
(passed to `create` as `redacted`), so the database keeps no secret of a finished call.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from guard_mcp._approvals._approvers import Approvers, SecretSealer, check_code, check_member
from guard_mcp._approvals._db import Database
from guard_mcp._approvals._grants import Grants
from guard_mcp._approvals._prompt import escape_text
from guard_mcp._approvals._proof import PASSKEY, STEP_UP_FACTORS, TOTP, ApprovalUnverified, Channel, DecisionKey
from guard_mcp._approvals._record import DEFAULT_GROUP, Approval, ApprovalState, new_id, valid_id
from guard_mcp._audit import event_intact, story
from guard_mcp._canonical import payload_hash as hash_payload
from guard_mcp._clock import Clock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._errors import ApprovalError, ConfigError, StateError
from guard_mcp._keys import decision_key
from guard_mcp._models import ActionBundle, Decision, Effect, Tier
from guard_mcp._state import StateDir

__all__ = [
    "MAX_REASON",
    "ApprovalStore",
    "InBandRefused",
    "VerifiedFactor",
    "decision_event_data",
    "needs_step_up",
    "unknown_approval",
]

# The audit events an out-of-band channel puts its decision on record with (the CLI, the console),
# and the one the waiting call writes as it runs an approval.
OUT_OF_BAND_DECIDED = ("operator.decided", "console.decided")
WAITED_DECIDED = "approval.decided"

MAX_REASON = 500  # characters of an approver's free-text reason


class InBandRefused(ApprovalError):
    """An answer from the agent's own client tried to approve what only a named or signed-in approver may."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a `_codes.Reason`: step_up_required or authenticated_approval_required


def unknown_approval(approval_id: str, where: Path | None = None) -> ApprovalError:
    """One message for "malformed", "never existed" and "someone else's": a guess learns nothing. With
    `where` (a terminal's state directory), it also says that the guard that asked may keep another."""
    shown = escape_text(approval_id if len(approval_id) <= 40 else approval_id[:40] + "…")
    if where is None:
        return ApprovalError(f"unknown approval `{shown}`; list pending approvals with `guard-mcp approvals list`")
    return ApprovalError(
        f"unknown approval `{shown}` in the state directory `{where}`; list pending approvals with "
        "`guard-mcp approvals list`, or pass the `--state-dir` of the guard that asked"
    )


def _bundle(row: sqlite3.Row) -> ActionBundle:
    try:
        return ActionBundle.model_validate_json(row["bundle"])
    except ValidationError:
        raise StateError(
            f"approval `{row['id']}` in the database is damaged; cancel it with `guard-mcp approvals deny {row['id']}`"
        ) from None


def _row_to_approval(row: sqlite3.Row, key: DecisionKey) -> Approval:
    bundle = _bundle(row)
    decided = row["state"] in (ApprovalState.APPROVED.value, ApprovalState.DENIED.value)
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
        factor=row["factor"],
        verified=decided and key.approval_problem(row) is None,
        authenticated=bool(row["authenticated"]),
    )


def decision_event_data(approval: Approval) -> dict[str, Any]:
    """What an out-of-band channel records as its `operator.decided` event, for `decision_on_record`."""
    return {
        "approval_id": approval.id,
        "state": approval.state.value,
        "approver": approval.approver,
        "reason": approval.reason,
        "payload_hash": approval.payload_hash,
        "factor": approval.factor,
    }


def _stored_as_approved(row: sqlite3.Row) -> str | None:
    """Why the row's prompt would not show what approving it authorises (it was edited), or None."""
    bundle = _bundle(row)
    try:
        honest = hash_payload(bundle.arguments) == bundle.payload_hash == row["payload_hash"] and (
            bundle.request_id,
            bundle.actor.principal,
            bundle.actor.session,
        ) == (row["request_id"], row["principal"], row["session"])
    except ConfigError:  # arguments no call could have sent (an infinity): edited
        honest = False
    if honest:
        return None
    return (
        f"approval `{row['id']}` was changed in the database: the call it shows is not the one it would "
        f"authorise; deny it with `guard-mcp approvals deny {row['id']}`"
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
    reason: str | None = None  # set for an in-band answer refused (InBandRefused)


class ApprovalStore:
    def __init__(
        self, db: Database, *, clock: Clock, config: ApprovalsConfig, sealer: SecretSealer, key: DecisionKey
    ) -> None:
        self._db = db
        self.clock = clock
        self.config = config
        self._sealer = sealer
        self._key = key
        self.approvers = Approvers(db, sealer, clock)
        self.grants = Grants(db, clock, config, sealer, key)

    @classmethod
    async def open(
        cls, state: StateDir, *, clock: Clock, config: ApprovalsConfig, store: str | None = None
    ) -> ApprovalStore:
        """Open (and create if needed) the approval tables in `<state>/guard.db`, or on `store`
        (`guard.store`: a PostgreSQL server every instance shares; the keys stay in `<state>/keys`)."""
        state.ensure()
        key = DecisionKey(decision_key(state.keys))
        db = (
            await Database.open(state.database, secure_delete=True)
            if store is None
            else await Database.open_shared(store, local=state.database)
        )
        return cls(db, clock=clock, config=config, sealer=SecretSealer(state.keys / "approvers.key"), key=key)

    def _approval(self, row: sqlite3.Row) -> Approval:
        return _row_to_approval(row, self._key)

    async def close(self) -> None:
        await self._db.close()

    def wake_mark(self) -> int:
        """Take before reading an approval a waiter naps on; pass to `nap` (a shared store's wake-ups)."""
        return self._db.wake_mark()

    async def nap(
        self, approval_id: str, delay: float, sleep: Callable[[float], Awaitable[None]], since: int = 0
    ) -> bool:
        """Wait `delay` before looking at `approval_id` again; on a shared store, less once it was decided
        after `since` (`wake_mark()`). True: the nap was cut short."""
        return await self._db.nap(approval_id, delay, sleep, since)

    # -- creating and reading ----------------------------------------------------------------------

    async def create(
        self, bundle: ActionBundle, decision: Decision, *, tool: str, redacted: Mapping[str, Any] | None = None
    ) -> Approval:
        """Persist a PENDING approval for exactly this bundle's payload.

        `redacted`: the arguments as the audit log keeps them; they replace the clear ones once the
        approval is finished."""
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
            authenticated=decision.authenticated,
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
            "authenticated": int(decision.authenticated),
            "created": approval.created,
            "deadline": approval.deadline,
            "state": approval.state.value,
            "redacted_arguments": None if redacted is None or redacted == bundle.arguments else json.dumps(redacted),
        }
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        await self._db.write(lambda conn: conn.execute(f"INSERT INTO approvals ({columns}) VALUES ({marks})", row))  # noqa: S608
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        if not valid_id(approval_id, "apr"):
            return None
        row = await self._db.read(lambda conn: _fetch(conn, approval_id))
        return None if row is None else self._approval(row)

    async def find_reusable(
        self, *, tool: str, payload_hash: str, principal: str, step_up: bool = False
    ) -> Approval | None:
        """An APPROVED, unconsumed, unexpired approval of exactly this payload by this principal, if any.

        For clients that cannot be asked in-band: the retry of the identical call finds the approval
        granted out of band; the caller must still `consume` it, which is what makes it single-use.
        With `step_up` (the call needs it now), only a step-up approval given with a TOTP code
        qualifies. One whose record verifies is preferred; failing that, one that does not is
        returned (`verified` False) for the caller to refuse, on record.
        """
        now = self.clock.now()
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM approvals WHERE tool = ? AND payload_hash = ? AND principal = ? AND state = ? "
                "AND consumed = 0 AND deadline > ? ORDER BY decided_at, id",
                (tool, payload_hash, principal, ApprovalState.APPROVED.value, now),
            ).fetchall()
        )
        unverified: Approval | None = None
        for row in rows:
            approval = self._approval(row)
            if not approval.verified:
                unverified = unverified or approval
            elif not step_up or (approval.step_up and approval.factor in STEP_UP_FACTORS):
                return approval
        return unverified

    async def decision_on_record(self, approval: Approval, audit_key: bytes | None) -> str | None:
        """None when the audit log holds an intact `operator.decided` event approving this approval by
        its approver, and no sign that the call which waited for it already ran it; else what is wrong.

        Read from the original call's story (indexed by request id): the waiting call's own
        `approval.decided` there means it spent the approval, so a row claiming it unspent was put back.
        """
        missing = (
            f"the decision on approval `{approval.id}` is not in the audit log; call the tool again once "
            "it is recorded, or ask an approver again"
        )
        if audit_key is None:
            return missing

        def work(conn: sqlite3.Connection) -> str | None:
            found: str | None = missing
            try:
                for event in story(conn, approval.request_id):
                    data = event.data
                    if (
                        event.type not in (*OUT_OF_BAND_DECIDED, WAITED_DECIDED)
                        or data.get("approval_id") != approval.id
                        or data.get("state") != ApprovalState.APPROVED.value
                        or not event_intact(conn, event, audit_key)
                    ):
                        continue
                    if event.type == WAITED_DECIDED:
                        return (
                            f"approval `{approval.id}` was already used by the call that waited for it "
                            "(its row was put back)"
                        )
                    if (
                        data.get("approver") == approval.approver
                        and data.get("payload_hash", approval.payload_hash) == approval.payload_hash
                    ):
                        found = None
            except sqlite3.Error:  # no audit tables in this database: nothing is on record
                return missing
            return found

        return await self._db.read_local(work)

    async def list(self, *, states: Sequence[ApprovalState] | None = None) -> builtins.list[Approval]:
        wanted = [s.value for s in (states if states is not None else ApprovalState)]
        marks = ", ".join("?" for _ in wanted)
        rows = await self._db.read(
            lambda conn: conn.execute(
                f"SELECT * FROM approvals WHERE state IN ({marks}) ORDER BY created, id",  # noqa: S608
                wanted,
            ).fetchall()
        )
        return [self._approval(r) for r in rows]

    async def pending_counts(self) -> dict[str, int]:
        """How many approvals wait for a decision, by owner group: counted in the database, no row read
        (`/metrics` asks at every scrape, however many approvals an agent has left waiting)."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT owner, count(*) FROM approvals WHERE state = ? GROUP BY owner", (ApprovalState.PENDING.value,)
            ).fetchall()
        )
        return {str(owner): int(n) for owner, n in rows}

    # -- transitions ---------------------------------------------------------------------------------

    async def decide(
        self,
        approval_id: str,
        *,
        approve: bool,
        approver: str,
        reason: str | None = None,
        totp_code: str | None = None,
        channel: Channel = Channel.CLI,
        verified: VerifiedFactor | None = None,
    ) -> Approval:
        """Approve or deny a PENDING approval, exactly once, and write the decision's record.

        Every channel decides here (`channel` says which; with `totp_code` the factor is `totp`).
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
        in_band = channel is Channel.IN_BAND

        def work(conn: sqlite3.Connection) -> _Outcome:
            row = _fetch(conn, approval_id)
            if row is None:
                return _Outcome(None, str(unknown_approval(approval_id)))
            if row["state"] != ApprovalState.PENDING.value:
                return _Outcome(
                    self._approval(row),
                    f"approval `{approval_id}` is already {row['state']}; a decision cannot be changed",
                )
            if now >= row["deadline"]:
                _expire_one(conn, approval_id, now)
                return _Outcome(
                    self._approval(_fetch(conn, approval_id) or row),
                    f"approval `{approval_id}` expired; the call was denied, and the agent must ask again",
                )
            if approve and approver == row["principal"]:
                # Four eyes: whoever asked for the call cannot be the one who lets it run.
                return _Outcome(
                    None,
                    f"approval `{approval_id}` was requested by `{approver}`, who cannot approve "
                    "their own call; ask another approver",
                )
            if approve:
                edited = _stored_as_approved(row)
                if edited is not None:
                    return _Outcome(None, edited)
            if approve and in_band and row["authenticated"]:
                return _Outcome(
                    None,
                    f"approval `{approval_id}` needs a signed-in approver (`approval: authenticated`) and cannot "
                    f"be approved from the agent's client; decide it in the console or with "
                    f"`guard-mcp approvals approve {approval_id}`",
                    "authenticated_approval_required",
                )
            if approve and row["step_up"]:
                if in_band:
                    return _Outcome(
                        None,
                        f"approval `{approval_id}` needs step-up and cannot be approved from the agent's client; "
                        f"run `guard-mcp approvals approve {approval_id} --as NAME --code CODE`",
                        "step_up_required",
                    )
                if totp_code is None and (verified is None or verified.factor != PASSKEY):
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
                error = (
                    f"approver `{approver}` is not the signed-in approver"
                    if verified.approver != approver
                    else check_member(conn, name=approver, groups=[row["owner"], row["escalated_from"]])
                )
                if error is not None:
                    return _Outcome(None, error)
            state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
            if totp_code is not None:
                factor = TOTP
            elif verified is not None:  # the console: a passkey assertion, or only the signed-in session
                factor = PASSKEY if verified.factor == PASSKEY else Channel.CONSOLE.value
            else:
                factor = channel.value
            decided = {**dict(row), "state": state.value, "approver": approver, "factor": factor, "decided_at": now}
            changed = conn.execute(
                "UPDATE approvals SET state = ?, approver = ?, reason = ?, decided_at = ?, factor = ?, "
                "decision_mac = ? WHERE id = ? AND state = ?",
                (
                    state.value,
                    approver,
                    reason,
                    now,
                    factor,
                    self._key.approval(decided),
                    approval_id,
                    ApprovalState.PENDING.value,
                ),
            ).rowcount
            _clear_finished(conn, [approval_id], now)
            after = _fetch(conn, approval_id)
            if changed != 1 or after is None:
                return _Outcome(None, f"approval `{approval_id}` was decided by someone else first")
            return _Outcome(self._approval(after))

        outcome = await self._db.write(work)
        if outcome.reason is not None:
            raise InBandRefused(outcome.reason, outcome.error or "")
        if outcome.error is not None or outcome.approval is None:
            raise ApprovalError(outcome.error or str(unknown_approval(approval_id)))
        return outcome.approval

    async def consume(
        self, approval_id: str, *, payload_hash: str, step_up: bool = False, authenticated: bool = False
    ) -> bool:
        """Spend an APPROVED approval for exactly `payload_hash`; True once, False ever after.

        The decision's record must verify and, when the call needs step-up (`step_up`, the caller's
        own judgement, not the row's), name a TOTP code; when it needs a signed-in approver
        (`authenticated`, likewise), not have been given in-band; otherwise the approval is cancelled
        and `ApprovalUnverified` raised.
        """
        if not valid_id(approval_id, "apr"):
            return False
        now = self.clock.now()

        def work(conn: sqlite3.Connection) -> tuple[bool, str | None]:
            row = _fetch(conn, approval_id)
            if (
                row is None
                or row["state"] != ApprovalState.APPROVED.value
                or row["consumed"]
                or row["payload_hash"] != payload_hash
                or row["deadline"] <= now
            ):
                return False, None
            problem = self._key.approval_problem(row)
            if problem is None and step_up and (not row["step_up"] or row["factor"] not in STEP_UP_FACTORS):
                problem = "it was approved without the TOTP code or passkey this call needs"
            if problem is None and authenticated and row["factor"] == Channel.IN_BAND.value:
                problem = "it was approved in the agent's own client, and this call needs a signed-in approver"
            if problem is not None:
                conn.execute(
                    "UPDATE approvals SET state = ?, reason = ? WHERE id = ? AND state = ? AND consumed = 0",
                    (
                        ApprovalState.CANCELLED.value,
                        ApprovalUnverified.reason,
                        approval_id,
                        ApprovalState.APPROVED.value,
                    ),
                )
                _clear_finished(conn, [approval_id], now)
                return False, problem
            changed = conn.execute(
                "UPDATE approvals SET consumed = 1, consumed_at = ? WHERE id = ? AND consumed = 0",
                (now, approval_id),
            ).rowcount
            _clear_finished(conn, [approval_id], now)
            return changed == 1, None

        spent, problem = await self._db.write(work)
        if problem is not None:
            raise ApprovalUnverified(
                approval_id,
                f"approval `{approval_id}` does not verify: {problem}; it was cancelled, and the call needs a "
                "new approval",
            )
        return spent

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
            _clear_finished(conn, [approval_id], now)
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
        return None if row is None else self._approval(row)

    async def expire_due(self) -> builtins.list[Approval]:
        """Mark every overdue PENDING approval EXPIRED; each is returned by exactly one caller, to audit.

        Approved approvals nobody ran before their deadline have their arguments cleared too."""
        now = self.clock.now()

        def work(conn: sqlite3.Connection) -> builtins.list[sqlite3.Row]:
            expired = conn.execute(
                "UPDATE approvals SET state = ?, decided_at = ? WHERE state = ? AND deadline <= ? RETURNING *",
                (ApprovalState.EXPIRED.value, now, ApprovalState.PENDING.value, now),
            ).fetchall()
            overdue = conn.execute(  # the ones just expired, and approved ones nobody ran in time
                "SELECT id FROM approvals WHERE redacted_arguments IS NOT NULL AND deadline <= ?", (now,)
            ).fetchall()
            _clear_finished(conn, [r["id"] for r in overdue], now)
            return expired

        rows = await self._db.write(work)
        return sorted((self._approval(r) for r in rows), key=lambda a: (a.created, a.id))

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
        return sorted((self._approval(r) for r in rows), key=lambda a: (a.created, a.id))


def needs_step_up(bundle: ActionBundle, decision: Decision) -> bool:
    """HIGH risk needs a named second factor whatever the rule says."""
    return decision.step_up or (bundle.risk is not None and bundle.risk.tier is Tier.HIGH)


def _expire_one(conn: sqlite3.Connection, approval_id: str, now: float) -> None:
    conn.execute(
        "UPDATE approvals SET state = ?, decided_at = ? WHERE id = ? AND state = ? AND deadline <= ?",
        (ApprovalState.EXPIRED.value, now, approval_id, ApprovalState.PENDING.value, now),
    )
    _clear_finished(conn, [approval_id], now)


def _clear_finished(conn: sqlite3.Connection, approval_ids: Iterable[str], now: float) -> None:
    """Replace the clear arguments of each finished approval (it can no longer be decided or run) by
    their redacted form; pending and runnable ones keep theirs."""
    for approval_id in approval_ids:
        row = conn.execute(
            "SELECT bundle, redacted_arguments FROM approvals WHERE id = ? AND redacted_arguments IS NOT NULL "
            "AND (state NOT IN (?, ?) OR consumed = 1 OR deadline <= ?)",
            (approval_id, ApprovalState.PENDING.value, ApprovalState.APPROVED.value, now),
        ).fetchone()
        if row is None:
            continue
        try:
            bundle = ActionBundle.model_validate_json(row["bundle"])
            redacted = json.loads(row["redacted_arguments"])
            cleared = bundle.model_copy(update={"arguments": redacted}).model_dump_json()
        except (ValidationError, ValueError):
            cleared = "{}"  # damaged either way: keep nothing rather than the secrets
        conn.execute("UPDATE approvals SET bundle = ?, redacted_arguments = NULL WHERE id = ?", (cleared, approval_id))
