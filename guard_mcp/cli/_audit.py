"""`guard-mcp audit …`: read, search, verify, anchor and export the audit log of a running or stopped guard.

Every command opens the database read-only, so it never blocks the guard's writer; `anchor` alone
may append, a signed checkpoint, the way a second writer does. `verify` exits 0 only when the log
is intact, 1 when it is not (2 for usage and state errors, as everywhere).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from cryptography.hazmat.primitives.asymmetric import ec
from rich.table import Table
from rich.text import Text

from guard_mcp._audit import (
    HEAD_FILE,
    ApprovalSummary,
    AuditEvent,
    CallSummary,
    VerifyReport,
    anchor_for,
    approval_story,
    connect_reader,
    event_at,
    event_intact,
    export_jsonl,
    export_ocsf,
    follow,
    is_ocsf,
    load_audit_key,
    public_key_from_jwk,
    read_anchor,
    read_head_file,
    search,
    stats,
    story,
    summarize,
    summarize_approval,
    tail,
    trusted_keys,
    verify_export,
    verify_log,
    verify_ocsf,
)
from guard_mcp._duration import parse_duration
from guard_mcp._errors import ConfigError
from guard_mcp._escape import escape_text
from guard_mcp._keys import KeyStore
from guard_mcp.cli._common import Env, Seconds, common_options, fail, print_json, print_table

__all__ = ["audit", "parse_when"]

_DECISIONS = click.Choice(["allow", "deny", "approve"])
_SQLITE_MAX = 2**63 - 1  # the largest integer a query parameter can carry
_COUNT = click.IntRange(min=1, max=_SQLITE_MAX)


@click.group()
@common_options
@click.pass_context
def audit(ctx: click.Context, env: Env) -> None:
    """Inspect, verify and export the tamper-evident audit log."""
    ctx.obj = env  # `audit --state-dir X tail`: the group's options count for its sub-commands


# ------------------------------------------------------------------------------------------ helpers


@contextmanager
def _reader(env: Env) -> Iterator[sqlite3.Connection]:
    conn = connect_reader(env.state(read_only=True).database)
    try:
        yield conn
    finally:
        conn.close()


def _public_keys(env: Env) -> dict[str, ec.EllipticCurvePublicKey]:
    store = KeyStore(env.state(read_only=True).keys, env.clock)
    return store.public_keys(include_retired=True) if store.exists() else {}


def parse_when(value: str | None, *, now: float, option: str) -> int | None:
    """`2h` / `30m` / `1d` ago, an ISO date or time (UTC unless it says otherwise) -> epoch milliseconds."""
    if value is None:
        return None
    try:
        # An age older than any event means "from the start"; SQLite holds no integer past 2**63.
        return max(int((now - parse_duration(value)) * 1000), -_SQLITE_MAX)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"`{option}` value `{value}` is not a time; write an age like `2h` or `3d`, or a date like "
            "`2026-05-01` or `2026-05-01T10:00:00Z`"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _brief(e: AuditEvent) -> str:
    d = e.data
    pick: dict[str, tuple[str, ...]] = {
        "call.received": ("arguments",),
        "call.decided": ("effect", "reason", "rule_id", "policy"),
        "call.invalid": ("reason", "message"),
        "call.denied": ("reason",),
        "approval.requested": ("approval_id", "group", "step_up"),
        "approval.decided": ("state", "approver", "reason"),
        "operator.decided": ("state", "approver", "factor", "reason"),
        "console.decided": ("state", "approver", "factor", "reason"),
        "approval.consumed": ("approver", "factor"),
        "approval.expired": ("approval_id",),
        "approval.cancelled": ("approval_id", "reason"),
        "permit.issued": ("jti", "exp", "approver"),
        "call.result": ("is_error",),
        "call.error": ("reason", "error"),
        "call.unresolved": ("reason", "jti"),
        "upstream.elicitation": ("outcome", "action", "reason", "ended", "fields"),
    }
    keys = pick.get(e.type)
    shown = {k: d[k] for k in keys if d.get(k) is not None} if keys else dict(d)
    text = " ".join(f"{k}={json.dumps(v, ensure_ascii=False, separators=(',', ':'))}" for k, v in shown.items())
    return text if len(text) <= 100 else text[:99] + "…"


def _t(value: Any, style: str = "") -> Text:
    """A stored field as plain text: what an agent or an upstream chose (a tool name, an argument) is
    never read as markup, and its control characters are shown escaped, not sent to the terminal."""
    return Text(escape_text("" if value is None else str(value)), style=style)


_EVENT_COLUMNS = ["seq", "time", "type", "request", "actor", "tool", "detail"]


def _event_cells(e: AuditEvent) -> list[Any]:
    return [str(e.seq), _time(e.ts), _styled_type(e.type), _t(e.request_id), _t(e.actor), _t(e.tool), _t(_brief(e))]


def _events_table(events: list[AuditEvent], title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    for col in _EVENT_COLUMNS:
        table.add_column(col, overflow="fold", no_wrap=col in ("seq", "time", "type"))
    for e in events:
        table.add_row(*_event_cells(e))
    return table


def _styled_type(kind: str) -> Text:
    style = (
        "red"
        if kind in ("call.invalid", "call.denied", "call.error", "approval.expired", "audit.broken", "policy.refused")
        else "yellow"
        if kind.startswith("approval.") or kind in ("tool.pin_changed", "call.unresolved", "upstream.elicitation")
        else "green"
        if kind in ("permit.issued", "call.result")
        else "magenta"
        if kind.startswith("operator.") or kind in ("key.rotated", "policy.accepted")
        else ""
    )
    return Text(kind, style=style)


# ----------------------------------------------------------------------------------------- commands


@audit.command("tail")
@click.option(
    "-n", "--lines", "count", type=_COUNT, default=20, show_default=True, help="How many of the newest events to show."
)
@click.option("-f", "--follow", "keep_following", is_flag=True, help="Keep printing events as they are written.")
@click.option(
    "--interval",
    type=Seconds(min=0.05, max=3600),
    default=0.5,
    show_default=True,
    help="Seconds between polls with --follow.",
)
@common_options
def tail_(env: Env, count: int, keep_following: bool, interval: float) -> None:
    """The newest events (with -f, and every event after them as it is written)."""
    with _reader(env) as conn:
        events = tail(conn, count)
        if env.as_json:
            if keep_following:
                for e in events:
                    click.echo(json.dumps(e.as_dict(), ensure_ascii=False))
            else:
                print_json([e.as_dict() for e in events])
        elif env.plain:  # piped, or --plain: a header line, then one tab-separated line an event
            print_table(env, _EVENT_COLUMNS, [_event_cells(e) for e in events])
        elif env.console.width < _TABLE_WIDTH:  # a table of seven columns does not fit: one line an event
            for e in events:
                _print_line(env, e)
        else:
            env.console.print(_events_table(events))
        if not keep_following:
            return
        last = events[-1].seq if events else 0
        try:
            for e in follow(conn, last, sleep=lambda: time.sleep(interval)):
                if env.as_json:
                    click.echo(json.dumps(e.as_dict(), ensure_ascii=False))
                elif env.plain:
                    print_table(env, _EVENT_COLUMNS, [_event_cells(e)], header=False)
                else:
                    _print_line(env, e)
        except KeyboardInterrupt:
            return


_TABLE_WIDTH = 120


def _print_line(env: Env, e: AuditEvent) -> None:
    env.console.print(
        Text.assemble(
            f"{e.seq:>7}  {_time(e.ts)}  ",
            _styled_type(e.type),
            _t(f"  {e.request_id or '-'}  {e.tool or ''}  {_brief(e)}"),
        ),
        highlight=False,
    )


@audit.command()
@click.argument("target", metavar="ID")
@common_options
def show(env: Env, target: str) -> None:
    """Everything recorded about one call or one approval, in order: ID is a request id (`req_…`), an
    approval id (`apr_…`: the call that asked, the decision, the call that used it) or an event's seq."""
    with _reader(env) as conn:
        kind, events, approval_id = _find(conn, target)
        key = load_audit_key(env.state(read_only=True))
        intact = [event_intact(conn, e, key) for e in events]
    by_request: dict[str, list[AuditEvent]] = {}
    for e in events:
        if e.request_id is not None:
            by_request.setdefault(e.request_id, []).append(e)
    summaries = [summarize(evs) for evs in by_request.values()]
    approval = summarize_approval(events, approval_id) if approval_id is not None else None
    call = next((c for c in summaries if approval is None or c.request_id == approval.request_id), None)
    if env.as_json:
        print_json(
            {
                "query": target,
                "kind": kind,
                "call": None if call is None else call.as_dict(),
                "calls": [c.as_dict() for c in summaries],
                "approval": None if approval is None else approval.as_dict(),
                "events": [{**e.as_dict(), "intact": ok} for e, ok in zip(events, intact, strict=True)],
            }
        )
        return
    if approval is not None:
        _print_approval(env, approval)
    for c in summaries:
        _print_call(env, c)
    table = Table()
    for col in ("+ms", "time", "seq", "event", "request", "detail", "intact"):
        table.add_column(col, overflow="fold", no_wrap=col in ("+ms", "time", "seq"))
    rows: list[list[Any]] = []
    for e, ok in zip(events, intact, strict=True):
        mark = "yes" if ok else "NO"
        rows.append(
            [
                str(e.ts - events[0].ts),
                _time(e.ts),
                str(e.seq),
                _styled_type(e.type),
                _t(e.request_id or "-"),
                _t(_brief(e)),
                Text(mark, style="green" if ok else "bold red"),
            ]
        )
    if env.plain:
        print_table(env, ["+ms", "time", "seq", "event", "request", "detail", "intact"], rows)
    elif env.console.width < _TABLE_WIDTH:  # seven columns do not fit: each event on a line, its detail below
        for (ms, _, seq, kind, request, detail, _), ok in zip(rows, intact, strict=True):
            verdict = Text("intact", style="green") if ok else Text("NOT INTACT", style="bold red")
            env.console.print(
                Text.assemble(f"{seq:>7}  +{ms} ms  ", kind, "  ", request, "  ", verdict), highlight=False
            )
            env.console.print(Text.assemble("         ", detail), highlight=False)
    else:
        for row in rows:
            table.add_row(*row)
        env.console.print(table)
    if not all(intact):
        env.console.print("[bold red]some events do not match their hash or MAC: run `guard-mcp audit verify`[/]")


