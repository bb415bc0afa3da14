"""The HTTP boundary of a served guard: origins, the bearer token, slow clients, the listening port."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from click.testing import CliRunner
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, running_guard, text_of
from identity_kit import INIT, MCP_HEADERS, wait_until_served
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from guard_mcp import _transports
from guard_mcp._config import load_config
from guard_mcp._errors import ConfigError
from guard_mcp._state import StateDir
from guard_mcp._transports import bind_http, serve_http
from guard_mcp.cli import main

pytestmark = pytest.mark.anyio

TOKEN = "tok-" + "x" * 28


@contextlib.asynccontextmanager
async def served(
    state: StateDir, *, host: str = "127.0.0.1", token: str | None = TOKEN, origins: list[str] | None = None
) -> AsyncIterator[str]:
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        sock = bind_http("127.0.0.1", 0)
        port = sock.getsockname()[1]
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve_http(guard, sock, host=host, token=token, origins=origins))
            base = f"http://127.0.0.1:{port}"
            await wait_until_served(base)
            yield base
            guard.stop_requested.set()  # uvicorn stops as for a signal: it closes its socket and connections


def _events(state: StateDir, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(state.database) as conn:
        return [json.loads(d) for (d,) in conn.execute("SELECT data FROM audit_events WHERE type = ?", (kind,))]


async def test_attack_a_request_from_a_foreign_origin_is_refused_even_on_a_wide_bind(state: StateDir) -> None:
    # Bound to every interface the SDK checks neither Host nor Origin; a page in the user's browser
    # could then drive the guard (DNS rebinding). The gate refuses any Origin not allowed.
    async with (
        served(state, host="0.0.0.0", origins=["https://app.example.com"]) as base,
        httpx2.AsyncClient(headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}) as http,
    ):
        evil = await http.post(f"{base}/mcp", json=INIT, headers={"origin": "http://evil.example"})
        allowed = await http.post(f"{base}/mcp", json=INIT, headers={"origin": "https://app.example.com"})
        plain = await http.post(f"{base}/mcp", json=INIT)  # no Origin: not a browser
    assert evil.status_code == 403 and evil.json()["error"] == "forbidden_origin"
    assert allowed.status_code == 200 and plain.status_code == 200


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:1.evil.example",
        "http://127.0.0.1:80@evil.example",
        "http://[::1]:1.evil.example",
        "http://localhost:8080/path",
        "null",
    ],
)
async def test_attack_an_origin_that_only_begins_like_a_loopback_one_is_refused(state: StateDir, origin: str) -> None:
    # The loopback defaults (`http://localhost:*`) were matched as a prefix: any text after the colon passed.
    async with (
        served(state) as base,
        httpx2.AsyncClient(headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}) as http,
    ):
        evil = await http.post(f"{base}/mcp", json=INIT, headers={"origin": origin})
        local = await http.post(f"{base}/mcp", json=INIT, headers={"origin": "http://localhost:5173"})
    assert evil.status_code == 403 and evil.json()["error"] == "forbidden_origin"
    assert local.status_code == 200


async def test_an_allowed_origin_is_compared_by_scheme_host_and_port(state: StateDir) -> None:
    async with (
        served(state, host="0.0.0.0", origins=["https://app.example.com", "http://dev.example.com:*"]) as base,
        httpx2.AsyncClient(headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}) as http,
    ):

        async def status(origin: str) -> int:
            return (await http.post(f"{base}/mcp", json=INIT, headers={"origin": origin})).status_code

        allowed = [
            await status(o)
            for o in (
                "https://app.example.com",
                "https://APP.example.com:443",
                "http://dev.example.com:3000",
                "http://dev.example.com",
            )
        ]
        refused = [
            await status(o)
            for o in (
                "http://app.example.com",
                "https://app.example.com:8443",
                "https://app.example.com.evil.example",
                "https://dev.example.com:3000",
                "http://localhost:5173",
            )
        ]  # a wide bind has no loopback defaults
    assert allowed == [200] * 4 and refused == [403] * 5


NOT_MESSAGES = [
    (b"{not json", -32700),
    (b'{"a": ' * 5000 + b"1" + b"}" * 5000, -32700),  # past the nesting limit
    (b'{"foo": 1}', -32600),
    (b'{"jsonrpc": "2.0", "id": 7, "method": 5}', -32600),
    (b"[]", -32600),
]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_attack_a_body_that_is_not_a_message_gets_its_json_rpc_error_and_the_guard_keeps_serving(
    state: StateDir, mode: str
) -> None:
    # The SDK's handshake-era transport answered a JSON body that is no JSON-RPC message with -32602
    # (invalid params) and a pydantic dump; JSON-RPC 2.0 says -32600, with a null id.
    era = {"mcp-protocol-version": "2026-07-28"} if mode == "auto" else {}
    async with (
        served(state) as base,
        httpx2.AsyncClient(headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}) as http,
    ):
        answers = [await http.post(f"{base}/mcp", content=body, headers=era) for body, _ in NOT_MESSAGES]
        async with Client(streamable_http_client(f"{base}/mcp", http_client=http), mode=mode) as client:
            result = await client.call_tool("echo__echo", {"text": "still serving"})
    assert [(a.status_code, a.json()["error"]["code"], a.json()["id"]) for a in answers] == [
        (400, code, None) for _, code in NOT_MESSAGES
    ]
    assert all("\n" not in a.json()["error"]["message"] for a in answers)
    assert text_of(result) == "still serving"


async def test_the_bearer_scheme_is_case_insensitive_and_refused_tokens_are_audited_without_them(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transports, "_REFUSALS_EVERY", 0.3)
    guesses = [f"guess-{i:02d}-{'y' * 20}" for i in range(5)]
    async with served(state) as base, httpx2.AsyncClient(headers=MCP_HEADERS) as http:
        lower = await http.post(f"{base}/mcp", json=INIT, headers={"authorization": f"bearer {TOKEN}"})
        refused = [await http.post(f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {g}"}) for g in guesses]
        with anyio.fail_after(10):
            while len(_events(state, "http.unauthorized")) < 2:  # noqa: ASYNC110 - the minute's count lands later
                await anyio.sleep(0.05)
    assert lower.status_code == 200
    assert [r.status_code for r in refused] == [401] * 5
    first, rest = _events(state, "http.unauthorized")
    assert (first["refused"], rest["refused"]) == (1, 4) and first["clients"] == ["127.0.0.1"]
    with sqlite3.connect(state.database) as conn:
        stored = "\n".join(d for (d,) in conn.execute("SELECT data FROM audit_events"))
    assert TOKEN not in stored and not any(g in stored for g in guesses)


async def test_attack_a_connection_that_sends_no_complete_request_is_closed(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slow-loris: before, such connections were held for ever, before any token was checked.
    monkeypatch.setattr(_transports, "_HEAD_TIMEOUT", 0.3)
    async with served(state) as base:
        port = int(base.rsplit(":", 1)[1])
        async with (
            await anyio.connect_tcp("127.0.0.1", port) as silent,
            await anyio.connect_tcp("127.0.0.1", port) as trickle,
        ):
            await trickle.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with anyio.fail_after(5):
                for header in range(100):  # a header line a tick: never a complete head
                    try:
                        await trickle.send(f"X-{header}: y\r\n".encode())
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        break
                    await anyio.sleep(0.05)
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    await silent.receive()
        assert header < 99
        # a client that keeps its connection alive between complete requests is not cut off
        async with httpx2.AsyncClient(headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}) as http:
            for _ in range(3):
                assert (await http.post(f"{base}/mcp", json=INIT)).status_code == 200
                await anyio.sleep(0.2)


async def test_each_connection_sends_its_writes_at_once(state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    # A socket from `bind_http` says proto 0, so asyncio left Nagle on for every connection it accepted:
    # the body of each JSON answer, written after its head, waited for the client's delayed ACK.
    no_delay: list[int] = []
    made = _transports._Http.connection_made

    def record(self: Any, transport: Any) -> None:
        made(self, transport)
        no_delay.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(_transports._Http, "connection_made", record)
    async with served(state) as base, httpx2.AsyncClient(headers=MCP_HEADERS) as http:
        await http.post(f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {TOKEN}"})
    assert no_delay and all(no_delay)


def test_a_taken_port_is_one_clear_error_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on `127.0.0.1:{port}`"):
            bind_http("127.0.0.1", port)
        config = tmp_path / "upstreams.yaml"
        config.write_text("upstreams: {}\n")
        result = CliRunner().invoke(
            main,
            [
                "serve",
                "--transport",
                "http",
                "--port",
                str(port),
                "--config",
                str(config),
                "--state-dir",
                str(tmp_path / "state"),
            ],
        )
    assert result.exit_code == 2 and "cannot listen" in result.output and "Traceback" not in result.output
    db = tmp_path / "state" / "guard.db"
    assert not db.exists() or db.stat().st_size == 0  # nothing was started: no audit log was opened


@pytest.mark.parametrize("token", ['""', "short", '"has a space in it, long enough"', '"trailing-newline-1234567\\n"'])
def test_a_token_that_is_empty_weak_or_unsendable_is_refused(token: str) -> None:
    # `token: ""` (an unset ${VAR}) would otherwise switch authentication off without a word.
    with pytest.raises(ConfigError, match="at least 16 printable characters"):
        load_config(text=f"guard:\n  http: {{token: {token}}}\nupstreams: {{}}\n", environ={})


def test_an_allowed_origin_must_be_an_origin() -> None:
    with pytest.raises(ConfigError, match="is not an origin"):
        load_config(text="guard:\n  http: {allowed_origins: [app.example.com/path]}\nupstreams: {}\n", environ={})


async def test_a_malformed_request_is_answered_in_one_line(state: StateDir) -> None:
    # The SDK's handshake-era parser answered with a multi-line pydantic dump (model names, the input).
    async with (
        served(state) as base,
        httpx2.AsyncClient(headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}) as http,
    ):
        answers = [await http.post(f"{base}/mcp", content=body) for body in (b'{"foo": 1}', b"[]")]
    for answer in answers:
        assert 400 <= answer.status_code < 500
        message = answer.json()["error"]["message"]
        assert "\n" not in message and len(message) <= 200 and "pydantic" not in message


@pytest.mark.parametrize(
    "args",
    [("serve", "--transport", "http", "--port", "70000"), ("check", "--timeout", "nan"), ("check", "--timeout", "0")],
)
def test_out_of_range_numbers_are_refused_by_the_option(tmp_path: Path, args: tuple[str, ...]) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams: {}\n")
    result = CliRunner().invoke(main, [*args, "--config", str(config), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
