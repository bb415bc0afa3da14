"""`guard-mcp sessions`: the client sessions a guard has served, read from its audit log.

A session is one client connection (`ses_…`): the id `approvals grant` takes. Each row says who the
calls were attributed to (the principal) and what the client called itself, so the id need not be
dug out of `audit tail --json`.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import click

from guard_mcp.cli._common import Env, common_options, print_json, print_table

__all__ = ["sessions"]

_QUERY = """
SELECT json_extract(data, '$.session') AS session, actor, json_extract(data, '$.client') AS client,
       MIN(ts) AS first, MAX(ts) AS last, COUNT(*) AS calls
FROM audit_events
WHERE type = 'call.received' AND json_extract(data, '$.session') IS NOT NULL
GROUP BY session, actor, client
ORDER BY last DESC
LIMIT ?
"""


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest sessions to show.")
@common_options
def sessions(env: Env, limit: int) -> None:
    """Client sessions: id, principal, client name, first and last call, number of calls."""
    from guard_mcp._audit import connect_reader
    from guard_mcp._state import resolve_state_dir

    env.note_if_unused()
    rows: list[dict[str, Any]] = []
    database = resolve_state_dir(env.state_dir).database  # read only: nothing is created for a look
    if database.exists() and database.stat().st_size > 0:
        conn = connect_reader(database)
        try:
            for session, actor, client, first, last, calls in conn.execute(_QUERY, (limit,)):
                rows.append(
                    {
                        "session": session,
                        "principal": actor,
                        "client": client,
                        "first": _when(first),
                        "last": _when(last),
                        "calls": calls,
                    }
                )
        except sqlite3.OperationalError:  # a database no guard has logged to yet
            rows = []
        finally:
            conn.close()
    if env.as_json:
        print_json(rows)
        return
    if not rows:
        env.console.print("no client sessions yet (a 2026-07-28 client over HTTP has none)", highlight=False)
        return
    print_table(
        env,
        ["session", "principal", "client", "first call", "last call", "calls"],
        [[r["session"], r["principal"], r["client"] or "", r["first"], r["last"], r["calls"]] for r in rows],
    )
    if not env.plain:
        env.console.print(
            "pre-approve one session's MEDIUM calls: guard-mcp approvals grant SESSION --tool TOOL --for 30m",
            highlight=False,
            markup=False,
        )