def _find(conn: sqlite3.Connection, target: str) -> tuple[str, list[AuditEvent], str | None]:
    """What `show` was given (`approval`, `seq`, `request`), its events, and the approval they tell of: an
    approval id; a seq, for the call its event belongs to (or the approval an operator's event names);
    or a request id."""
    from guard_mcp._approvals import valid_id

    if target.startswith("apr_"):
        if not valid_id(target, "apr"):
            raise ConfigError(
                f"`{target}` is not an approval id (`apr_` and 26 letters and digits); copy it from "
                "`guard-mcp approvals list --all` or the client's `pending_approval` answer"
            )
        events = approval_story(conn, target)
        if not events:
            raise ConfigError(
                f"no audit events for approval `{target}`; `guard-mcp approvals list --all` lists "
                "the approvals of this state directory"
            )
        return "approval", events, target
    if target.isdigit() and target.isascii():
        event = event_at(conn, int(target)) if int(target) <= _SQLITE_MAX else None
        if event is None:
            raise ConfigError(f"no audit event with seq `{target}`; `guard-mcp audit tail` shows the newest")
        named = event.data.get("approval_id")
        if event.request_id is not None:
            return "seq", story(conn, event.request_id), None
        if isinstance(named, str) and valid_id(named, "apr"):
            return "seq", approval_story(conn, named), named
        return "seq", [event], None
    events = story(conn, target)
    if not events:
        raise ConfigError(
            f"no audit events for request `{target}`; find request ids with "
            "`guard-mcp audit search` or `guard-mcp audit tail`, or give an approval id (`apr_…`)"
        )
    return "request", events, None


