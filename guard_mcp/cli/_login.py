"""`guard-mcp login UPSTREAM`: sign the guard in to an OAuth upstream in the user's browser."""

from __future__ import annotations

import logging
import webbrowser

import anyio
import click
from rich.console import Console

from guard_mcp.cli._common import Env, Seconds, common_options, print_json

__all__ = ["login"]


@click.command()
@click.argument("upstream")
@click.option("--no-browser", is_flag=True, help="Only print the URL to open (on another machine, say).")
@click.option(
    "--timeout",
    type=Seconds(min=10, max=3600),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the browser to come back.",
)
@common_options
def login(env: Env, upstream: str, no_browser: bool, timeout: float) -> None:
    """Log the guard in to an `auth: oauth` upstream in the browser; its tokens are kept sealed in the guard's store."""
    from guard_mcp._identity import login as run_login

    config = env.config()
    state = env.state()
    # The SDK logs a failed flow with its traceback; the command says what failed in one line instead.
    logging.getLogger("mcp.client.auth").setLevel(logging.CRITICAL)
    err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)  # the URL is the upstream's text

    async def show(url: str) -> None:
        err.print(f"open this URL to log the guard in to `{upstream}`:\n\n  {url}\n")
        if not no_browser:
            opened = await anyio.to_thread.run_sync(webbrowser.open, url)
            if not opened:
                err.print("(no browser could be started here: open the URL yourself)")
        err.print(f"waiting for the browser to come back (up to {timeout:g}s)…")

    result = anyio.run(lambda: run_login(config, state, upstream, clock=env.clock, open_url=show, wait=timeout))
    left = None if result.expires_at is None else max(0, round(result.expires_at - env.clock.now()))
    if env.as_json:
        print_json(
            {
                "upstream": result.upstream,
                "tools": result.tools,
                "expires_at": result.expires_at,
                "refreshable": result.refreshable,
            }
        )
        return
    expiry = "no expiry given" if left is None else f"the token expires in {left}s"
    refresh = "and is refreshed before then" if result.refreshable else "and cannot be refreshed: log in again then"
    env.console.print(f"logged in to [bold]{upstream}[/]: {result.tools} tools; {expiry} {refresh}")
