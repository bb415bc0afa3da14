"""No anonymous HTTP callers: without an identity provider, every bind needs the guard's bearer token."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from click.testing import CliRunner
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, running_guard
from identity_kit import INIT, MCP_HEADERS, wait_until_served

from guard_mcp._errors import StateError
from guard_mcp._identity import http_token, http_token_path
from guard_mcp._state import StateDir
from guard_mcp._transports import bind_http, serve_http
from guard_mcp.cli import main

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def served(state: StateDir) -> AsyncIterator[str]:
    """The guard over HTTP on loopback with no token configured, as `guard-mcp serve --transport http` runs it."""
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        sock = bind_http("127.0.0.1", 0)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve_http(guard, sock, host="127.0.0.1", token=None))
            await wait_until_served(base)
            yield base
            tg.cancel_scope.cancel()


async def test_attack_a_local_process_without_the_token_is_refused_on_loopback(state: StateDir) -> None:
    # Before, a loopback bind without `guard.http.token` served anyone on the machine: every guarded tool.
    async with served(state) as base, httpx2.AsyncClient(headers=MCP_HEADERS) as http:
        anonymous = await http.post(f"{base}/mcp", json=INIT)
        guessed = await http.post(f"{base}/mcp", json=INIT, headers={"authorization": "Bearer " + "g" * 43})
        token = http_token_path(state).read_text().strip()
        holder = await http.post(f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {token}"})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert guessed.status_code == 401
    assert holder.status_code == 200


def test_the_generated_token_is_kept_0600_and_the_same_at_every_start(state: StateDir) -> None:
    config = config_from("upstreams: {}\n", state)
    token, made = http_token(config, state)
    again, made_again = http_token(config, state)
    path = http_token_path(state)
    assert made and not made_again and token == again and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_attack_a_token_file_others_can_read_is_refused(state: StateDir) -> None:
    config = config_from("upstreams: {}\n", state)
    http_token(config, state)
    os.chmod(http_token_path(state), 0o644)
    with pytest.raises(StateError, match="readable by others"):
        http_token(config, state)


def test_a_configured_token_wins_and_nothing_is_stored(state: StateDir) -> None:
    config = config_from("guard:\n  http: {token: configured-token-0123456789}\nupstreams: {}\n", state)
    assert http_token(config, state) == ("configured-token-0123456789", False)
    assert not http_token_path(state).exists()


def test_print_token_prints_the_stored_token_and_how_to_pass_it(tmp_path: Path) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams: {}\n")
    args = ["serve", "--print-token", "--port", "9001", "--config", str(config), "--state-dir", str(tmp_path / "s")]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    token = (tmp_path / "s" / "keys" / "http.token").read_text().strip()
    assert first.stdout.strip() == second.stdout.strip() == token
    assert f"Authorization: Bearer {token}" in first.stderr
    assert '"url": "http://127.0.0.1:9001/mcp"' in first.stderr