def _print_call(env: Env, summary: CallSummary) -> None:
    latency = summary.approval_latency_ms
    env.console.print(
        Text.assemble(
            _t(summary.request_id, "bold"),
            _t(f"  {summary.actor or '?'} → {summary.upstream or '?'}/{summary.tool or '?'}"),
            "\npolicy said ",
            _t(summary.effect or "-", "bold"),
            ", the call ended ",
            _t(summary.outcome, "bold"),
            _t(f" ({summary.reason})" if summary.reason else ""),
            f", approval took {latency / 1000:.1f} s" if latency is not None else "",
        ),
        highlight=False,
    )


def _print_approval(env: Env, a: ApprovalSummary) -> None:
    decided = (
        ""
        if a.decided_ts is None or a.requested_ts is None
        else f" after {(a.decided_ts - a.requested_ts) / 1000:.1f} s"
    )
    by = f" by {a.approver}" + (f" ({a.factor})" if a.factor else "") if a.approver else ""
    env.console.print(
        Text.assemble(
            _t(a.approval_id, "bold"),
            "  ",
            _t(a.headline or "?"),
            "\n",
            _t(f"asked by {a.request_id or '?'} ({a.actor or '?'}, {a.tool or '?'}) of group {a.group or '?'}"),
            " with step-up" if a.step_up else "",
            _t(f", escalated to {a.escalated_to}" if a.escalated_to else ""),
            "\n",
            _t(a.state, "bold"),
            _t(f"{by}{decided}"),
            _t(f": {a.reason}" if a.reason else ""),
            _t(f"; used by {a.used_by}" if a.used_by else "; not used by any call"),
            _t(f"; {a.refused_attempts} refused attempt(s)" if a.refused_attempts else ""),
        ),
        highlight=False,
    )


