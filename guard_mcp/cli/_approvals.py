"""`guard-mcp approvals` (the queue, decisions, session grants) and `guard-mcp approvers` (who may decide).

These run in a terminal beside the guard, against the same state directory; the guard's waiting call
sees a decision made here within a second. Anyone who can run them with access to the state directory
decides ordinary approvals; step-up approvals also need a named approver's TOTP code. A decision is
written through `ApprovalStore.decide` (which writes its record) and then put on record in the audit
log as `operator.decided`: a repeated call runs an approval only once both are there.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click
from rich import box
from rich.live import Live
from rich.table import Table
from rich.text import Text

from guard_mcp._duration import parse_duration
from guard_mcp._errors import ApprovalError, ConfigError
from guard_mcp._escape import escape_text
from guard_mcp.cli._common import Env, common_options, print_json, print_table
from guard_mcp.cli._record import operator, record

# The approvals package (and the contracts, pydantic, the config models under it) loads when a command
# runs, in the functions below, never for `--help`.
if TYPE_CHECKING:
    from guard_mcp._approvals import Approval, ApprovalStore, Grant

__all__ = ["approval_json", "approvals", "approvers"]

T = TypeVar("T")


def _local_identity() -> str:
    """Who decided, when no named approver was given: the operating-system user at this terminal."""
    return f"local:{operator()}"


@contextlib.asynccontextmanager
async def _open(env: Env) -> AsyncIterator[ApprovalStore]:
    from guard_mcp._approvals import ApprovalStore

    guard = env.config().guard
    store = await ApprovalStore.open(env.state(), clock=env.clock, config=guard.approvals, store=guard.store)
    try:
        yield store
    finally:
        await store.close()


def _run(env: Env, work: Callable[[ApprovalStore], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _open(env) as store:
            return await work(store)

    return anyio.run(main)


def approval_json(a: Approval, now: float) -> dict[str, Any]:
    """An approval as `--json` prints it: the record, and the headline the table and prompts show."""
    from guard_mcp._approvals import headline

    return {**a.to_json(now), "headline": headline(a.bundle)}


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _shown_state(a: Approval, now: float) -> str:
    # Listing never writes: an overdue PENDING record is shown as what it already is, a denial.
    from guard_mcp._approvals import ApprovalState

    if a.state is ApprovalState.PENDING and now >= a.deadline:
        return "expired"
    return a.state.value


def _status(a: Approval, now: float) -> Text:
    from guard_mcp._approvals import countdown

    state = _shown_state(a, now)
    if state == "pending":
        return Text(countdown(a.remaining(now)), style="bold yellow")
    style = {"approved": "green", "denied": "red"}.get(state, "dim")
    text = Text(state, style=style)
    if a.approver:
        text.append(f"\nby {escape_text(a.approver)}")
    if state in ("approved", "denied") and not a.verified:
        text.append("\nunverified", style="bold red")  # no decision record: it authorises nothing
    return text


_COLUMNS = ["id", "time left", "risk", "request", "owner"]


def _cells(a: Approval, now: float) -> list[Text | str]:
    from guard_mcp._approvals import headline

    risk = a.bundle.risk
    tier = Text(
        "?" if risk is None else f"{risk.tier.value} {risk.score}",
        style="bold red" if risk is not None and risk.tier.value == "HIGH" else "",
    )
    if a.step_up:
        tier.append("\nstep-up", style="red")
    owner = a.group + (f"\n(from {a.escalated_from})" if a.escalated and a.escalated_from else "")
    return [a.id, _status(a, now), tier, Text(f"{headline(a.bundle)}\n{escape_text(a.tool)}"), Text(owner)]


_NARROW = 100  # below this many columns the owner goes under the risk: five columns left it no room


def _table(rows: list[Approval], now: float, width: int) -> Table:
    table = Table(title="Approvals", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("time left", no_wrap=True)
    table.add_column("risk" if width >= _NARROW else "risk, owner", no_wrap=True)
    table.add_column("request", ratio=1, min_width=16, overflow="fold")
    if width >= _NARROW:
        table.add_column("owner", overflow="fold")
    for a in rows:
        cells = _cells(a, now)
        if width < _NARROW:
            owner = cells.pop()
            assert isinstance(cells[2], Text)
            cells[2] = Text.assemble(cells[2], "\n", owner)
        table.add_row(*cells)
    return table


@click.group()
@common_options
@click.pass_context
def approvals(ctx: click.Context, env: Env) -> None:
    """The approval queue: list, show, approve, deny; session pre-authorisation (grant, grants, revoke)."""
    ctx.obj = env  # `approvals --config X list`: the group's options count for its sub-commands


@approvals.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include decided, expired and cancelled approvals.")
@click.option("--watch", is_flag=True, help="Keep the table live, refreshing every second (Ctrl-C to stop).")
@common_options
def list_(env: Env, show_all: bool, watch: bool) -> None:
    """The queue of approvals with a countdown to each deadline."""
    from guard_mcp._approvals import ApprovalState

    env.note_if_unused()
    states = None if show_all else [ApprovalState.PENDING]

    async def fetch(store: ApprovalStore) -> list[Approval]:
        return await store.list(states=states)

    if env.as_json:
        rows = _run(env, fetch)
        now = env.clock.now()
        print_json([approval_json(a, now) for a in rows])
        return
    if not watch:
        rows = _run(env, fetch)
        if not rows:
            env.console.print("no pending approvals" if not show_all else "no approvals")
            return
        now = env.clock.now()
        if env.plain:  # piped, or --plain: one tab-separated line an approval
            print_table(env, _COLUMNS, [_cells(a, now) for a in rows])
        else:
            env.console.print(_table(rows, now, env.console.width))
        return

    async def live() -> None:
        async with _open(env) as store:
            with Live(console=env.console, auto_refresh=False) as view:
                while True:
                    view.update(
                        _table(await store.list(states=states), env.clock.now(), env.console.width), refresh=True
                    )
                    await anyio.sleep(1.0)

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(live)


def _get(env: Env, approval_id: str) -> Approval:
    from guard_mcp._approvals import unknown_approval

    async def work(store: ApprovalStore) -> Approval | None:
        return await store.get(approval_id)

    approval = _run(env, work)
    if approval is None:
        raise unknown_approval(approval_id, env.state().root)
    return approval


@approvals.command()
@click.argument("approval_id")
@common_options
def show(env: Env, approval_id: str) -> None:
    """Everything about one approval: what it would do, every argument, who decided."""
    from guard_mcp._approvals import approval_message, countdown

    approval = _get(env, approval_id)
    now = env.clock.now()
    if env.as_json:
        print_json(approval_json(approval, now))
        return
    out = env.console
    out.print(Text(approval_message(approval)), soft_wrap=True)
    state = _shown_state(approval, now)
    line = f"State: {state}"
    if state == "pending":
        line += f", {countdown(approval.remaining(now))} left"
    if approval.approver:
        line += f", by {escape_text(approval.approver)} at {_when(approval.decided_at)} UTC"
    if approval.reason:
        line += f": {escape_text(approval.reason)}"
    if approval.consumed:
        line += " (executed)"
    if state in ("approved", "denied") and not approval.verified:
        line += " (its decision record does not verify: it was not decided through guard-mcp, and authorises nothing)"
    out.print(Text(line), soft_wrap=True)


def _second_factor(approval: Approval | None, as_name: str | None, code: str | None) -> tuple[str | None, str | None]:
    """Ask for a named approver and a TOTP code where one is needed and not given."""
    need = as_name is not None or (approval is not None and approval.step_up)
    if not need:
        return None, None
    if (as_name is None or code is None) and not sys.stdin.isatty():
        what = f"approval `{approval.id}` needs step-up" if approval is not None and approval.step_up else "`--as`"
        raise ConfigError(f"{what}: pass `--as NAME --code CODE` (a named approver's current TOTP code)")
    if as_name is None:
        as_name = click.prompt("Approver name")
    if code is None:
        code = click.prompt(f"TOTP code for {as_name}")
    return as_name, code.strip()


def _decide(
    env: Env, approval_id: str, *, approve: bool, reason: str | None, as_name: str | None, code: str | None
) -> None:
    from guard_mcp._approvals import ApprovalState, decision_event_data, headline

    approval = _get(env, approval_id)
    if approve:
        as_name, code = _second_factor(approval if approval.state is ApprovalState.PENDING else None, as_name, code)
    elif as_name is not None and code is None:
        as_name, code = _second_factor(None, as_name, code)
    approver = as_name or _local_identity()

    async def work(store: ApprovalStore) -> Approval:
        return await store.decide(approval_id, approve=approve, approver=approver, reason=reason, totp_code=code)

    try:
        decided = _run(env, work)
    except ApprovalError as exc:  # a refused attempt (wrong code, wrong group, already decided) is on record too
        record(
            env,
            "operator.refused",
            {"approval_id": approval_id, "approve": approve, "approver": approver, "problem": str(exc)},
            request_id=approval.request_id,
            tool=approval.tool,
            done="refused",
        )
        raise
    verb = "approved" if approve else "denied"
    if env.as_json:
        print_json(approval_json(decided, env.clock.now()))
    else:
        env.console.print(Text(f"{verb} {decided.id}: {headline(decided.bundle)} (by {escape_text(approver)})"))
    record(
        env,
        "operator.decided",
        decision_event_data(decided),
        request_id=decided.request_id,
        tool=decided.tool,
        done=f"{verb} {decided.id}",
    )


@approvals.command()
@click.argument("approval_id")
@click.option("--reason", help="Why; recorded with the decision and in the audit log.")
@click.option("--as", "as_name", metavar="NAME", help="Decide as this enrolled approver (needs --code).")
@click.option("--code", metavar="TOTP", help="The approver's current TOTP code.")
@common_options
def approve(env: Env, approval_id: str, reason: str | None, as_name: str | None, code: str | None) -> None:
    """Approve one pending call: it may then run once, with exactly the arguments shown."""
    _decide(env, approval_id, approve=True, reason=reason, as_name=as_name, code=code)


@approvals.command()
@click.argument("approval_id")
@click.option("--reason", help="Why; the agent sees it with the denial.")
@click.option("--as", "as_name", metavar="NAME", help="Decide as this enrolled approver (needs --code).")
@click.option("--code", metavar="TOTP", help="The approver's current TOTP code.")
@common_options
def deny(env: Env, approval_id: str, reason: str | None, as_name: str | None, code: str | None) -> None:
    """Deny one pending call."""
    _decide(env, approval_id, approve=False, reason=reason, as_name=as_name, code=code)


def _grant_json(g: Grant, now: float) -> dict[str, Any]:
    return {
        "id": g.id,
        "session": g.session,
        "tool": g.tool,
        "group": g.group,
        "granted_by": g.granted_by,
        "reason": g.reason,
        "created": g.created,
        "expires": g.expires,
        "revoked_at": g.revoked_at,
        "uses": g.uses,
        "factor": g.factor,
        "verified": g.verified,
        "active": g.active(now) and g.verified,
    }


def _served_tool(env: Env, tool: str) -> None:
    """A grant for a tool no guard on this state directory has served would cover nothing: a typo."""
    from guard_mcp._naming import namespace_tools
    from guard_mcp._pins import PinStore

    pins = PinStore(env.state().database)
    try:
        seen = pins.all()
    finally:
        pins.close()
    by_upstream: dict[str, list[str]] = {}
    for p in seen:
        by_upstream.setdefault(p.upstream, []).append(p.tool)
    served = {name for up, tools in by_upstream.items() for name in namespace_tools(up, tools)}
    if tool not in served:
        raise ConfigError(
            f"no tool `{tool}` has been served by this guard; see `guard-mcp tools list` for the namespaced names"
        )


@approvals.command()
@click.argument("session")
@click.option("--tool", help="Namespaced tool the grant covers, e.g. `shop__refund`.")
@click.option("--group", help="Approver group whose MEDIUM-risk calls the grant covers.")
@click.option(
    "--for", "duration", required=True, metavar="DURATION", help="How long, e.g. `30m` (at most approvals.preauth_max)."
)
@click.option("--reason", help="Why; recorded with the grant.")
@click.option("--as", "as_name", metavar="NAME", help="Grant as this enrolled approver (needs --code).")
@click.option("--code", metavar="TOTP", help="The approver's current TOTP code.")
@common_options
def grant(
    env: Env,
    session: str,
    tool: str | None,
    group: str | None,
    duration: str,
    reason: str | None,
    as_name: str | None,
    code: str | None,
) -> None:
    """Pre-approve MEDIUM-risk calls of one tool or group in one client session, for a while (never HIGH)."""
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise ConfigError(f"--for: {exc}") from None
    if tool is not None:
        _served_tool(env, tool)
    as_name, code = _second_factor(None, as_name, code)
    granted_by = as_name or _local_identity()

    async def work(store: ApprovalStore) -> Grant:
        return await store.grants.grant(
            session=session,
            duration=seconds,
            granted_by=granted_by,
            tool=tool,
            group=group,
            reason=reason,
            totp_code=code,
        )

    g = _run(env, work)
    scope = f"tool {g.tool}" if g.tool else f"group {g.group}"
    if env.as_json:
        print_json(_grant_json(g, env.clock.now()))
    else:
        env.console.print(
            Text(
                f"granted {g.id}: MEDIUM-risk calls of {scope} in session {escape_text(g.session)} "
                f"until {_when(g.expires)} UTC; revoke with `guard-mcp approvals revoke {g.id}`"
            )
        )
    record(
        env,
        "operator.granted",
        {
            "grant_id": g.id,
            "session": g.session,
            "tool": g.tool,
            "group": g.group,
            "expires": g.expires,
            "granted_by": g.granted_by,
            "factor": g.factor,
            "reason": g.reason,
        },
        tool=g.tool,
        done=f"granted {g.id}",
    )


@approvals.command()
@click.option("--all", "show_all", is_flag=True, help="Include expired and revoked grants.")
@common_options
def grants(env: Env, show_all: bool) -> None:
    """Session pre-authorisations and how often each was used."""
    from guard_mcp._approvals import countdown

    async def work(store: ApprovalStore) -> list[Grant]:
        return await store.grants.list(active_only=not show_all)

    rows = _run(env, work)
    now = env.clock.now()
    if env.as_json:
        print_json([_grant_json(g, now) for g in rows])
        return
    if not rows:
        env.console.print("no active grants" if not show_all else "no grants")
        return
    cells: list[list[Any]] = []
    for g in rows:
        left = countdown(g.expires - now) if g.active(now) else ("revoked" if g.revoked_at else "expired")
        if not g.verified:
            left = "unverified (covers nothing)"
        covers = f"tool {g.tool}" if g.tool else f"group {g.group}"
        cells.append([g.id, Text(escape_text(g.session)), Text(covers), Text(g.granted_by), left, str(g.uses)])
    print_table(env, ["id", "session", "covers", "by", "time left", "uses"], cells, title="Session grants")


@approvals.command()
@click.argument("grant_id")
@common_options
def revoke(env: Env, grant_id: str) -> None:
    """Revoke a session grant at once."""

    async def work(store: ApprovalStore) -> Grant:
        return await store.grants.revoke(grant_id)

    g = _run(env, work)
    if env.as_json:
        print_json(_grant_json(g, env.clock.now()))
    else:
        env.console.print(f"revoked {g.id} ({g.uses} uses)")
    record(
        env,
        "operator.revoked",
        {"grant_id": g.id, "session": g.session, "uses": g.uses},
        tool=g.tool,
        done=f"revoked {g.id}",
    )


# ------------------------------------------------------------------------------------------- approvers


def _console_base(env: Env) -> str:
    """Where approvers open the console: `guard.console.public_url`, else what a running guard wrote
    into `<state>/console.url`, else the default listener."""
    from guard_mcp._console import URL_FILE

    cfg = env.config().guard.console
    if cfg.public_url:
        return cfg.public_url
    with contextlib.suppress(OSError, UnicodeDecodeError):
        written = (env.state().root / URL_FILE).read_text().strip()
        if written.startswith(("http://", "https://")) and written.isprintable():
            return written
    return f"http://localhost:{cfg.port or 8766}/console"


def _enrolment_link(env: Env, name: str) -> tuple[str, float]:
    """A one-time passkey enrolment link for `name` (stored only as its hash), and its expiry."""
    from guard_mcp._console import ConsoleStore

    ttl = env.config().guard.console.enrol_expire

    async def main() -> str | None:
        store = await ConsoleStore.open(env.state(), env.clock)
        try:
            return await store.issue_enrolment(name, ttl)
        finally:
            await store.close()

    token = anyio.run(main)
    if token is None:
        raise ApprovalError(
            f"approver `{name}` is not enrolled; add them with `guard-mcp approvers add {name} --group G`"
        )
    return f"{_console_base(env)}/enrol/{token}", env.clock.now() + ttl


def _print_link(link: str, expires: float) -> None:
    click.echo(f"Passkey enrolment link (works once, until {_when(expires)} UTC; the console must be running):")
    click.echo(f"  {link}")


@click.group()
@common_options
@click.pass_context
def approvers(ctx: click.Context, env: Env) -> None:
    """Named approvers and their TOTP second factor (needed for step-up approvals)."""
    ctx.obj = env  # `approvers --config X list`: the group's options count for its sub-commands


@approvers.command()
@click.argument("name")
@click.option("--group", "groups", multiple=True, required=True, help="Approver group (repeat for several).")
@common_options
def add(env: Env, name: str, groups: tuple[str, ...]) -> None:
    """Enrol an approver: prints a one-time passkey enrolment link for the console, and their TOTP secret
    and a QR code to scan (the second factor where there is no passkey), once."""
    import segno

    async def work(store: ApprovalStore) -> tuple[str, str]:
        return await store.approvers.enrol(name, groups)

    secret, uri = _run(env, work)
    link, expires = _enrolment_link(env, name)
    if env.as_json:
        print_json(
            {
                "name": name,
                "groups": sorted(set(groups)),
                "secret": secret,
                "uri": uri,
                "enrolment_link": link,
                "enrolment_expires": expires,
            }
        )
    else:
        qr = io.StringIO()
        segno.make(uri, error="m").terminal(out=qr, compact=True)
        click.echo(f"Enrolled approver {name} in group(s) {', '.join(sorted(set(groups)))}.")
        click.echo("Scan this code with an authenticator app, or type the secret in:")
        click.echo(qr.getvalue())
        click.echo(f"secret: {secret}")
        click.echo(f"uri:    {uri}")
        click.echo("This secret is not shown again. Keep it only in the approver's authenticator.")
        _print_link(link, expires)
    # after the secret is shown (a failed record must not lose it); the secret itself is never logged
    record(env, "operator.approver_added", {"name": name, "groups": sorted(set(groups))}, done=f"enrolled {name}")


@approvers.command()
@click.argument("name")
@common_options
def link(env: Env, name: str) -> None:
    """A new one-time passkey enrolment link for an approver (a lost or new device); old passkeys stay."""
    url, expires = _enrolment_link(env, name)
    if env.as_json:
        print_json({"name": name, "enrolment_link": url, "enrolment_expires": expires})
    else:
        _print_link(url, expires)
    record(env, "operator.enrolment_link", {"name": name, "expires": expires}, done=f"issued a link for {name}")


@approvers.command()
@click.argument("name")
@click.option("--group", "groups", multiple=True, required=True, help="Approver group (repeat for several).")
@common_options
def groups(env: Env, name: str, groups: tuple[str, ...]) -> None:
    """Set an approver's groups; their passkeys and TOTP secret stay (no re-enrolment)."""

    async def work(store: ApprovalStore) -> Any:
        return await store.approvers.set_groups(name, groups)

    approver = _run(env, work)
    if env.as_json:
        print_json({"name": approver.name, "groups": list(approver.groups)})
    else:
        env.console.print(Text(f"approver {approver.name} is now in group(s) {', '.join(approver.groups)}"))
    record(
        env,
        "operator.approver_groups",
        {"name": approver.name, "groups": list(approver.groups)},
        done=f"changed the groups of {name}",
    )


