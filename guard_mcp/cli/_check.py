"""`guard-mcp check`: validate the config, connect to each upstream, and say what is wrong or missing.

Loading already refuses what the guard cannot run (unknown keys, bad values). What loads but is
probably a mistake is a warning here, and a failure with `--strict`: a declared tool the upstream
does not serve (a typo leaves the real tool `unknown`), served tools with no action schema, proposals
nobody accepted. An upstream that never answers is named with how long it was waited for.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

import click
from rich.text import Text

from guard_mcp.cli._common import Env, Seconds, common_options, err_console, print_json, print_table

__all__ = ["check", "config_warnings"]

_LISTED = 8  # names shown in one warning before "and N more"


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def config_warnings(config: Any, served: dict[str, list[str]]) -> list[str]:
    """What loads but is probably wrong, for the upstreams that answered (`served`: their tool names)."""
    warnings: list[str] = []
    for name, tools in served.items():
        declared = config.upstreams[name].tools
        for tool in declared:
            if tool not in tools:
                close = difflib.get_close_matches(tool, tools, n=1)
                hint = f"; did you mean `{close[0]}`?" if close else f"; it serves {_names(sorted(tools))}"
                warnings.append(f"upstream `{name}` declares tool `{tool}`, which it does not serve{hint}")
        proposed = [t for t in tools if t in declared and declared[t].proposed]
        if proposed:
            warnings.append(
                f"upstream `{name}` has {len(proposed)} proposed action schema(s) nobody accepted yet "
                f"({_names(proposed)}): they count as `unknown`; run `guard-mcp tools review`"
            )
        missing = [t for t in tools if t not in declared]
        if missing:
            warnings.append(
                f"upstream `{name}` serves {len(missing)} tool(s) with no action schema ({_names(missing)}): "
                f"they count as `unknown`, so every call asks; declare them under `upstreams.{name}.tools`"
            )
    return warnings


@click.command()
@click.option(
    "--timeout",
    type=Seconds(min=0.1, max=3600),
    default=15.0,
    show_default=True,
    help="Seconds to wait for each upstream.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit non-zero on warnings too (declared tools not served, tools without a schema, proposals not reviewed).",
)
@common_options
def check(env: Env, timeout: float, strict: bool) -> None:
    """Validate the config, connect to each upstream, and report."""
    from guard_mcp.cli._probe import probe_upstreams

    config = env.config()
    enabled = [n for n, u in config.upstreams.items() if not u.disabled]
    if enabled and not env.as_json:
        err_console.print(f"connecting to {len(enabled)} upstream(s), waiting up to {timeout:g}s…", highlight=False,
                          markup=False)
    rows: list[dict[str, Any]] = [
        {"upstream": p.name, "transport": p.transport, "state": p.state, "tools": [t.name for t in p.tools],
         "error": p.error} for p in probe_upstreams(config, timeout)]
    ok = all(r["state"] == "ready" for r in rows)
    warnings = config_warnings(config, {r["upstream"]: r["tools"] for r in rows if r["state"] == "ready"})
    if env.as_json:
        print_json(
            {
                "config": str(config.source),
                "ok": ok and not (strict and warnings),
                "upstreams": rows,
                "warnings": warnings,
            }
        )
    else:
        env.console.print(
            Text(f"config {config.source}: valid · policy: {config.guard.policy or 'built-in tier defaults'}"),
            highlight=False,
        )
        print_table(env, ["upstream", "transport", "state", "tools", "error"], [
            [r["upstream"], r["transport"], Text(r["state"], style="green" if r["state"] == "ready" else "red"),
             len(r["tools"]), r["error"] or ""] for r in rows])
        for warning in warnings:
            err_console.print(Text.assemble(("warning:", "bold yellow"), " ", warning), highlight=False, soft_wrap=True)
    if not ok or (strict and warnings):
        sys.exit(1)
