"""`guard-mcp simulate`: run the built-in attack scenarios against a real guard and the demo shop."""

from __future__ import annotations

import sys

import anyio
import click
from rich.table import Table
from rich.text import Text

from guard_mcp.cli._common import Env, common_options, fail, print_json

__all__ = ["simulate"]


@click.command()
@click.option(
    "--scenario",
    "-s",
    "scenarios",
    type=int,
    multiple=True,
    help="Run only this scenario (repeatable). Default: all of them.",
)
@click.option("--keep", is_flag=True, help="Keep every scenario's state directory (failed ones are always kept).")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=8),
    default=2,
    show_default=True,
    help="Scenarios run at the same time.",
)
@common_options
def simulate(env: Env, scenarios: tuple[int, ...], keep: bool, concurrency: int) -> None:
    """Attack a real guard (its own process, over stdio) in front of the real demo shop, and show
    what stopped each attack. Each scenario uses a fresh state directory and the embedded demo
    configuration; `--config` and `--state-dir` are not used. Exit status 1 if any attack got through."""
    from guard_mcp.demo import SCENARIOS, ScenarioResult, run_scenarios

    unknown = [n for n in scenarios if n not in SCENARIOS]
    if unknown:
        fail(f"no scenario {unknown[0]}; scenarios are {min(SCENARIOS)}..{max(SCENARIOS)}")

    def progress(r: ScenarioResult) -> None:
        if not env.as_json:
            mark = "[green]held[/]" if r.held else "[bold red]FAILED[/]"
            env.console.print(f"  {r.number:>2}. {r.title}: {mark} [dim]({r.seconds:.1f} s)[/]", highlight=False)

    if not env.as_json:
        env.console.print(
            f"[bold]guard-mcp simulate[/]: {len(scenarios or SCENARIOS)} scenarios, each against a "
            "fresh guard process and the demo shop"
        )
    results = anyio.run(
        lambda: run_scenarios(list(scenarios) or None, keep=keep, concurrency=concurrency, on_result=progress)
    )
    ok = all(r.held for r in results)
    if env.as_json:
        print_json({"ok": ok, "scenarios": [r.as_dict() for r in results]})
    else:
        table = Table(title="attacks against guard-mcp", show_lines=True)
        for col in ("#", "scenario", "what the attacker tried", "what the guard did", "evidence", "result"):
            table.add_column(col, overflow="fold")
        for r in results:
            table.add_row(
                str(r.number),
                r.title,
                r.attack,
                r.guard_did,
                r.evidence + (f"\nstate: {r.state_dir}" if r.state_dir else ""),
                Text("held", style="bold green") if r.held else Text("FAILED", style="bold red"),
            )
        env.console.print(table)
        held = sum(r.held for r in results)
        style = "bold green" if ok else "bold red"
        env.console.print(f"[{style}]{held}/{len(results)} attacks stopped[/]")
    sys.exit(0 if ok else 1)
