"""Real boundaries: the guard as a stdio subprocess, over streamable HTTP, upstreams as real
subprocesses and HTTP servers, and an upstream that dies mid-call."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import uvicorn
from guard_kit import TESTS, HandshakeOnly, RecordingUpstream, config_from, reason_of, running_guard, text_of
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from test_relay import SHOP_CONFIG, AskingUpstream, answering, elicitations

from guard_mcp._identity import http_token_path
from guard_mcp._state import StateDir
from guard_mcp._transports import build_http_app
from guard_mcp.demo.echo import build_echo

pytestmark = [pytest.mark.anyio, pytest.mark.subprocess]

FLAKY = f"""
  flaky:
    command: {sys.executable}
    args: ["{TESTS / "upstreams" / "flaky.py"}"]
    timeout: 10s
    tools:
      echo: {{category: read, reversibility: full, blast_radius: single, sensitivity: public}}
      crash: {{category: read, reversibility: full, blast_radius: single, sensitivity: public}}
"""
SLOW = "      slow: {category: read, reversibility: full, blast_radius: single, sensitivity: public}\n"


def _guard_process(config_text: str, state: StateDir, tmp_path: Path) -> tuple[StdioServerParameters, Path]:
    """A guard served over stdio whose process id lands in the returned file (to signal or kill it)."""
    config = tmp_path / "upstreams.yaml"
    config.write_text(config_text)
    pid_file = tmp_path / "guard.pid"
    params = StdioServerParameters(
        command="/bin/sh",
        args=[
            "-c",
            'echo $$ > "$0"; exec "$1" -m guard_mcp.cli serve --config "$2" --state-dir "$3"',
            str(pid_file),
            sys.executable,
            str(config),
            str(state.root),
        ],
    )
    return params, pid_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _http_server(app: Any) -> AsyncIterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


async def test_upstream_crash_mid_call_is_an_error_result_and_the_upstream_comes_back(state: StateDir) -> None:
    cfg = config_from("upstreams:" + FLAKY, state)
    async with running_guard(cfg, state) as guard, Client(guard.server) as client:
        crashed = await client.call_tool("flaky__crash", {})
        assert crashed.is_error and reason_of(crashed) == "upstream_error"
        with anyio.fail_after(15):
            while True:  # the supervisor restarts it with backoff
                result = await client.call_tool("flaky__echo", {"text": "back"})
                if not result.is_error:
                    break
                await anyio.sleep(0.1)
        assert text_of(result) == "back"
        assert guard.upstreams.handles["flaky"].restarts >= 1


async def test_two_upstreams_stdio_subprocess_and_streamable_http(state: StateDir) -> None:
    echo_app = build_echo().streamable_http_app(streamable_http_path="/mcp")
    async with _http_server(echo_app) as base:
        cfg = config_from(
            f"""
upstreams:
  remote:
    url: {base}/mcp
    tools:
      echo: {{category: read, reversibility: full, blast_radius: single, sensitivity: public}}
