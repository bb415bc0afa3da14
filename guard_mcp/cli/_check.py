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

from guard_mcp._clock import Clock
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
                f"they count as `unknown`, so every call asks; `guard-mcp tools review --propose` proposes "
                "a schema for each to accept, or declare them under `upstreams.{name}.tools`"
            )
    return warnings


def _logins(config: Any, state: Any, clock: Clock) -> dict[str, dict[str, Any]]:
    if state is None:
        return {}
    import anyio

    from guard_mcp._identity import login_states

    found = anyio.run(login_states, config, state, clock)
    return {
        name: {"logged_in": s.logged_in, "expires_at": s.expires_at, "refreshable": s.refreshable, "note": s.note}
        for name, s in found.items()
    }


def login_cell(login: dict[str, Any] | None, now: float) -> Text:
    """An OAuth upstream's login, as `check` shows it at `now`: logged in until when, or why a login is needed."""
    if login is None:
        return Text("-")
    if not login["logged_in"]:
        return Text(f"needed: {login['note']} (`guard-mcp login`)", style="red")
    if login["expires_at"] is None:
        return Text("logged in", style="green")
    left = login["expires_at"] - now
    refresh = ", refreshed" if login["refreshable"] else ", then log in again"
    return Text(
        f"logged in, token {'expired' if left <= 0 else f'expires in {int(left)}s'}{refresh}",
        style="green" if left > 0 or login["refreshable"] else "yellow",
    )


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
    # `auth: oauth` upstreams connect with the logins kept in the state directory; `check` shows each one's.
    oauth = [n for n, u in config.upstreams.items() if getattr(u, "auth", None) is not None]
    state = env.state() if oauth else None
    logins = _logins(config, state, env.clock)
    enabled = [n for n, u in config.upstreams.items() if not u.disabled]
    if enabled and not env.as_json:
        err_console.print(
            f"connecting to {len(enabled)} upstream(s), waiting up to {timeout:g}s…", highlight=False, markup=False
        )
    rows: list[dict[str, Any]] = [
        {
            "upstream": p.name,
            "transport": p.transport,
            "state": p.state,
            "tools": [t.name for t in p.tools],
            "error": p.error,
            **({"login": logins[p.name]} if p.name in logins else {}),
        }
        for p in probe_upstreams(config, timeout, state=state)
    ]
    ok = all(r["state"] == "ready" for r in rows)
    warnings = [
        *config.warnings,
        *config_warnings(config, {r["upstream"]: r["tools"] for r in rows if r["state"] == "ready"}),
    ]
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
        print_table(
            env,
            ["upstream", "transport", "state", "tools", *(["login"] if oauth else []), "error"],
            [
                [
                    r["upstream"],
                    r["transport"],
                    Text(r["state"], style="green" if r["state"] == "ready" else "red"),
                    len(r["tools"]),
                    *([login_cell(r.get("login"), env.clock.now())] if oauth else []),
                    r["error"] or "",
                ]
                for r in rows
            ],
        )
        for warning in warnings:
            err_console.print(Text.assemble(("warning:", "bold yellow"), " ", warning), highlight=False, soft_wrap=True)
    if not ok or (strict and warnings):
        sys.exit(1)