@audit.command("search")
@click.option("--tool", help="Tool name, as exposed (`shop__refund`) or upstream-side (`refund`).")
@click.option("--actor", help="The principal that made the call.")
@click.option(
    "--decision",
    type=_DECISIONS,
    help="What the policy said (allow, deny, approve) or how the call ended (allow: the upstream was "
    "called; deny: it was not).",
)
@click.option("--since", help="Start: an age like `2h` or a date/time like `2026-05-01T10:00Z`.")
@click.option("--until", help="End (exclusive), same forms as --since.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Newest calls to show.")
@common_options
def search_(
    env: Env,
    tool: str | None,
    actor: str | None,
    decision: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    """Calls matching every filter given, one line per call."""
    now = env.clock.now()
    with _reader(env) as conn:
        found = search(
            conn,
            tool=tool,
            actor=actor,
            decision=decision,
            since_ms=parse_when(since, now=now, option="--since"),
            until_ms=parse_when(until, now=now, option="--until"),
            limit=limit,
        )
    if env.as_json:
        print_json([c.as_dict() for c in found])
        return
    table = Table(title=f"{len(found)} calls")
    for col in ("time", "request", "actor", "tool", "policy", "outcome", "reason"):
        table.add_column(col, overflow="fold")
    rows: list[list[Any]] = []
    for c in found:
        outcome = Text(c.outcome, style={"allow": "green", "deny": "red"}.get(c.decision or "", "yellow"))
        rows.append([_time(c.ts), _t(c.request_id), _t(c.actor), _t(c.tool), _t(c.effect), outcome, _t(c.reason)])
    if env.plain:
        print_table(env, ["time", "request", "actor", "tool", "policy", "outcome", "reason"], rows)
        return
    if env.console.width < _TABLE_WIDTH:  # seven columns do not fit: each call on a line, how it went below
        env.console.print(f"{len(found)} calls", highlight=False)
        for when, request, actor, tool, effect, outcome, reason in rows:
            env.console.print(Text.assemble(when, "  ", request, "  ", actor, "  ", tool), highlight=False)
            env.console.print(
                Text.assemble(
                    "    policy ", effect, ", ended ", outcome, *((" (", reason, ")") if reason.plain else ())
                ),
                highlight=False,
            )
        return
    for row in rows:
        table.add_row(*row)
    env.console.print(table)


def _report_out(env: Env, report: VerifyReport) -> None:
    if env.as_json:
        print_json(report.as_dict())
    elif report.ok:
        env.console.print(f"[bold green]intact[/]: {report.message}", highlight=False)
    else:
        at = f" at seq {report.bad_seq}" if report.bad_seq is not None else ""
        env.console.print(f"[bold red]BROKEN[/]{at} ({report.problem}): {report.message}", highlight=False)
    if not report.ok:
        sys.exit(1)


def _load_jwks(path: str) -> Mapping[str, ec.EllipticCurvePublicKey]:
    try:
        data = json.loads(Path(path).read_text())
        keys = {jwk["kid"]: key for jwk in data["keys"] if (key := public_key_from_jwk(jwk)) is not None}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read JWKS `{path}`: {exc}; pass the deployment's published jwks.json") from None
    return keys


@audit.command()
@click.option(
    "--export",
    "export_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Verify an `audit export` file instead of the state directory's database.",
)
@click.option(
    "--anchor",
    "anchor_files",
    type=click.Path(dir_okay=False, exists=True),
    multiple=True,
    help="An `audit anchor` file kept elsewhere: the log must still hold its signed head. Repeatable.",
)
@click.option(
    "--jwks",
    "jwks_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Public keys to trust: with --export instead of the ones inside the export; otherwise as well "
    "as the state directory's own (for anchors signed elsewhere).",
)
@click.option(
    "--mac-key",
    "mac_key_file",
    type=click.Path(dir_okay=False, exists=True),
    help="With --export: the deployment key (`<state>/keys/audit.key`), if it was shared with you.",
)
@click.option("--no-mac", is_flag=True, help="Skip the MACs, as a third party without the deployment key would.")
@common_options
def verify(
    env: Env,
    export_file: str | None,
    anchor_files: tuple[str, ...],
    jwks_file: str | None,
    mac_key_file: str | None,
    no_mac: bool,
) -> None:
    """Walk the whole chain, every MAC and every checkpoint; name the first bad seq.

    With --anchor, also check each anchor's signature and that the log still holds the event it
    signed, with the same hash: this catches the newest events deleted together with their
    checkpoints, and an older copy of the state directory put back, which the log alone cannot.

    Exit status 0 only when the log is intact, 1 when it is not.
    """
    if mac_key_file and export_file is None:
        raise ConfigError(
            "`--mac-key` checks an export's MACs; pass `--export FILE` too (the log itself is checked "
            "with the state directory's own key)"
        )
    anchors = [read_anchor(Path(f)) for f in anchor_files]
    extra = _load_jwks(jwks_file) if jwks_file else None
    if export_file is not None:
        key = Path(mac_key_file).read_bytes() if mac_key_file and not no_mac else None
        if key is not None and len(key) < 32:  # not the deployment key: do not call the export forged
            raise ConfigError(
                f"`{mac_key_file}` is {len(key)} bytes; the deployment key (`keys/audit.key`) is at least 32"
            )
        check = verify_ocsf if is_ocsf(Path(export_file)) else verify_export
        report = check(Path(export_file), public_keys=extra, hmac_key=key, anchors=anchors)
    else:
        state = env.state(read_only=True)
        key = None if no_mac else load_audit_key(state)
        report = verify_log(
            state.database,
            hmac_key=key,
            public_keys={**(extra or {}), **_public_keys(env)},
            head_file=state.root / HEAD_FILE,
            anchors=anchors,
        )
    _report_out(env, report)


def _refuse(env: Env, report: VerifyReport) -> NoReturn:
    if env.as_json:
        print_json(report.as_dict())
        sys.exit(1)
    at = f" at seq {report.bad_seq}" if report.bad_seq is not None else ""
    fail(
        f"the audit log does not verify{at} ({report.problem}): {report.message}; refusing to anchor it, since "
        "an anchor would vouch for it: restore the log from backup",
        code=1,
    )


def _head_anchor(env: Env) -> dict[str, Any]:
    """Verify everything, sign the head if events are not covered yet, and return the newest signed
    checkpoint as an anchor."""
    state = env.state()
    hmac_key = load_audit_key(state)
    head_file = state.root / HEAD_FILE
    report = verify_log(state.database, hmac_key=hmac_key, public_keys=_public_keys(env), head_file=head_file)
    if not report.ok:
        _refuse(env, report)
    if hmac_key is None:
        fail(
            f"the deployment key `{state.keys / 'audit.key'}` is missing, so the log's MACs cannot be checked; "
            "refusing to anchor it: restore the key from backup",
            code=1,
        )
    if report.last_seq is None:
        fail(f"the audit log `{state.database}` is empty: there is nothing to anchor yet", code=1)
    if report.unsealed or report.head_checkpoint is None:
        from guard_mcp._audit import seal_head  # the writer: only here does `audit` append

        clock = env.clock
        seal_head(state, clock=clock, keys=KeyStore(state.keys, clock))
        # What was verified above stays verified: go on from its newest checkpoint, if it had one.
        report = verify_log(
            state.database,
            hmac_key=hmac_key,
            public_keys=_public_keys(env),
            head_file=head_file,
            from_seq=report.head_checkpoint,
            from_hash=report.head_checkpoint_hash,
        )
        if not report.ok:
            _refuse(env, report)
    if report.head_checkpoint is None or report.head_checkpoint_hash is None:
        fail("the head was not signed; run `guard-mcp audit verify`, then `guard-mcp audit anchor` again", code=1)
    with _reader(env) as conn:
        keys = trusted_keys(conn, hmac_key, _public_keys(env))
        return anchor_for(conn, report.head_checkpoint, report.head_checkpoint_hash, keys, read_head_file(head_file))


@audit.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="File to write (default: stdout).")
@common_options
def anchor(env: Env, output: str | None) -> None:
    """The newest signed head as a small JSON document to keep off this machine (another host, a
    ticket, a write-once bucket). `audit verify --anchor FILE` later proves the log still holds it.

    Signs the head first when the newest events are not covered by a checkpoint yet. Refuses (exit 1)
    a log that does not verify.
    """
    doc = _head_anchor(env)
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the anchor to `{output}`: {exc.strerror}; pass a writable path") from None
    if env.as_json:
        print_json({k: doc[k] for k in ("seq", "hash", "ts", "kid")} | {"output": output})
    else:
        env.console.print(
            f"anchored seq {doc['seq']} (hash {doc['hash'][:16]}…, key `{doc['kid']}`, "
            f"{_time(doc['ts'])}) in {output}; keep it off this machine",
            highlight=False,
        )