"""
            + FLAKY,
            state,
        )
        async with running_guard(cfg, state) as guard, Client(guard.server, mode="legacy") as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["flaky__crash", "flaky__echo", "flaky__slow", "remote__echo"]
            a = await client.call_tool("remote__echo", {"text": "over http"})
            b = await client.call_tool("flaky__echo", {"text": "over stdio"})
    assert text_of(a) == "over http" and text_of(b) == "over stdio"


async def test_guard_over_streamable_http_with_a_bearer_token(state: StateDir) -> None:
    cfg = config_from("upstreams:" + FLAKY, state)
    async with running_guard(cfg, state) as guard:
        app = build_http_app(guard, host="127.0.0.1", token="s3cret-token-0123456789")
        async with _http_server(app) as base:
            async with httpx2.AsyncClient() as plain:
                denied = await plain.post(f"{base}/mcp", json={})
                jwks = await plain.get(f"{base}/.well-known/jwks.json")
            assert denied.status_code == 401
            assert jwks.status_code == 200 and jwks.json()["keys"]
            for mode in ("legacy", "auto"):
                async with httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret-token-0123456789"}) as http:
                    transport = streamable_http_client(f"{base}/mcp", http_client=http)
                    async with Client(transport, mode=mode) as client:
                        result = await client.call_tool("flaky__echo", {"text": mode})
                        await client.call_tool("flaky__echo", {"text": mode})
                assert text_of(result) == mode
    # An HTTP session (handshake era) is one session for grants; a 2026-07-28 HTTP client has none.
    with sqlite3.connect(state.database) as conn:
        sessions = [
            r[0]
            for r in conn.execute(
                "SELECT json_extract(data, '$.session') FROM audit_events WHERE type = 'call.received' ORDER BY seq"
            )
        ]
    assert sessions[0] == sessions[1] and str(sessions[0]).startswith("ses_") and sessions[2:] == [None, None]


async def test_an_upstreams_question_rides_the_calls_own_stream_over_http(state: StateDir) -> None:
    up = AskingUpstream()
    shown: list[Any] = []
    async with (
        running_guard(config_from(SHOP_CONFIG, state), state, inprocess={"shop": HandshakeOnly(up.server)}) as guard,
        _http_server(build_http_app(guard, host="127.0.0.1", token=None)) as base,
    ):
        async with (
            httpx2.AsyncClient(headers=_bearer(state)) as http,
            Client(
                streamable_http_client(f"{base}/mcp", http_client=http),
                mode="legacy",
                elicitation_callback=answering(shown),
            ) as client,
        ):
            with anyio.fail_after(10):
                result = await client.call_tool("shop__ask", {})
    assert text_of(result) == "accept" and len(shown) == 1
    assert [(e["outcome"], e["action"]) for e in elicitations(state)] == [("relayed", "accept")]


async def test_the_guards_own_approval_prompt_reaches_a_client_over_http(state: StateDir) -> None:
    mail = (
        "upstreams:\n  mail:\n    command: unused-in-process\n    tools:\n      echo: {action: email.send, "
        "category: communicate, reversibility: none, blast_radius: single, sensitivity: confidential}\n"
    )
    up = RecordingUpstream()
    shown: list[Any] = []

    async def approve(context: Any, params: Any) -> Any:
        shown.append(params.message)
        return types.ElicitResult(action="accept", content={"decision": "approve"})

    async with (
        running_guard(config_from(mail, state), state, inprocess={"mail": up.server}) as guard,
        _http_server(build_http_app(guard, host="127.0.0.1", token=None)) as base,
    ):
        async with (
            httpx2.AsyncClient(headers=_bearer(state)) as http,
            Client(
                streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy", elicitation_callback=approve
            ) as client,
        ):
            with anyio.fail_after(20):
                result = await client.call_tool("mail__echo", {"text": "over http"})
    assert not result.is_error, text_of(result)
    assert len(shown) == 1 and [c[1]["text"] for c in up.calls] == ["over http"]


def _bearer(state: StateDir) -> dict[str, str]:
    """The header of the token a guard without `guard.http.token` made in its state directory."""
    return {"authorization": f"Bearer {http_token_path(state).read_text().strip()}"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_guard_as_a_stdio_subprocess(state: StateDir, tmp_path: Path, mode: str) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams:" + FLAKY)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guard_mcp.cli", "serve", "--config", str(config), "--state-dir", str(state.root)],
    )
    async with Client(params, mode=mode) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        result = await client.call_tool("flaky__echo", {"text": "through a real process"})
        await client.call_tool("flaky__echo", {"text": "again"})
    assert names == ["flaky__crash", "flaky__echo", "flaky__slow"]
    assert text_of(result) == "through a real process"
    # one stdio client is one session in either era: a session grant covers its next call
    with sqlite3.connect(state.database) as conn:
        sessions = [
            r[0]
            for r in conn.execute(
                "SELECT json_extract(data, '$.session') FROM audit_events WHERE type = 'call.received'"
            )
        ]
    assert len(sessions) == 2 and sessions[0] == sessions[1] and str(sessions[0]).startswith("ses_")


async def test_a_2026_client_over_stdio_hears_of_a_changed_tool_list_on_its_listen_stream(
    state: StateDir, tmp_path: Path
) -> None:
    from _policy_kit import make_signer, shop_source, write_bundle
    from mcp.shared.subscriptions import ToolsListChanged

    signer = make_signer(tmp_path / "keys")
    bundle = tmp_path / "shop.bundle.json"
    write_bundle(bundle, shop_source(1), signer)
    config = tmp_path / "upstreams.yaml"
    config.write_text(f"guard:\n  policy: {bundle}\n  trusted_policy_keys: [{signer.public_pem}]\nupstreams:" + FLAKY)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guard_mcp.cli", "serve", "--config", str(config), "--state-dir", str(state.root)],
    )
    async with Client(params) as client:  # 2026-07-28: no push, a listen stream
        assert "flaky__echo" in {t.name for t in (await client.list_tools()).tools}
        async with client.listen(tools_list_changed=True) as subscription:
            write_bundle(bundle, shop_source(2), signer)  # a new signed policy: every tool's risk may change
            with anyio.fail_after(20):
                event = await subscription.__anext__()
    assert isinstance(event, ToolsListChanged)


async def test_a_guard_killed_while_the_upstream_acts_leaves_a_call_the_next_start_marks_unresolved(
    state: StateDir, tmp_path: Path
) -> None:
    text = "upstreams:" + FLAKY + SLOW
    params, pid_file = _guard_process(text, state, tmp_path)

    def permitted() -> list[str]:
        with sqlite3.connect(state.database) as conn:
            return [r for (r,) in conn.execute("SELECT request_id FROM audit_events WHERE type = 'permit.issued'")]

    async def call_slow(client: Client) -> None:
        with contextlib.suppress(Exception):
            await client.call_tool("flaky__slow", {"seconds": 30})

    with contextlib.suppress(Exception):  # the session dies with the guard
        async with Client(params) as client, anyio.create_task_group() as tg:
            tg.start_soon(call_slow, client)
            with anyio.fail_after(20):
                while not permitted():  # noqa: ASYNC110 - another process writes it
                    await anyio.sleep(0.05)
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # mid-call: no result, no guard.stop
            tg.cancel_scope.cancel()
    [request_id] = permitted()

    async with running_guard(config_from(text, state), state):
        pass
    with sqlite3.connect(state.database) as conn:
        rows = conn.execute("SELECT request_id, data FROM audit_events WHERE type = 'call.unresolved'").fetchall()
    assert [(r, json.loads(d)["reason"]) for r, d in rows] == [(request_id, "guard_stopped")]


def _exited(pid: int) -> bool:
    """The process has ended (a zombie until its parent, here the SDK's client, reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _audit(state: StateDir, *types_: str) -> list[tuple[str, dict[str, Any]]]:
    marks = ",".join("?" * len(types_))
    with sqlite3.connect(state.database) as conn:
        rows = conn.execute(f"SELECT type, data FROM audit_events WHERE type IN ({marks}) ORDER BY seq", types_)
        return [(t, json.loads(d)) for t, d in rows]


async def test_sigterm_while_a_human_is_asked_cancels_the_approval_as_the_guard_stopping_and_seals_the_log(
    state: StateDir, tmp_path: Path
) -> None:
    # `write` is MEDIUM under the built-in tier defaults: the client is asked in band, and never answers.
    text = "upstreams:" + FLAKY.replace(
        "echo: {category: read, reversibility: full", "echo: {category: write, reversibility: none"
    )
    params, pid_file = _guard_process(text, state, tmp_path)
    asked = anyio.Event()

    async def never_answers(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        await anyio.sleep_forever()
        raise AssertionError

    async def call(client: Client) -> None:
        with contextlib.suppress(Exception):  # the guard goes away under it
            await client.call_tool("flaky__echo", {"text": "wait for me"})

    exited = False
    with contextlib.suppress(Exception):
        async with (
            Client(params, mode="legacy", elicitation_callback=never_answers) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(call, client)
            with anyio.fail_after(20):
                await asked.wait()
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGTERM)  # the client's stdin stays open: the guard must not wait for it
                while not _exited(pid):  # noqa: ASYNC110 - another process ends
                    await anyio.sleep(0.05)
                exited = True
            tg.cancel_scope.cancel()
    assert exited
    events = _audit(state, "approval.requested", "approval.cancelled", "guard.stop")
    [(_, requested), (_, cancelled), (_, stopped)] = events
    assert cancelled["approval_id"] == requested["approval_id"] and cancelled["reason"] == "guard_stopped"
    assert stopped == {"reason": "SIGTERM"}
    with sqlite3.connect(state.database) as conn:
        [(status,)] = conn.execute("SELECT state FROM approvals").fetchall()
    assert status == "cancelled"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sigterm_stops_a_guard_serving_http_cleanly_even_with_a_call_in_flight(
    state: StateDir, tmp_path: Path, mode: str
) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams:" + FLAKY + SLOW)
    port = _free_port()
    proc = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "guard_mcp.cli",
            "serve",
            "--transport",
            "http",
            "--port",
            str(port),
            "--config",
            str(config),
            "--state-dir",
            str(state.root),
        ]
    )
    answered: list[object] = []

    async def slow_call() -> None:
        try:
            async with (
                httpx2.AsyncClient(headers=_bearer(state)) as http,
                Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http), mode=mode) as client,
            ):
                answered.append(await client.call_tool("flaky__slow", {"seconds": 30}))
        except Exception as exc:  # the stream ends under it
            answered.append(exc)

    said = b""
    try:
        with anyio.fail_after(40):
            async with httpx2.AsyncClient() as http:
                while True:
                    with contextlib.suppress(httpx2.TransportError):
                        if (await http.get(f"http://127.0.0.1:{port}/.well-known/jwks.json")).status_code == 200:
                            break
                    await anyio.sleep(0.1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                while not _audit(state, "permit.issued"):  # noqa: ASYNC110 - another process writes it
                    await anyio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                code = await proc.wait()
            assert proc.stderr is not None
            async for chunk in proc.stderr:
                said += chunk
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0 and b"Traceback" not in said, said.decode()
    assert answered  # an answer or an ended stream, not a hang
    assert [t for t, _ in _audit(state, "call.unresolved", "guard.stop")] == ["call.unresolved", "guard.stop"]
    assert _audit(state, "guard.stop") == [("guard.stop", {"reason": "SIGTERM"})]


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
}
NOT_MESSAGES = [
    (b"{not json", -32700, None),
    (
        b'{"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
        -32700,
        None,
    ),  # nested past the parser's limit
    (b"   ", None, None),  # a blank line is not a message: no answer
    (b'{"foo": 1}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": 7, "method": 5}', -32600, 7),  # a request whose id can be read gets it back
    (b"[]", -32600, None),
]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_attack_a_line_that_is_not_a_message_is_answered_at_once_and_the_guard_keeps_serving(
    state: StateDir, tmp_path: Path, mode: str
) -> None:
    # Before, the SDK's stdio transport handed such a line to the server as an exception, which only
    # logged it: the client heard nothing and waited for its own timeout.
    from anyio.streams.buffered import BufferedByteReceiveStream

    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams:" + FLAKY)
    proc = await anyio.open_process(
        [sys.executable, "-m", "guard_mcp.cli", "serve", "--config", str(config), "--state-dir", str(state.root)],
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    wire = BufferedByteReceiveStream(proc.stdout)

    async def send(message: bytes | dict[str, Any]) -> None:
        assert proc.stdin is not None
        await proc.stdin.send((message if isinstance(message, bytes) else json.dumps(message).encode()) + b"\n")

    async def answer() -> dict[str, Any]:
        while True:  # notifications (a changed tool list) may come in between
            message: dict[str, Any] = json.loads(await wire.receive_until(b"\n", 1 << 20))
            if "id" in message:
                return message

    meta = {"_meta": MODERN_META} if mode == "auto" else {}
    expected = [(code, rid) for _, code, rid in NOT_MESSAGES if code is not None]
    try:
        with anyio.fail_after(30):
            if mode == "legacy":
                await send(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-11-25",
                            "capabilities": {},
                            "clientInfo": {"name": "raw", "version": "0"},
                        },
                    }
                )
                assert "result" in await answer()
                await send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            else:
                await send({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": meta})
                assert "result" in await answer()
            for line, _, _ in NOT_MESSAGES:
                await send(line)
            await send(
                {
                    "jsonrpc": "2.0",
                    "id": 9,
                    "method": "tools/call",
                    "params": {**meta, "name": "flaky__echo", "arguments": {"text": "still serving"}},
                }
            )
            answers = [await answer() for _ in range(len(expected) + 1)]
    finally:
        proc.kill()
        await proc.aclose()
    assert [(a["error"]["code"], a["id"]) for a in answers[:-1]] == expected
    assert all("\n" not in a["error"]["message"] and len(a["error"]["message"]) < 300 for a in answers[:-1])
    assert answers[-1]["id"] == 9 and answers[-1]["result"]["content"][0]["text"] == "still serving"
