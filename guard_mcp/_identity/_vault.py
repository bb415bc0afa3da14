"""The upstream OAuth tokens the guard holds, sealed at rest in the state database.

Each upstream's tokens and client registration are sealed with AES-GCM under a 256-bit key kept in
`keys/upstream-tokens.key` (0600, created once, exclusively), with the upstream's name and the
resource URL as associated data: a copy of the database alone reveals no token, and a row moved
to another upstream (or kept after the upstream's URL changed) does not open. Only the times (when a
token was stored and when it expires) and a login-required note are kept in the clear, so
`guard-mcp check` can tell who needs to log in without opening anything.

The store is the SDK's `TokenStorage` per upstream (`VaultStorage`), so the SDK's OAuth client reads
and writes it; `guard-mcp login` in one terminal and a serving guard in another share it. It sits on
the storage layer (`guard.store`), so guard instances sharing a PostgreSQL database share the logins
too, provided each has the same `keys/upstream-tokens.key`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import ValidationError

from guard_mcp._clock import Clock
from guard_mcp._sealing import Sealer
from guard_mcp._state import StateDir
from guard_mcp._store import Backend, Migration, Tx, open_backend

__all__ = ["LoginState", "TokenVault", "VaultStorage"]

KEY_FILE = "upstream-tokens.key"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS upstream_tokens (
    upstream    TEXT PRIMARY KEY,
    resource    TEXT NOT NULL,
    tokens      {blob},
    client      {blob},
    stored_at   {real},
    expires_at  {real},
    refreshable INTEGER NOT NULL DEFAULT 0,
    login_note  TEXT,
    discovery   TEXT
)
"""
MIGRATIONS = (
    Migration(1, _SCHEMA.format(blob="BLOB", real="REAL"), _SCHEMA.format(blob="BYTEA", real="DOUBLE PRECISION")),
)
_COLUMNS = (
    "upstream",
    "resource",
    "tokens",
    "client",
    "stored_at",
    "expires_at",
    "refreshable",
    "login_note",
    "discovery",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM upstream_tokens WHERE upstream = ?"  # noqa: S608 - our column names


@dataclass(frozen=True)
class LoginState:
    """What `check` shows for an upstream: logged in or not, until when, and why a login is needed."""

    upstream: str
    logged_in: bool
    expires_at: float | None = None
    refreshable: bool = False
    note: str | None = None


def _aad(upstream: str, resource: str, kind: str) -> bytes:
    return f"guard-mcp upstream {kind}:{upstream}:{resource}".encode()


class TokenVault:
    """Every OAuth upstream's sealed tokens, in the guard's store (`guard.store`: the state directory's
    SQLite database, or a PostgreSQL server guard instances share, each with the same key file)."""

    def __init__(self, db: Backend, sealer: Sealer, clock: Clock) -> None:
        self._db = db
        self._sealer = sealer
        self.clock = clock

    @classmethod
    async def open(cls, state: StateDir, clock: Clock, *, store: str | None = None) -> TokenVault:
        db = await open_backend(
            store, sqlite_path=state.database, store="upstream_tokens", label="upstream token", migrations=MIGRATIONS
        )
        sealer = Sealer(
            state.keys / KEY_FILE,
            what="the upstream token key",
            damaged="remove it and log in to each OAuth upstream again with `guard-mcp login UPSTREAM`",
        )
        return cls(db, sealer, clock)

    async def close(self) -> None:
        await self._db.close()

    def storage(self, upstream: str, resource: str) -> VaultStorage:
        return VaultStorage(self, upstream, resource)

    async def _row(self, upstream: str) -> dict[str, Any] | None:
        async def work(tx: Tx) -> dict[str, Any] | None:
            row = (await tx.execute(_SELECT, (upstream,))).one()
            return None if row is None else dict(zip(_COLUMNS, row, strict=True))

        return await self._db.run(work, write=False)

    async def _open(self, upstream: str, resource: str, kind: str) -> bytes | None:
        row = await self._row(upstream)
        if row is None or row["resource"] != resource or row[kind] is None:
            return None  # another URL's tokens are another resource's: never presented here
        return self._sealer.open(_aad(upstream, resource, kind), bytes(row[kind]))

    async def _put(self, upstream: str, resource: str, kind: str, data: bytes | None, **clear: object) -> None:
        sealed = None if data is None else self._sealer.seal(_aad(upstream, resource, kind), data)
        sets = ", ".join(f"{k} = ?" for k in (kind, *clear))

        async def work(tx: Tx) -> None:
            await tx.lock(f"upstream_tokens:{upstream}")
            row = (await tx.execute("SELECT resource FROM upstream_tokens WHERE upstream = ?", (upstream,))).one()
            if row is not None and row[0] != resource:  # the URL changed: what it held is void
                await tx.execute("DELETE FROM upstream_tokens WHERE upstream = ?", (upstream,))
                row = None
            if row is None:
                await tx.execute("INSERT INTO upstream_tokens (upstream, resource) VALUES (?, ?)", (upstream, resource))
            await tx.execute(
                f"UPDATE upstream_tokens SET {sets} WHERE upstream = ?",  # noqa: S608 - our column names
                (sealed, *clear.values(), upstream),
            )

        await self._db.run(work)

    async def forget(self, upstream: str, *, client: bool = False) -> None:
        """Drop an upstream's tokens (and its client registration with `client`)."""

        async def work(tx: Tx) -> None:
            if client:
                await tx.execute("DELETE FROM upstream_tokens WHERE upstream = ?", (upstream,))
            else:
                await tx.execute(
                    "UPDATE upstream_tokens SET tokens = NULL, stored_at = NULL, expires_at = NULL, "
                    "refreshable = 0, login_note = NULL, discovery = NULL WHERE upstream = ?",
                    (upstream,),
                )

        await self._db.run(work)

    async def _set(self, upstream: str, column: str, value: str) -> None:
        async def work(tx: Tx) -> None:
            await tx.execute(
                f"UPDATE upstream_tokens SET {column} = ? WHERE upstream = ?",  # noqa: S608 - ours
                (value, upstream),
            )

        await self._db.run(work)

    async def save_discovery(self, upstream: str, document: str) -> None:
        """What the login discovered (the resource's and the authorization server's metadata), so a
        restarted guard refreshes at the right token endpoint, bound to the right resource."""
        await self._set(upstream, "discovery", document)

    async def discovery(self, upstream: str, resource: str) -> str | None:
        row = await self._row(upstream)
        return None if row is None or row["resource"] != resource else row["discovery"]

    async def note_login_required(self, upstream: str, note: str) -> None:
        await self._set(upstream, "login_note", note)

    async def state(self, upstream: str, resource: str) -> LoginState:
        row = await self._row(upstream)
        if row is None or row["resource"] != resource or row["tokens"] is None:
            return LoginState(
                upstream,
                False,
                note="never logged in" if row is None or row["login_note"] is None else row["login_note"],
            )
        return LoginState(
            upstream,
            row["login_note"] is None,
            expires_at=row["expires_at"],
            refreshable=bool(row["refreshable"]),
            note=row["login_note"],
        )


class VaultStorage:
    """The SDK's `TokenStorage` for one upstream, backed by the vault; it also remembers the absolute
    expiry of the token it last saw (by the guard's clock), which the OAuth client refreshes ahead of."""

    def __init__(self, vault: TokenVault, upstream: str, resource: str) -> None:
        self.vault = vault
        self.upstream = upstream
        self.resource = resource
        self.tokens: OAuthToken | None = None
        self.stored_at: float | None = None
        self.expires_at: float | None = None

    async def get_tokens(self) -> OAuthToken | None:
        data = await self.vault._open(self.upstream, self.resource, "tokens")
        row = await self.vault._row(self.upstream)
        if data is None or row is None or row["login_note"] is not None:
            self.tokens = None  # a token the provider refused once is not offered again; log in anew
            return None
        try:
            self.tokens = OAuthToken.model_validate_json(data)
        except ValidationError:
            return None
        self.stored_at, self.expires_at = row["stored_at"], row["expires_at"]
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        now = self.vault.clock.now()
        expires_at = None if tokens.expires_in is None else now + tokens.expires_in
        await self.vault._put(
            self.upstream,
            self.resource,
            "tokens",
            tokens.model_dump_json().encode(),
            stored_at=now,
            expires_at=expires_at,
            refreshable=int(bool(tokens.refresh_token)),
            login_note=None,
        )
        self.tokens, self.stored_at, self.expires_at = tokens, now, expires_at

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        data = await self.vault._open(self.upstream, self.resource, "client")
        if data is None:
            return None
        try:
            return OAuthClientInformationFull.model_validate_json(data)
        except ValidationError:
            return None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        await self.vault._put(self.upstream, self.resource, "client", client_info.model_dump_json().encode())

    def secrets(self) -> set[str]:
        """The token values in hand, to be cut out of anything the upstream says."""
        if self.tokens is None:
            return set()
        return {t for t in (self.tokens.access_token, self.tokens.refresh_token) if t}
