"""Usage limits: how many calls of a tool, or how much of one argument, the guard permits in a rolling window.

The policy judges each call alone, so a loop of calls that each pass (a hundred €99 refunds under a
€100 auto-allow rule, five hundred emails) needs a limit across calls. After the policy allows a call
or asks for approval, and before anyone is asked or a permit is minted, `LimitStage.reserve` checks
every limit of the tool and records the call's usage in ONE unit of work on `limit_usage` (guard_mcp/_store),
holding the tool's lock: two calls racing at the edge, in one guard, in two guards on one state
directory (SQLite's write lock) or in guards on several hosts sharing `guard.store` (a PostgreSQL
advisory lock), cannot both pass. One count for the whole fleet.

A reservation is released (its rows deleted) when the call is refused after it (approval denied,
expired or still pending, the permit or its audit record failed): a refused call does not use up the
budget. A call handed to the upstream keeps its usage even when the upstream then fails or the client
cancels: the upstream may have acted.

Tools without limits never reach the database: the stage is opened only when some tool has limits,
and `covers` is a dict lookup.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio

from guard_mcp._clock import Clock
from guard_mcp._config import GuardConfig, LimitConfig
from guard_mcp._errors import StateError
from guard_mcp._naming import SEPARATOR
from guard_mcp._state import StateDir
from guard_mcp._store import Backend, Migration, Tx, open_backend

if TYPE_CHECKING:  # the catalog (and the MCP types) is the pipeline's; `guard-mcp limits` reads usage without it
    from guard_mcp._catalog import CatalogEntry
    from guard_mcp._models import ActionBundle

__all__ = [
    "LimitDenial",
    "LimitStage",
    "Reservation",
    "Usage",
    "UsageStore",
    "cap_of",
    "configured_limits",
    "limit_key",
    "number_text",
    "open_limit_stage",
    "window_text",
]

log = logging.getLogger("guard_mcp.limits")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS limit_usage (
    tool       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    measure    TEXT NOT NULL,
    amount     {real} NOT NULL,
    ts         {real} NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS limit_usage_by_tool ON limit_usage (tool, measure, ts);
CREATE INDEX IF NOT EXISTS limit_usage_by_request ON limit_usage (request_id);
CREATE INDEX IF NOT EXISTS limit_usage_by_ts ON limit_usage (ts);
CREATE TABLE IF NOT EXISTS limit_horizon (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    seconds {real} NOT NULL
)
"""
# `IF NOT EXISTS`: a state directory from before schema versions already holds these tables. PostgreSQL's
# REAL is 4 bytes: amounts and times there are DOUBLE PRECISION, SQLite's REAL.
MIGRATIONS = (Migration(1, _SCHEMA.format(real="REAL"), _SCHEMA.format(real="DOUBLE PRECISION")),)
# A window's float total (SQLite's `total` is never NULL; PostgreSQL's `sum` of no rows is).
_TOTAL = {"sqlite": "total(amount)", "postgresql": "coalesce(sum(amount), 0)"}
_UPSERT_HORIZON = "INSERT INTO limit_horizon VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET seconds = "
_RECORD_HORIZON = {
    "sqlite": _UPSERT_HORIZON + "max(limit_horizon.seconds, excluded.seconds)",
    "postgresql": _UPSERT_HORIZON + "greatest(limit_horizon.seconds, excluded.seconds)",
}
CALLS = ""  # the `measure` of the row that counts the call itself (amount 1); a `sum` limit's is its argument
# A float total of the window this close (relatively) to the room left is re-added exactly.
_EDGE = Decimal("1e-9")
PRUNE_MARGIN = 3600.0  # rows are kept this long past the longest window (clock skew between guards)
PRUNE_EVERY = 60.0


def limit_key(upstream: str, tool: str) -> str:
    """The tool as the operator named it in upstreams.yaml (upstream names never hold `__`)."""
    return f"{upstream}{SEPARATOR}{tool}"


def configured_limits(config: GuardConfig) -> dict[tuple[str, str], tuple[LimitConfig, ...]]:
    """(upstream, tool) -> its limits, for the tools that have any."""
    return {
        (up_name, tool): tuple(cfg.limits)
        for up_name, up in config.upstreams.items()
        for tool, cfg in up.tools.items()
        if cfg.limits
    }


