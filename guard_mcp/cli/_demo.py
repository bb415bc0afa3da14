"""`guard-mcp demo`: the embedded demo, end to end, as a readable timeline."""

from __future__ import annotations

import sys
import tempfile

import anyio
import click

from guard_mcp.cli._common import Env, common_options

__all__ = ["demo"]


@click.command()
@common_options
def demo(env: Env) -> None:
    """Run a scripted agent and human through the guard against the demo shop."""
    from guard_mcp._state import StateDir
    from guard_mcp.demo._runner import run_demo

    if env.state_dir is None:  # a fresh state directory unless one is given: the demo is repeatable
        env.state_dir = tempfile.mkdtemp(prefix="guard-mcp-demo-")
    state: StateDir = env.state()
    config = env.config()
    ok = anyio.run(run_demo, config, state, env.console)
    sys.exit(0 if ok else 1)
