"""`guard-mcp demo`: the embedded demo, end to end, as a readable timeline.

The demo is sealed: it always runs in a fresh temporary state directory with the embedded
upstreams.yaml, whatever `GUARD_MCP_HOME`, the environment and the working directory hold, so it can
never write scripted calls into a real guard's audit log or enrol an approver there.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import anyio
import click
from rich.console import Console

from guard_mcp.cli._common import describe_error, embedded_config_path, err_console, fail, print_json

__all__ = ["demo"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (and nothing else on stdout).")
def demo(as_json: bool) -> None:
    """Run a scripted agent and human through the guard against the demo shop.

    Always in a new temporary state directory, with the embedded configuration: your own
    GUARD_MCP_HOME and ./upstreams.yaml are never read or written.
    """
    from guard_mcp._config import load_config
    from guard_mcp._state import StateDir
    from guard_mcp.demo import run_demo

    state = StateDir(Path(tempfile.mkdtemp(prefix="guard-mcp-demo-"))).ensure()
    source = embedded_config_path()
    # No environment either: only the interpreter and the demo's own state directory are substituted.
    config = load_config(source, environ={}, builtins={"PYTHON": sys.executable, "GUARD_STATE_DIR": str(state.root)})
    console = Console(file=io.StringIO()) if as_json else Console()
    if not as_json:
        err_console.print(
            f"demo: a new state directory `{state.root}` and the embedded config; your GUARD_MCP_HOME "
            "and ./upstreams.yaml are not used",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    try:
        report = anyio.run(run_demo, config, state, console)
    except Exception as exc:  # one line, never a task group's traceback
        fail(f"the demo stopped: {describe_error(exc)}; its state is in `{state.root}`", code=1)
    if as_json:
        print_json(report.as_json())
    elif report.error is not None:
        fail(report.error, code=1)
    sys.exit(0 if report.ok else 1)
