"""`guard-mcp limits`: what each limited tool has used of each of its limits, per principal, right now."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import click
from rich import box
from rich.table import Table

from guard_mcp.cli._common import Env, common_options, print_json

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
                        rows.append({
                            "tool": key, "actor": usage.actor, "per": limit.per, "window": window_text(limit.window),
                            "window_s": limit.window, "measure": "calls" if limit.sum is None else limit.sum,
                            "used": _number(usage.used), "limit": _number(cap),
                            "remaining": _number(left),
                            "_text": (number_text(usage.used), number_text(cap), number_text(left)),
                        })
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
    table = Table(title="Usage limits", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("tool", "principal", "limit", "window", "used", "left"):
        if column == "tool":  # names are one word: room for them, folded only past 40 characters
            table.add_column(column, overflow="fold", min_width=min(40, max(len(str(r["tool"])) for r in rows)))
        else:
            table.add_column(column, no_wrap=True)
    for r in rows:
        used, cap, left_text = r["_text"]
        what = "calls" if r["measure"] == "calls" else f"sum of `{r['measure']}`"
        left = r["remaining"]
        style = "red" if left == 0 else "yellow" if left <= r["limit"] * 0.2 else "green"
        actor = "everyone" if r["actor"] == "*" else r["actor"]
        table.add_row(r["tool"], actor, f"{what} ≤ {cap}", r["window"], used, f"[{style}]{left_text}[/]")
    env.console.print(table)
