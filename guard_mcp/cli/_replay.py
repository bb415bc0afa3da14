"""`guard-mcp policy replay BUNDLE [--since 7d] [--json]`: what a candidate would have decided on recorded calls.

    policy replay shop-v2.bundle.json --since 7d

The candidate's signature is checked against `guard.trusted_policy_keys` as the guard checks the live
bundle's (its version is not held against the rollback ledger: a replay serves nothing). Every call
the audit log recorded a decision for since `--since` is decided again; the changes (allow → approve,
approve → deny, ...) are printed, and calls whose redacted arguments the candidate reads are listed
as unknowable. Exit 0 whatever changed: it is a report, not a test.

This module adds `replay` to the `policy` group of `cli/_policy.py`, and the command table loads the
group from here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from guard_mcp._errors import PolicyError, PolicyRefused
from guard_mcp.cli._common import Env, common_options, fail, print_json
from guard_mcp.cli._policy import policy

__all__ = ["policy", "replay"]


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@policy.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="Replay calls from this age (`7d`, `24h`) or date/time (`2026-05-01T10:00Z`) on.",
)
@common_options
def replay(env: Env, bundle: str, since: str) -> None:
    """Decide the recorded calls again with a candidate BUNDLE and show what would change."""
    from guard_mcp._audit import connect_reader
    from guard_mcp._policy import load_candidate
    from guard_mcp._policy import replay as run_replay
    from guard_mcp.cli._audit import parse_when

    config = env.config()
    state = env.state()
    since_ms = parse_when(since, now=env.clock.now(), option="--since")
    try:
        verified, evaluator = load_candidate(Path(bundle), config, state)
    except PolicyRefused as exc:
        fail(f"refused ({exc.reason}): {exc}", code=1)
    except PolicyError as exc:
        fail(f"refused (bad_trusted_key): {exc}", code=1)
    conn = connect_reader(state.database)
    try:
        report = run_replay(conn, evaluator, json.loads(verified.data), config, since_ms=since_ms)
    finally:
        conn.close()
    if env.as_json:
        print_json(
            {**report.as_dict(), "sha256": verified.sha256, "kid": verified.kid, "since": since, "since_ms": since_ms}
        )
        return
    out = env.console
    if report.changed:
        table = Table(
            "time",
            "request",
            "tool",
            "live",
            "candidate",
            title=f"would change with {report.candidate}",
            title_justify="left",
        )
        for o in report.changed:
            cand = o.candidate or {}
            table.add_row(
                _time(o.ts),
                Text(o.request_id),
                Text(o.tool or "?"),
                Text(f"{o.live.get('effect')} ({o.live.get('rule_id') or 'default'})"),
                Text(f"{cand.get('effect')} ({cand.get('rule_id') or 'default'})"),
            )
        out.print(table)
    if report.unknowable:
        table = Table(
            "time",
            "request",
            "tool",
            "what the log does not hold and the candidate reads",
            title="unknowable (never guessed)",
            title_justify="left",
        )
        for o in report.unknowable:
            table.add_row(
                _time(o.ts),
                Text(o.request_id),
                Text(o.tool or "?"),
                Text(
                    ", ".join(
                        [
                            *(f"argument `{a}` (redacted)" for a in o.redacted),
                            *(["the caller's groups (not recorded)"] if o.groups_unknown else []),
                        ]
                    )
                ),
            )
        out.print(table)
    summary = Text(
        f"replayed {report.calls} calls since {since} with {report.candidate}: "
        f"{len(report.changed)} would change, {len(report.unknowable)} unknowable, "
        f"{report.calls - len(report.changed) - len(report.unknowable)} unchanged"
    )
    out.print(summary, soft_wrap=True)
    for transition, n in report.transitions.items():
        out.print(Text(f"  {transition}: {n}"), soft_wrap=True)
