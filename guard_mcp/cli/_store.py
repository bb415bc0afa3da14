"""`guard-mcp store check` / `store migrate`: the schema versions of the store `guard.store` names.

    store check      connect, print each store's schema version against the newest this guard-mcp
                     knows; exit 0 when all are current, 1 when one is missing or behind (run
                     `store migrate`), 2 when the store cannot be reached or is newer than this guard-mcp
    store migrate    apply the missing steps, each store in one transaction under its lock; running it
                     again (or on two hosts at once) applies nothing twice
    store copy       copy the state directory's approvals, approvers, grants, usage, request-state
                     single use and upstream tokens into `guard.store` (a new PostgreSQL database),
                     in one transaction; the audit log stays in the state directory

Every guard instance also migrates what it opens when it starts; `migrate` is for doing it ahead of a
rollout, and `check` for seeing where a database stands. On SQLite the approvals' tables are made at
start without a version, so only the versioned stores are listed there.
"""

from __future__ import annotations

import importlib
from typing import Any

import anyio
import click

from guard_mcp._store import Backend, Migration, shown
from guard_mcp.cli._common import Env, common_options, fail, print_json

__all__ = ["store"]

# store name -> (module, attribute with its migrations, dialects it is versioned on)
_STORES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "approvals": ("guard_mcp._approvals._db", "PG_MIGRATIONS", ("postgresql",)),
    "limits": ("guard_mcp._limits", "MIGRATIONS", ("sqlite", "postgresql")),
    "request_state": ("guard_mcp._request_state", "MIGRATIONS", ("sqlite", "postgresql")),
    "upstream_tokens": ("guard_mcp._identity._vault", "MIGRATIONS", ("sqlite", "postgresql")),
}
# what `store copy` moves, in an order that keeps each table's references before it
_TABLES = (
    "approvals",
    "approval_approvers",
    "approval_grants",
    "approval_grant_uses",
    "limit_usage",
    "limit_horizon",
    "request_state_used",
    "upstream_tokens",
)


def _migrations(dialect: str) -> dict[str, tuple[Migration, ...]]:
    found: dict[str, tuple[Migration, ...]] = {}
    for name, (module, attribute, dialects) in _STORES.items():
        if dialect in dialects:
            found[name] = tuple(getattr(importlib.import_module(module), attribute))
    return found


def _newest(migrations: tuple[Migration, ...]) -> int:
    return max((m.version for m in migrations), default=0)


@click.group()
@common_options
@click.pass_context
def store(ctx: click.Context, env: Env) -> None:
    """The guard's store (`guard.store`): schema versions and migrations."""
    ctx.obj = env  # `store --config X check`: the group's options count for its sub-commands


async def _open(env: Env) -> tuple[Backend, str]:
    from guard_mcp._store import open_backend

    url = env.config().guard.store
    state = env.state()
    where = str(state.database) if url is None else shown(url)
    # no store's steps: this only makes sure the version table is there to read
    backend = await open_backend(url, sqlite_path=state.database, store="guard_schema", label="guard", migrations=())
    return backend, where


def _rows(found: dict[str, int], wanted: dict[str, tuple[Migration, ...]]) -> list[dict[str, Any]]:
    rows = []
    for name, migrations in wanted.items():
        have, newest = found.get(name, 0), _newest(migrations)
        status = "missing" if have == 0 else "current" if have == newest else "behind" if have < newest else "newer"
        rows.append({"store": name, "version": have, "newest": newest, "status": status})
    return rows


def _print(env: Env, where: str, dialect: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    if env.as_json:
        print_json({"store": where, "dialect": dialect, "stores": rows, **extra})
        return
    env.console.print(f"store `{where}` ({dialect})", highlight=False)
    for r in rows:
        env.console.print(f"  {r['store']:<16} version {r['version']} of {r['newest']}  {r['status']}", highlight=False)


@store.command()
@common_options
def check(env: Env) -> None:
    """Connect to the store and report each store's schema version and what is missing."""

    async def main() -> tuple[str, str, list[dict[str, Any]]]:
        backend, where = await _open(env)
        try:
            return where, backend.dialect, _rows(await backend.versions(), _migrations(backend.dialect))
        finally:
            await backend.close()

    where, dialect, rows = anyio.run(main)  # a store that cannot be reached: one line, exit 2 (common_options)
    _print(env, where, dialect, rows)
    newer = [r["store"] for r in rows if r["status"] == "newer"]
    if newer:
        fail(f"store `{where}` holds {', '.join(newer)} at a version newer than this guard-mcp knows; upgrade it")
    if any(r["status"] != "current" for r in rows):
        if not env.as_json:
            env.console.print("run `guard-mcp store migrate` to bring them up to date", highlight=False)
        raise SystemExit(1)


@store.command()
@common_options
def migrate(env: Env) -> None:
    """Apply every missing schema step to the store; running it again applies nothing."""

    async def main() -> tuple[str, str, list[dict[str, Any]], list[str]]:
        backend, where = await _open(env)
        try:
            wanted = _migrations(backend.dialect)
            before = await backend.versions()
            for name, migrations in wanted.items():
                await backend.migrate(name, migrations)
            after = await backend.versions()
            applied = [name for name in wanted if after.get(name, 0) != before.get(name, 0)]
            return where, backend.dialect, _rows(after, wanted), applied
        finally:
            await backend.close()

    where, dialect, rows, applied = anyio.run(main)
    _print(env, where, dialect, rows, applied=applied)
    if not env.as_json:
        env.console.print(
            f"migrated: {', '.join(applied)}" if applied else "nothing to do: every store is current", highlight=False
        )


@store.command()
@common_options
def copy(env: Env) -> None:
    """Copy the state directory's approvals, limits and tokens into `guard.store` (a new PostgreSQL database)."""
    from guard_mcp._store import copy_tables

    url = env.config().guard.store
    state = env.state()
    if url is None:
        fail("`guard.store` is not set: name the PostgreSQL database to copy into in the config, then run this again")
    if not state.database.exists():
        fail(f"no guard database at `{state.database}`; pass the `--state-dir` to copy from")

    async def main() -> tuple[str, dict[str, int]]:
        backend, where = await _open(env)
        try:
            for name, migrations in _migrations(backend.dialect).items():
                await backend.migrate(name, migrations)
            return where, await copy_tables(state.database, backend, _TABLES)
        finally:
            await backend.close()

    where, counts = anyio.run(main)
    if env.as_json:
        print_json({"store": where, "copied": counts})
        return
    for table, n in counts.items():
        env.console.print(f"  {table:<20} {n} rows", highlight=False)
    env.console.print(f"copied into `{where}`; the audit log stays in `{state.database}`", highlight=False)
