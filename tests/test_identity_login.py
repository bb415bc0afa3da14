"""`guard-mcp login UPSTREAM` as a command, end to end: a real OpenID provider and an OAuth-protected
upstream on loopback, the command in its own process, the user's browser scripted over HTTP."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from guard_kit import running_guard, text_of
from mcp import Client
from oauth_kit import Browser, running_op, running_upstream

from guard_mcp._clock import FakeClock
from guard_mcp._config import load_config
from guard_mcp._identity import login_states
from guard_mcp._state import StateDir

pytestmark = [pytest.mark.anyio, pytest.mark.subprocess]

ROOT = Path(__file__).parent.parent
READ = "{category: read, reversibility: full, blast_radius: single, sensitivity: public}"


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "upstreams.yaml"
    path.write_text(
        f"upstreams:\n  remote:\n    url: {url}\n    auth: {{type: oauth, scope: mcp}}\n"
        f"    tools:\n      whoami: {READ}\n      echo_auth: {READ}\n"
    )
    return path


async def _login(config: Path, state: StateDir, *args: str, browser: str | None) -> anyio.abc.Process:
    env = {k: v for k, v in os.environ.items() if k != "BROWSER"}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="250", **({"BROWSER": browser} if browser else {}))
    return await anyio.open_process(
        [
            sys.executable,
            "-m",
            "guard_mcp.cli",
            "login",
            "remote",
            *args,
            "--config",
            str(config),
            "--state-dir",
            str(state.root),
            "--timeout",
            "60",
        ],
        env=env,
        cwd=ROOT,
    )


async def _shown_url(proc: anyio.abc.Process, issuer: str) -> tuple[str, str]:
    """What the command shows until it waits for the browser, and the authorization URL in it."""
    assert proc.stderr is not None
    shown = b""
    with anyio.fail_after(60):
        async for chunk in proc.stderr:
            shown += chunk
            if b"waiting for the browser" in shown:
                break
    [url] = [line.strip() for line in shown.decode().splitlines() if line.strip().startswith(issuer)]
    return shown.decode(), url


async def _finish(proc: anyio.abc.Process) -> tuple[int, str, str]:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = b"", b""
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:

            async def read_out() -> None:
                nonlocal out
                async for chunk in proc.stdout:  # type: ignore[union-attr]
                    out += chunk

            tg.start_soon(read_out)
            async for chunk in proc.stderr:
                err += chunk
        code = await proc.wait()
    return code, out.decode(), err.decode()


async def test_login_opens_the_browser_stores_the_tokens_check_shows_them_and_the_guard_calls_as_the_user(
    tmp_path: Path, state: StateDir
) -> None:
    async with running_op() as op, running_upstream(op) as upstream:
        config = _config(tmp_path, upstream.url)
        proc = await _login(
            config, state, "--json", browser=f"{sys.executable} {ROOT / 'tests' / 'oauth_browser.py'} %s"
        )
        code, out, err = await _finish(proc)
        assert code == 0, err
        said = json.loads(out)
        assert said["upstream"] == "remote" and said["tools"] == 2 and said["refreshable"] is True
        assert said["expires_at"] == pytest.approx(time.time() + 600, abs=30)
        [url] = [line.strip() for line in err.splitlines() if line.strip().startswith(op.issuer)]
        assert "code_challenge_method=S256" in url and "resource=" in url  # PKCE, RFC 8707
        checked = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "guard_mcp.cli",
                "check",
                "--json",
                "--config",
                str(config),
                "--state-dir",
                str(state.root),
                "--timeout",
                "20",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            check=False,
        )
        [row] = json.loads(checked.stdout)["upstreams"]
        assert row["state"] == "ready" and sorted(row["tools"]) == ["echo_auth", "whoami"], checked.stderr
        assert row["login"]["logged_in"] and row["login"]["expires_at"] == said["expires_at"]
        upstream.headers_seen.clear()
        cfg = load_config(config, environ={}, builtins={"GUARD_STATE_DIR": str(state.root)})
        async with running_guard(cfg, state, clock=FakeClock(time.time())) as guard, Client(guard.server) as client:
            result = await client.call_tool("remote__whoami", {})
    assert text_of(result) == "you are alice", text_of(result)
    assert upstream.unauthenticated() == []
    tokens = [t for t in upstream.tokens_seen if t]
    assert tokens and not any(t in out or t in err for t in tokens)  # the command shows no token


async def test_login_without_a_browser_prints_the_url_and_waits_for_the_redirect(
    tmp_path: Path, state: StateDir
) -> None:
    async with running_op() as op, running_upstream(op) as upstream:
        config = _config(tmp_path, upstream.url)
        proc = await _login(config, state, "--no-browser", browser="false %s")
        shown, url = await _shown_url(proc, op.issuer)
        await Browser().open(url)  # the user opens it on another machine
        code, out, err = await _finish(proc)
    assert code == 0, err
    assert "logged in to remote: 2 tools" in out and "refreshed before then" in out
    assert "no browser could be started" not in shown


async def test_a_login_the_user_refuses_is_one_line_and_stores_nothing(tmp_path: Path, state: StateDir) -> None:
    async with running_op() as op, running_upstream(op) as upstream:
        config = _config(tmp_path, upstream.url)
        proc = await _login(config, state, "--no-browser", browser=None)
        _, url = await _shown_url(proc, op.issuer)
        await Browser(cancel=True).open(url)  # the user cancels on the provider's login page
        code, out, err = await _finish(proc)
    assert code == 2 and out == "" and "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if "access_denied" in ln]
    assert "login to `remote` did not finish" in line and "run it again" in line
    check = load_config(config, environ={}, builtins={"GUARD_STATE_DIR": str(state.root)})
    states = await login_states(check, state, FakeClock(time.time()))
    assert not states["remote"].logged_in