@approvers.command("list")
@common_options
def list_approvers(env: Env) -> None:
    """Enrolled approvers and their groups (never their secrets)."""

    async def work(store: ApprovalStore) -> list[Any]:
        return await store.approvers.list()

    rows = _run(env, work)
    if env.as_json:
        print_json([{"name": a.name, "groups": list(a.groups), "created": a.created} for a in rows])
        return
    if not rows:
        env.console.print("no approvers enrolled; add one with `guard-mcp approvers add NAME --group G`")
        return
    print_table(
        env,
        ["name", "groups", "enrolled"],
        [[a.name, ", ".join(a.groups), _when(a.created)] for a in rows],
        title="Approvers",
    )


@approvers.command()
@click.argument("name")
@common_options
def remove(env: Env, name: str) -> None:
    """Remove an approver; their TOTP secret, passkeys and console sessions are deleted with them."""
    from guard_mcp._console import ConsoleStore

    async def work(store: ApprovalStore) -> None:
        await store.approvers.remove(name)
        console = await ConsoleStore.open(env.state(), env.clock)
        try:
            await console.forget(name)
        finally:
            await console.close()

    _run(env, work)
    record(env, "operator.approver_removed", {"name": name}, done=f"removed {name}")
    if env.as_json:
        print_json({"removed": name})
        return
    env.console.print(f"removed approver {name}")