@audit.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl", "ocsf"]), default="jsonl", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="File to write (default: stdout).")
@click.option("--from-seq", type=_COUNT, default=1, show_default=True, help="First event to export.")
@common_options
def export(env: Env, fmt: str, output: str | None, from_seq: int) -> None:
    """Events plus what a third party needs to verify them without the database: the signed head
    checkpoint and the public JWKS. MACs need the deployment key, which is not exported."""
    key = load_audit_key(env.state(read_only=True))
    write = export_ocsf if fmt == "ocsf" else export_jsonl
    with _reader(env) as conn:
        if output is None:
            write(
                conn,
                sys.stdout,
                public_keys=_public_keys(env),
                hmac_key=key,
                from_seq=from_seq,
                exported_at=int(env.clock.now() * 1000),
            )
            return
        try:
            f = open(output, "w", encoding="utf-8")  # noqa: SIM115  (closed below; the open's failure is the user's)
        except OSError as exc:  # worded and raised as `audit anchor -o` does
            raise ConfigError(f"cannot write the export to `{output}`: {exc.strerror}; pass a writable path") from None
        with f:
            header = write(
                conn,
                f,
                public_keys=_public_keys(env),
                hmac_key=key,
                from_seq=from_seq,
                exported_at=int(env.clock.now() * 1000),
            )
    if env.as_json:
        print_json({k: v for k, v in header.items() if k not in ("jwks", "verify")} | {"output": output})
    else:
        env.console.print(
            f"wrote {header['events']} events (seq {header['first_seq']}..{header['last_seq']}) and "
            f"the head checkpoint at seq {header['head_checkpoint']} to {output}",
            highlight=False,
        )
        if header["unsealed"]:
            env.console.print(
                f"[yellow]the newest {header['unsealed']} events are not covered by a signed "
                "checkpoint yet; export again after the guard's next checkpoint[/]"
            )


