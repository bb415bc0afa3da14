"""`guard-mcp serve` (`guard-mcp check` is in `_check`)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from guard_mcp._errors import GuardError
from guard_mcp.cli._common import Env, common_options, fail, print_json

__all__ = ["serve"]


def _banner(console: Console, guard: Any, transport: str, where: str) -> None:
    policy = guard.policy
    style = {"loaded": "green", "defaults": "bold yellow", "refused": "bold red"}.get(policy.status, "red")
    console.print(
        f"[bold]guard-mcp[/] serving on {transport} {where} · environment [bold]{guard.config.guard.environment}[/]"
    )
    console.print(f"policy: [{style}]{policy.describe()}[/]")
    if policy.status == "refused":
        console.print(
            "[bold red]the configured policy did not verify: every guarded call is denied "
            "(policy_unavailable) until a valid signed bundle is in place[/]"
        )
    report = getattr(guard.audit, "startup_verification", None)
    if report is not None and not getattr(report, "ok", True):
        console.print(f"[bold red]audit log does not verify: {report}[/]")
    for handle in guard.upstreams.handles.values():
        # the error is the upstream's own text: shown, never read as markup
        mark = "[green]ready[/]" if handle.state == "ready" else f"[red]{handle.state}[/] {escape(handle.error or '')}"
        console.print(f"  upstream [bold]{handle.name}[/]: {mark} ({len(handle.tools)} tools)")


async def _stop_on_signal(guard: Any, console: Console) -> None:
    """SIGTERM (a service manager, a client closing the server), SIGINT or SIGHUP stop the guard the way
    a closed stdin does: calls in flight are cancelled and recorded, the audit log is flushed and sealed."""
    if sys.platform == "win32":  # no signal receivers there; Ctrl-C still interrupts
        return
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            console.print(f"guard-mcp: stopping on {name}")
            guard.stopping(name)
            return


@contextlib.asynccontextmanager
async def _console(
    guard: Any, console: Console, tg: Any, *, http_host: str | None, http_port: int | None
) -> AsyncIterator[Any]:
    """The web console of this guard: under `/console` of the HTTP transport (its app is yielded, to
    mount), or, for stdio, on its own loopback listener (served here, None yielded)."""
    from guard_mcp._console import console_enabled, open_guard_console, serve_console
    from guard_mcp._transports import LOOPBACK, bind_http

    cfg = guard.config.guard.console
    host = http_host if http_host is not None else cfg.host
    if not console_enabled(cfg, host):
        yield None
        return
    if host not in LOOPBACK and not cfg.public_url:
        fail(
            f"the console on `{host}` needs `guard.console.public_url` (an https:// address browsers reach it at); "
            "or set `guard.console.enabled: false`"
        )
    sock = None
    if http_port is None:
        try:
            sock = bind_http(host, cfg.port)
        except GuardError as exc:  # another guard on this machine has the port: take a free one, and say which
            if cfg.port == 0:
                raise
            console.print(f"console: {exc}; using a free port instead")
            sock = bind_http(host, 0)
        http_port = sock.getsockname()[1]
    name = "localhost" if host in LOOPBACK else host
    url = f"http://{'[' + name + ']' if ':' in name else name}:{http_port}/console"
    async with open_guard_console(guard, listen_host=host, url=url) as app:
        console.print(f"console: {cfg.public_url or url}/ (approvers sign in with a passkey)")
        if sock is None:
            yield app
            return
        from guard_mcp._telemetry import with_metrics

        tg.start_soon(
            serve_console, with_metrics(app, guard.metrics, guard.config.guard.metrics), sock, guard.stop_requested
        )
        yield None


@click.command()
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True)
@click.option("--host", default=None, help="HTTP bind address (default: guard.http.host, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="HTTP port (default: guard.http.port, 8765; 0 picks a free one).",
)
@click.option("--verbose", "-v", is_flag=True, help="Log to stderr.")
@click.option(
    "--print-token",
    is_flag=True,
    help="Print the HTTP bearer token (made now if need be) and how a client passes it, then exit.",
)
@common_options
def serve(env: Env, transport: str, host: str | None, port: int | None, verbose: bool, print_token: bool) -> None:
    """Serve the guarded tools to an MCP client (stdio by default)."""
    from guard_mcp._identity import http_token, http_token_path
    from guard_mcp._server import open_guard
    from guard_mcp._transports import bind_http, serve_http, serve_stdio

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    for chatty in ("httpx", "httpx2", "httpcore"):  # they log every request's URL, query keys and userinfo included
        logging.getLogger(chatty).setLevel(logging.WARNING)
    config = env.config()
    state = env.state()
    console = Console(stderr=True)
    for warning in config.warnings:
        console.print(Text.assemble(("warning:", "bold yellow"), " ", warning), highlight=False, soft_wrap=True)
    http = config.guard.http
    bind_host = host or http.host
    bind_port = port if port is not None else http.port
    if print_token and http.auth is not None:
        fail(
            f"this guard takes no shared token: HTTP callers sign in with `{http.auth.issuer}` (`guard.http.auth`) "
            "and send its access token; standard MCP clients find it from the guard's 401"
        )
    if print_token:
        _print_token(
            env,
            *http_token(config, state),
            url=f"http://{_url_host(bind_host)}:{bind_port or 8765}/mcp",
            stored=None if http.token else str(http_token_path(state)),
        )
        return
    token: str | None = None
    if transport == "http" and http.auth is None:  # every HTTP caller presents a bearer token, loopback included
        token, made = http_token(config, state)
        if made:
            console.print(
                f"guard-mcp: generated an HTTP bearer token in {http_token_path(state)}; "
                "`guard-mcp serve --print-token` shows it and how a client passes it"
            )
    sock = bind_http(bind_host, bind_port) if transport == "http" else None  # a taken port fails here, at once
    from guard_mcp._telemetry import configure_tracing

    tracer_provider = configure_tracing()  # OTEL_* asks for spans, or tracing stays off (docs/operations.md)

    async def main() -> None:
        async with open_guard(config, state) as guard, anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, guard, console)
            where = "stdin/stdout" if sock is None else f"http://{bind_host}:{sock.getsockname()[1]}/mcp"
            _banner(console, guard, transport, where)
            if sock is None:
                async with _console(guard, console, tg, http_host=None, http_port=None):
                    await serve_stdio(guard)
            else:
                auth = (
                    "bearer token required (`guard-mcp serve --print-token` shows it)"
                    if http.auth is None
                    else f"access tokens of `{http.auth.issuer}` required; the caller is their "
                    f"`{http.auth.principal_claim}` claim"
                )
                console.print(f"HTTP: {auth}; browser origins allowed: {', '.join(http.allowed_origins) or 'loopback'}")
                async with _console(guard, console, tg, http_host=bind_host, http_port=sock.getsockname()[1]) as app:
                    await serve_http(
                        guard, sock, host=bind_host, token=token, origins=http.allowed_origins, console=app
                    )
            tg.cancel_scope.cancel()  # served to the end: the signal watch is over too

    try:
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(main)
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # the spans still batched are exported before the process ends


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _print_token(env: Env, token: str, made: bool, *, url: str, stored: str | None) -> None:
    """The token on stdout (a script can take it from there), how to pass it on stderr."""
    header = f"Authorization: Bearer {token}"
    if env.as_json:
        print_json({"token": token, "header": header, "url": url, "stored": stored, "generated": made})
        return
    click.echo(token)
    where = f"kept in {stored}" if stored else "from `guard.http.token`"
    snippet = {
        "mcpServers": {"guard-mcp": {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {token}"}}}
    }
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(
        f"\nthe guard's HTTP bearer token ({'generated now, ' if made else ''}{where}); every HTTP client sends it "
        "as a header:\n"
    )
    err.print(f"  {escape(header)}\n")
    err.print("in a client's configuration (Claude Code, Cursor, VS Code and others read this shape):\n")
    err.print(escape(json.dumps(snippet, indent=2)))
    err.print(f'\nor: claude mcp add --transport http guard-mcp {url} --header "{escape(header)}"')
