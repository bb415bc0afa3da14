"""Sealed `requestState` for the 2026-07-28 multi-round-trip approval.

The state comes back from the client, so it is attacker-controlled: it is sealed with AES-GCM
under a key only the guard holds, bound to the principal, the tool, the payload hash, the policy
version and the approval, carries a short expiry, and is consumed once: its nonce is claimed in
`request_state_used` through the storage layer (guard_mcp/_store), in the state directory's database
or in `guard.store`'s PostgreSQL, so a replay is refused across a restart and, on PostgreSQL, across
instances. A store that cannot be reached refuses the retry (`store_unavailable`): fail closed.

It also says what the client was asked (`asked`): `form`, whose answer is the decision, or `link`
(the console's page, in URL mode or in a form that asks nothing), whose answer only says the user
agreed to open it. A state without it is taken as `link`: an answer decides only when the guard
said it would.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any

import anyio

from guard_mcp._clock import Clock
from guard_mcp._errors import ApprovalError, StateError
from guard_mcp._sealing import Sealer
from guard_mcp._state import StateDir
from guard_mcp._store import Backend, Migration, Tx, open_backend

__all__ = ["ASKED", "RequestStateError", "RequestStateSealer", "SealedState"]

ASKED = ("form", "link")  # what the client was asked: the form decides; the link only points to the console

_PREFIX = "gm1."
_AAD = b"guard-mcp request state v1"
MAX_STATE = 4096
_SCHEMA = "CREATE TABLE IF NOT EXISTS request_state_used (nonce TEXT PRIMARY KEY, exp {real} NOT NULL)"
MIGRATIONS = (Migration(1, _SCHEMA.format(real="REAL"), _SCHEMA.format(real="DOUBLE PRECISION")),)


class RequestStateError(ApprovalError):
    """The `requestState` a client sent back does not open, or belongs to another call: `reason` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SealedState:
    approval_id: str
    tool: str
    payload_hash: str
    policy: str
    principal: str
    session: str | None
    exp: float
    nonce: str
    asked: str = "link"


class RequestStateSealer:
    def __init__(self, state: StateDir, clock: Clock, ttl: float, *, store: str | None = None) -> None:
        """`store`: `guard.store` (None: guard.db in the state directory), opened at the first retry."""
        self._clock = clock
        self._ttl = ttl
        self._state = state
        self._store = store
        # created exclusively: two guards starting at once must not each seal with a key of their own
        self._sealer = Sealer(
            state.keys / "request-state.key",
            what="the request-state key",
            damaged="delete it; calls paused with it are then asked again",
        )
        self._sealer.load()
        self._db: Backend | None = None
        self._opening = anyio.Lock()

    async def _backend(self) -> Backend:
        async with self._opening:
            if self._db is None:
                self._db = await open_backend(
                    self._store,
                    sqlite_path=self._state.database,
                    store="request_state",
                    label="request state",
                    migrations=MIGRATIONS,
                )
            return self._db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    def seal(
        self,
        *,
        approval_id: str,
        tool: str,
        payload_hash: str,
        policy: str,
        principal: str,
        session: str | None,
        deadline: float,
        asked: str,
    ) -> str:
        if asked not in ASKED:
            raise ValueError(f"asked `{asked}` is not one of {ASKED}")
        body: dict[str, Any] = {
            "a": approval_id,
            "t": tool,
            "h": payload_hash,
            "p": policy,
            "u": principal,
            "s": session,
            "e": min(self._clock.now() + self._ttl, deadline),
            "n": secrets.token_hex(16),
            "k": asked,
        }
        sealed = self._sealer.seal(_AAD, json.dumps(body, separators=(",", ":")).encode())
        return _PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    async def open(
        self, token: Any, *, tool: str, payload_hash: str, policy: str, principal: str, session: str | None
    ) -> SealedState:
        """Unseal, check every binding, and consume. Raises RequestStateError with a reason code."""
        if not isinstance(token, str) or not token.startswith(_PREFIX) or len(token) > MAX_STATE:
            raise RequestStateError("request_state_invalid", "the requestState was not issued by this guard")
        try:
            raw = base64.urlsafe_b64decode(token[len(_PREFIX) :] + "=" * (-len(token) % 4))
            opened = self._sealer.open(_AAD, raw)
            if opened is None:
                raise ValueError("does not open")
            body = json.loads(opened)
            state = SealedState(
                body["a"],
                body["t"],
                body["h"],
                body["p"],
                body["u"],
                body["s"],
                float(body["e"]),
                body["n"],
                "form" if body.get("k") == "form" else "link",
            )
        except (ValueError, KeyError, TypeError, IndexError):
            raise RequestStateError("request_state_invalid", "the requestState was not issued by this guard") from None
        if self._clock.now() > state.exp:
            raise RequestStateError("request_state_expired", "the requestState has expired; call the tool again")
        bound = (state.tool, state.payload_hash, state.policy, state.principal, state.session)
        if bound != (tool, payload_hash, policy, principal, session):
            raise RequestStateError(
                "request_state_mismatch", "the requestState belongs to another call (tool, arguments, policy or caller)"
            )
        now = self._clock.now()

        async def consume(tx: Tx) -> bool:
            await tx.execute("DELETE FROM request_state_used WHERE exp < ?", (now - 60,))
            claim = await tx.execute(
                "INSERT INTO request_state_used (nonce, exp) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING",
                (state.nonce, state.exp),
            )
            return claim.rowcount == 1

        try:
            first_use = await (await self._backend()).run(consume)
        except StateError as exc:
            raise RequestStateError(
                "store_unavailable", f"the requestState could not be checked ({exc}); call the tool again later"
            ) from None
        if not first_use:
            raise RequestStateError("request_state_replayed", "this requestState was already used")
        return state