@audit.command("stats")
@click.option("--since", help="Start: an age like `24h` or a date/time.")
@click.option("--until", help="End (exclusive), same forms as --since.")
@common_options
def stats_(env: Env, since: str | None, until: str | None) -> None:
    """Counts by decision, tool and reason code, and how long approvals took."""
    now = env.clock.now()
    with _reader(env) as conn:
        result = stats(
            conn,
            since_ms=parse_when(since, now=now, option="--since"),
            until_ms=parse_when(until, now=now, option="--until"),
        )
    if env.as_json:
        print_json(result)
        return
    if env.plain:  # one table: what is counted, the value counted, how many calls
        rows: list[list[Any]] = [["calls", "", result["calls"]]]
        for key in ("by_effect", "by_decision", "by_outcome", "by_tool", "by_reason"):
            rows.extend([key[3:], _t(name), n] for name, n in result[key].items())
        rows.extend(["approval_latency", k, v] for k, v in result["approval_latency"].items())
        print_table(env, ["count", "value", "calls"], rows)
        return
    env.console.print(f"[bold]{result['calls']}[/] calls", highlight=False)
    for key, title in (
        ("by_effect", "policy effect"),
        ("by_decision", "decision"),
        ("by_outcome", "outcome"),
        ("by_tool", "tool"),
        ("by_reason", "reason"),
    ):
        counts: dict[str, int] = result[key]
        if not counts:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column(title)
        table.add_column("calls", justify="right")
        for name, n in counts.items():
            table.add_row(_t(name), str(n))
        env.console.print(table)
    lat: dict[str, Any] = result["approval_latency"]
    if lat["count"]:
        env.console.print(
            f"approval latency over {lat['count']} decided approvals: median {lat['median_s']:.1f} s, "
            f"p90 {lat['p90_s']:.1f} s, max {lat['max_s']:.1f} s",
            highlight=False,
        )
    else:
        env.console.print("no decided approvals in this range")
