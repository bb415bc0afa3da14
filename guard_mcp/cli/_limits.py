"""`guard-mcp limits`: what each limited tool has used of each of its limits, per principal, right now."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import click
from rich import box
from rich.table import Table

from guard_mcp.cli._common import Env, common_options, print_json, print_table

__all__ = ["limits"]


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


@click.command()
@common_options
def limits(env: Env) -> None:
    """Usage against each tool's `limits`, per principal, in each rolling window now."""
    from guard_mcp._limits import Usage, UsageStore, cap_of, configured_limits, limit_key, number_text, window_text

    env.note_if_unused()
    config = env.config()
    configured = configured_limits(config)
    rows: list[dict[str, Any]] = []

    async def main() -> None:
        store = await UsageStore.open(env.state(), env.clock, store=config.guard.store)
        try:
            for (upstream, tool), group in configured.items():
                key = limit_key(upstream, tool)
                for limit in group:
                    cap = cap_of(limit)
                    found = await store.usage(key, limit)
                    if not found:  # nothing used yet: show the limit all the same
                        found = [Usage("*" if limit.per == "all" else config.guard.principal, Decimal(0))]
                    for usage in found:
                        left = max(Decimal(0), cap - usage.used)
                        rows.append(
                            {
                                "tool": key,
                                "actor": usage.actor,
                                "per": limit.per,
                                "window": window_text(limit.window),
                                "window_s": limit.window,
                                "measure": "calls" if limit.sum is None else limit.sum,
                                "used": _number(usage.used),
                                "limit": _number(cap),
                                "remaining": _number(left),
                                "_text": (number_text(usage.used), number_text(cap), number_text(left)),
                            }
                        )
        finally:
            await store.close()

    if configured:
        anyio.run(main)
    if env.as_json:
        print_json({"limits": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]})
        return
    if not rows:
        env.console.print("no tool has `limits`; add them next to `constraints` in upstreams.yaml")
        return
    columns = ["tool", "principal", "limit", "window", "used", "left"]
    if env.plain:  # piped, or --plain: one tab-separated line a limit
        print_table(
            env,
            columns,
            [
                [r["tool"], _who(r), f"{_what(r)} ≤ {r['_text'][1]}", r["window"], r["_text"][0], r["_text"][2]]
                for r in rows
            ],
        )
        return
    table = Table(title="Usage limits", title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        if column == "tool":  # names are one word: room for them, folded only past 40 characters
            table.add_column(column, overflow="fold", min_width=min(40, max(len(str(r["tool"])) for r in rows)))
        else:
            table.add_column(column, no_wrap=True)
    for r in rows:
        used, cap, left_text = r["_text"]
        left = r["remaining"]
        style = "red" if left == 0 else "yellow" if left <= r["limit"] * 0.2 else "green"
        table.add_row(r["tool"], _who(r), f"{_what(r)} ≤ {cap}", r["window"], used, f"[{style}]{left_text}[/]")
    env.console.print(table)


def _what(row: dict[str, Any]) -> str:
    return "calls" if row["measure"] == "calls" else f"sum of `{row['measure']}`"


def _who(row: dict[str, Any]) -> str:
    return "everyone" if row["actor"] == "*" else str(row["actor"])
