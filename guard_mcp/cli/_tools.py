"""`guard-mcp tools`: the catalog, and the review of changed and new tool definitions (diff / accept)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape
from rich.text import Text

from guard_mcp._audit import EventIn
from guard_mcp.cli._common import Env, common_options, fail, print_json, print_table
from guard_mcp.cli._record import record_events

__all__ = ["tools"]


@click.group(invoke_without_command=True)
@common_options
@click.pass_context
def tools(ctx: click.Context, env: Env) -> None:
    """The guarded tool catalog. With no sub-command: list it."""
    ctx.obj = env  # `tools --config X [list]`: the group's options count for its sub-commands
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


@tools.command("list")
@common_options
def list_(env: Env) -> None:
    """List every tool: name, upstream, action, category, tier, status."""
    from guard_mcp._catalog import Catalog
    from guard_mcp._pins import PinStore
    from guard_mcp._policy import PolicyEngine
    from guard_mcp.cli._probe import probe_upstreams

    config, state = env.config(), env.state()
    policy = PolicyEngine.from_config(config, state)
    pins = PinStore(state.database)
    catalog = Catalog(config, pins, policy.score, env.clock.now)
    failures: dict[str, str | None] = {}
    try:
        # as `check` starts them: their stderr kept off the terminal, an OAuth upstream with its login
        for probed in probe_upstreams(config, 15.0, state=state):
            if probed.state == "ready":
                catalog.update(probed.name, probed.tools)
            else:
                failures[probed.name] = probed.error
    finally:
        pins.close()
    entries = catalog.entries()
    if env.as_json:
        print_json(
            {
                "tools": [
                    {
                        "name": e.name,
                        "upstream": e.upstream,
                        "tool": e.original,
                        "action": e.schema.action,
                        "category": e.schema.category.value,
                        "tier": e.risk.tier.value,
                        "score": e.risk.score,
                        "status": _status(e),
                        "declared": e.schema.declared,
                        **({"refused": e.refused} if e.refused is not None else {}),
                    }
                    for e in entries
                ],
                "unavailable": failures,
            }
        )
        return
    tier_style = {"LOW": "green", "MEDIUM": "yellow", "HIGH": "red"}
    shown = {
        "refused": Text("refused (hidden text)", style="red"),
        "withheld": Text("withheld (changed)", style="red"),
        "new": Text("withheld (new)", style="red"),
        "served": "served",
    }
    print_table(
        env,
        ["tool", "upstream", "action", "category", "tier", "status"],
        [
            [
                e.name,
                e.upstream,
                e.schema.action,
                Text.assemble(e.schema.category.value, ("" if e.schema.declared else (" (no schema)", "dim"))),
                Text(f"{e.risk.tier.value} {e.risk.score}", style=tier_style[e.risk.tier.value]),
                shown[_status(e)],
            ]
            for e in entries
        ],
        title=f"policy: {policy.describe()}",
    )
    for name, error in failures.items():
        env.console.print(f"[red]upstream {name} unavailable:[/] {escape(str(error))}")
    for e in entries:
        if e.refused is not None:  # the guard's own words, and a path shown in ASCII
            env.console.print(Text(f"{e.name} is not served: its definition has {e.refused}"), highlight=False)


def _status(entry: Any) -> str:
    if entry.refused is not None:
        return "refused"
    if entry.withheld:
        return "new" if entry.new else "withheld"
    return "served"


@tools.command()
@common_options
def diff(env: Env) -> None:
    """Show tool definitions that changed since they were pinned, and tools that appeared after their
    upstream's first listing (both withheld until accepted)."""
    from guard_mcp._pins import PinStore, definition_diff

    pins = PinStore(env.state().database)
    try:
        pending = pins.pending()
    finally:
        pins.close()
    if env.as_json:
        print_json(
            [
                {
                    "upstream": p.upstream,
                    "tool": p.tool,
                    "new": p.new,
                    "pinned_hash": p.pinned_hash,
                    "pending_hash": p.pending_hash,
                    "pinned": p.pinned_definition,
                    "pending": p.pending_definition,
                }
                for p in pending
            ]
        )
        return
    if not pending:
        env.console.print("no changed or new tool definitions")
        return
    for p in pending:
        # the tool's name is the upstream's: shown with anything unprintable escaped, never as markup
        name = json.dumps(f"{p.upstream}__{p.tool}")[1:-1]
        was = "new tool" if p.pinned_hash is None else p.pinned_hash[:19]
        env.console.rule(Text(f"{name}  {was} → {(p.pending_hash or '')[:19]}"))
        for line in definition_diff(p):
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            # the upstream's own text, never read as markup (`[black on black]` would hide what changed)
            env.console.print(Text(line, style=style), highlight=False)
    env.console.print("\naccept one with `guard-mcp tools accept UPSTREAM__TOOL`, or all with `--all`")


@tools.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Accept every pending change.")
@common_options
def accept(env: Env, names: tuple[str, ...], all_: bool) -> None:
    """Accept changed tool definitions, so the guard serves them again."""

    from guard_mcp._errors import StateError
    from guard_mcp._pins import PinStore, accept_pending, exposed_name

    if not names and not all_:
        fail("name the tools to accept (`guard-mcp tools diff` lists them) or pass `--all`")
    pins = PinStore(env.state().database)
    try:
        targets = [exposed_name(p) for p in pins.pending()] if all_ else list(names)
        accepted: list[EventIn] = []
        for name in targets:
            try:
                p, data = accept_pending(pins, name, env.clock.now())
            except StateError as exc:
                record_events(env, accepted, done=f"accepted {len(accepted)} tool(s)")  # those before it still count
                fail(str(exc))
            env.console.print(f"accepted [bold]{name}[/] ({(p.pending_hash or '')[:19]})")
            accepted.append(EventIn("tool.pin_accepted", upstream=p.upstream, tool=name, data=data))
        record_events(env, accepted, done=f"accepted {len(accepted)} tool(s)")
    finally:
        pins.close()
    if not targets:
        env.console.print("nothing to accept")


from guard_mcp.cli._review import review  # noqa: E402 - its own module; registered here as `tools review`

tools.add_command(review)