def window_text(seconds: float) -> str:
    """`1h`, `24h` (days only from two on: a day's limit reads as `24h` in most configs), `7d`, `90s`."""
    for unit, suffix in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= max(unit, 2 * 86400 if suffix == "d" else 0) and seconds % unit == 0:
            return f"{int(seconds // unit)}{suffix}"
    return f"{seconds:g}s"


def _wait_text(seconds: float) -> str:
    s = max(1, math.ceil(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{math.ceil(s / 60)}m"
    return f"{s}s"


def number_text(value: Decimal) -> str:
    return f"{value.normalize():,f}"


def _decimal(value: float) -> Decimal:
    # Through repr: 0.1 + 0.1 + 0.1 is 0.3, as the person who typed the amounts meant it.
    try:
        return Decimal(repr(float(value)))
    except (TypeError, ValueError):  # a row edited by hand: fail closed, and say where
        raise StateError(
            "usage limits in the database hold an amount that is not a number; restore guard.db from backup"
        ) from None


def cap_of(limit: LimitConfig) -> Decimal:
    """The most a limit lets through in its window: a number of calls, or the `max` of its sum."""
    return Decimal(limit.calls) if limit.calls is not None else _decimal(limit.max or 0.0)


def measure(arguments: Mapping[str, Any], name: str) -> Decimal | str:
    """The value a `sum` limit adds up, or why it cannot be counted."""
    if name not in arguments:
        return "is missing"
    value = arguments[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "is not a number"
    try:
        as_float = float(value)
    except OverflowError:
        return "is too large to count"
    if not math.isfinite(as_float):
        return "is not a finite number"
    if as_float < 0:
        return "is negative"
    return Decimal(value) if isinstance(value, int) else _decimal(as_float)


@dataclass(frozen=True)
class Exceeded:
    limit: LimitConfig
    used: Decimal
    asked: Decimal
    retry_after: float | None  # seconds until the call would fit, None when it never will


@dataclass(frozen=True)
class Usage:
    actor: str  # `*` for a limit counted over everyone (`per: all`)
    used: Decimal


class UsageStore:
    def __init__(self, db: Backend, clock: Clock, *, horizon: float = 0.0) -> None:
        """`horizon`: the longest window any limit uses; rows older than the longest of every guard's on this
        database (plus a margin) are pruned."""
        self._db = db
        self.clock = clock
        self._horizon = horizon
        self._pruned = -math.inf

    @classmethod
    async def open(cls, state: StateDir, clock: Clock, *, horizon: float = 0.0, store: str | None = None) -> UsageStore:
        """`store`: `guard.store` (None: guard.db in the state directory)."""
        if store is None:
            state.ensure()
        # On SQLite no fsync of its own: a reservation shares guard.db's WAL with the audit log, and the
        # permit's fsynced audit commit, which comes before any upstream is called, makes it durable too (an
        # fsync covers every frame written to the file before it). A reservation lost to a power cut before
        # that commit belonged to a call that was never forwarded. On PostgreSQL no later commit covers it.
        db = await open_backend(
            store,
            sqlite_path=state.database,
            store="limits",
            label="usage limits",
            migrations=MIGRATIONS,
            durable=store is not None,
        )
        if horizon > 0:
            # Every guard on this database records its longest window; each prunes only past the longest
            # any of them uses, so a guard with shorter windows never deletes rows another one still counts.
            async def record(tx: Tx) -> None:
                await tx.execute(_RECORD_HORIZON[tx.dialect], (horizon,))

            try:
                await db.run(record)
            except BaseException:
                await db.close()
                raise
        return cls(db, clock, horizon=horizon)

    async def close(self) -> None:
        await self._db.close()

    async def reserve(
        self, key: str, actor: str, request_id: str, limits: Sequence[LimitConfig], amounts: Mapping[str, Decimal]
    ) -> Exceeded | None:
        """Check every limit and, when all hold, record the call: one transaction, so nothing slips between."""
        now = self.clock.now()
        prune = self._horizon > 0 and now - self._pruned >= PRUNE_EVERY
        if prune:
            self._pruned = now

        async def work(tx: Tx) -> Exceeded | None:
            # Every limit of a tool counts only that tool's rows: its lock orders the calls that could race.
            await tx.lock(f"limit_usage:{key}")
            for limit in limits:
                asked = Decimal(1) if limit.sum is None else amounts[limit.sum]
                cap = cap_of(limit)
                used = await _used(tx, key, actor, limit, now, cap - asked)
                if used + asked > cap:
                    rows = await _window(tx, key, actor, limit, now)
                    return Exceeded(
                        limit, used, asked, _retry_after(rows, used + asked - cap, asked > cap, limit.window, now)
                    )
            measures = {CALLS: Decimal(1), **{m: amounts[m] for m in {lim.sum for lim in limits if lim.sum}}}
            await tx.executemany(
                "INSERT INTO limit_usage (tool, actor, measure, amount, ts, request_id) VALUES (?, ?, ?, ?, ?, ?)",
                [(key, actor, m, float(amount), now, request_id) for m, amount in measures.items()],
            )
            if prune:
                await tx.execute(
                    "DELETE FROM limit_usage WHERE ts < ? - coalesce((SELECT seconds FROM limit_horizon), ?)",
                    (now - PRUNE_MARGIN, self._horizon),
                )
            return None

        return await self._db.run(work)

    async def release(self, request_id: str) -> None:
        async def work(tx: Tx) -> None:
            await tx.execute("DELETE FROM limit_usage WHERE request_id = ?", (request_id,))

        await self._db.run(work)

    async def usage(self, key: str, limit: LimitConfig) -> list[Usage]:
        """What each actor (or everyone, for `per: all`) has used of `limit` in its window now."""
        since = self.clock.now() - limit.window
        measure_name = CALLS if limit.sum is None else limit.sum

        async def work(tx: Tx) -> list[tuple[Any, ...]]:
            return (
                await tx.execute(
                    "SELECT actor, amount FROM limit_usage WHERE tool = ? AND measure = ? AND ts > ? ORDER BY actor",
                    (key, measure_name, since),
                )
            ).rows

        totals: dict[str, Decimal] = {}
        for actor, amount in await self._db.run(work, write=False):
            who = "*" if limit.per == "all" else str(actor)
            totals[who] = totals.get(who, Decimal(0)) + _decimal(amount)
        return [Usage(actor, used) for actor, used in totals.items()]


def _where(key: str, actor: str, limit: LimitConfig, now: float) -> tuple[str, list[Any]]:
    sql = "FROM limit_usage WHERE tool = ? AND measure = ? AND ts > ?"
    params: list[Any] = [key, CALLS if limit.sum is None else limit.sum, now - limit.window]
    if limit.per == "actor":
        sql += " AND actor = ?"
        params.append(actor)
    return sql, params


async def _used(tx: Tx, key: str, actor: str, limit: LimitConfig, now: float, room: Decimal) -> Decimal:
    """What `limit` has used now: the database adds it up (whatever the window holds); only when that
    float total is too close to `room` to call is it summed again exactly, row by row."""
    sql, params = _where(key, actor, limit, now)
    count, total = (await tx.execute(f"SELECT count(*), {_TOTAL[tx.dialect]} {sql}", params)).rows[0]
    if limit.sum is None:
        return Decimal(count)
    if abs(Decimal(repr(float(total))) - room) > _EDGE * max(Decimal(1), abs(room)):
        return Decimal(repr(float(total)))
    return sum((_decimal(amount) for _, amount in await _window(tx, key, actor, limit, now)), Decimal(0))


async def _window(tx: Tx, key: str, actor: str, limit: LimitConfig, now: float) -> list[tuple[float, float]]:
    """The rows `limit` counts now, oldest first (rows stamped in the future by a skewed clock count too)."""
    sql, params = _where(key, actor, limit, now)
    return [(r[0], r[1]) for r in (await tx.execute(f"SELECT ts, amount {sql} ORDER BY ts", params)).rows]


def _retry_after(
    rows: Sequence[tuple[float, float]], excess: Decimal, never: bool, window: float, now: float
) -> float | None:
    if never:
        return None
    freed = Decimal(0)
    for ts, amount in rows:
        freed += _decimal(amount)
        if freed >= excess:
            return max(0.0, ts + window - now)
    return None


@dataclass(frozen=True)
class Reservation:
    request_id: str


@dataclass(frozen=True)
class LimitDenial:
    reason: str
    message: str
    data: dict[str, Any]  # for the audit event
    argument: str | None = None  # the argument whose values `used` and `asked` are (a `sum` limit)
    retry_after: float | None = None


def _limit_data(limit: LimitConfig) -> dict[str, Any]:
    data: dict[str, Any] = {"window": window_text(limit.window), "per": limit.per}
    if limit.calls is not None:
        data["calls"] = limit.calls
    else:
        data.update(sum=limit.sum, max=limit.max)
    return data


_NEXT = "ask an operator to raise `limits` for this tool in upstreams.yaml"


def _exceeded(name: str, hit: Exceeded) -> LimitDenial:
    limit, window = hit.limit, window_text(hit.limit.window)
    whose = " (all principals together)" if limit.per == "all" else ""
    cap = number_text(cap_of(limit))
    if hit.retry_after is None:
        what = "call" if limit.sum is None else f"`{limit.sum}` of {number_text(hit.asked)}"
        message = f"`{name}`: this {what} alone is more than the limit of {cap} in any {window}; {_NEXT}"
    else:
        if limit.sum is None:
            used = f"{number_text(hit.used)} calls already permitted{whose} in the last {window}"
        else:
            used = (
                f"{number_text(hit.used)} of `{limit.sum}` already permitted{whose} in the last {window} "
                f"and this call asks {number_text(hit.asked)}"
            )
        message = (
            f"`{name}`: {used} (limit {cap}); wait {_wait_text(hit.retry_after)} for older calls to leave "
            f"the window, or {_NEXT}"
        )
    data = {
        "reason": "limit_exceeded",
        "limit": _limit_data(limit),
        "window_s": limit.window,
        "used": float(hit.used),
        "asked": float(hit.asked),
    }
    return LimitDenial("limit_exceeded", message, data, limit.sum, hit.retry_after)


class LimitStage:
    """Between the decision and the approval: reserve the call's usage, or deny it `limit_exceeded`."""

    def __init__(self, config: GuardConfig, store: UsageStore) -> None:
        self._limits = configured_limits(config)
        self.store = store

    def covers(self, entry: CatalogEntry) -> bool:
        return (entry.upstream, entry.original) in self._limits

    async def reserve(self, entry: CatalogEntry, bundle: ActionBundle) -> Reservation | LimitDenial:
        limits = self._limits[(entry.upstream, entry.original)]
        amounts: dict[str, Decimal] = {}
        for limit in limits:
            if limit.sum is None or limit.sum in amounts:
                continue
            value = measure(bundle.arguments, limit.sum)
            if isinstance(value, str):  # fail closed: what cannot be counted cannot be let through
                message = (
                    f"`{entry.name}`: `{limit.sum}` {value}, so the limit on it cannot be counted; pass "
                    f"`{limit.sum}` as a number of zero or more"
                )
                return LimitDenial(
                    "limit_unmeasurable",
                    message,
                    {
                        "reason": "limit_unmeasurable",
                        "limit": _limit_data(limit),
                        "problem": value,
                    },
                    limit.sum,
                )
            amounts[limit.sum] = value
        key = limit_key(entry.upstream, entry.original)
        try:
            hit = await self.store.reserve(key, bundle.actor.principal, bundle.request_id, limits, amounts)
        except StateError as exc:
            log.error("usage limits of %s could not be checked: %s", entry.name, exc)
            return LimitDenial(
                "limit_unavailable",
                f"`{entry.name}`: its usage limits could not be checked; "
                "the guard's operator should check the state directory",
                {"reason": "limit_unavailable", "error": str(exc)},
            )
        if hit is not None:
            return _exceeded(entry.name, hit)
        return Reservation(bundle.request_id)

    async def release(self, reservation: Reservation) -> None:
        """Give a refused call's usage back. Never raises: a usage row left behind only makes the limit stricter."""
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release(reservation.request_id)
            except Exception:
                log.exception(
                    "could not release the usage of %s; it counts until it leaves its window", reservation.request_id
                )

    async def close(self) -> None:
        await self.store.close()


async def open_limit_stage(config: GuardConfig, state: StateDir, clock: Clock) -> LimitStage | None:
    """The stage, or None when no tool has limits (then no call pays for one)."""
    limits = configured_limits(config)
    if not limits:
        return None
    horizon = max(limit.window for group in limits.values() for limit in group)
    return LimitStage(config, await UsageStore.open(state, clock, horizon=horizon, store=config.guard.store))
