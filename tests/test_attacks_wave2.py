"""Attacks on the wave-2 surfaces (traces and metrics, secrets by reference, the OAuth login, the console's
paths): each is the attack as a hostile agent, upstream or local user would make it, then the assert that it
was stopped."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from click.testing import CliRunner
from guard_kit import (
    ECHO_CONFIG,
    HandshakeOnly,
    RecordingUpstream,
    config_from,
    meta_of,
    reason_of,
    running_guard,
    text_of,
)
from mcp import Client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.routing import Route
from test_telemetry_tracing import _reset_globals

from guard_mcp._config import load_config
from guard_mcp._identity._login import CALLBACK_PATH, _Callback
from guard_mcp._state import StateDir
from guard_mcp._telemetry import _tracing, configure_tracing
from guard_mcp._telemetry._export import without_error_text
from guard_mcp.cli import main

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(params=["tracing on", "tracing off"])
def tracing(request: pytest.FixtureRequest) -> Iterator[InMemorySpanExporter | None]:
    _reset_globals()
    if request.param == "tracing off":
        yield None
        return
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(without_error_text(exporter)))  # as configure_tracing exports
    _tracing.enable(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_globals()


# -- a hostile agent's _meta ----------------------------------------------------------------------------------


async def test_a_clients_baggage_does_not_reach_the_upstream(
    state: StateDir, tracing: InMemorySpanExporter | None
) -> None:
    # The agent rides its own key-values to the upstream in W3C baggage, beside the trace it may continue.
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            await client.call_tool(
                "echo__echo",
                {"text": "hi"},
                meta=meta_of({"traceparent": TRACEPARENT, "baggage": "role=admin,tenant=acme"}),
            )
    [(_, _, meta)] = up.calls
    assert meta["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert "baggage" not in meta and "role=admin" not in str(meta)


WEIRD: list[Any] = [5, True, 1.5, [1, 2], {"a": 1}, [TRACEPARENT] * 3, "x" * 100_000, "\u202e\x1b[31m"]


async def test_trace_context_that_is_not_text_still_reaches_the_guard_as_a_call(
    state: StateDir, tracing: InMemorySpanExporter | None
) -> None:
    # A trace-context key that is a number, a list or an object made the SDK's span middleware raise:
    # a bare JSON-RPC error, no audit record, a traceback in the log per call.
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            for value in WEIRD:
                for key in ("traceparent", "tracestate", "baggage"):
                    meta = {"traceparent": TRACEPARENT, key: value}
                    result = await client.call_tool("echo__echo", {"text": "hi"}, meta=meta_of(meta))
                    assert not result.is_error and text_of(result) == "hi", (key, value)
            refused = await client.call_tool("echo__echo", {"text": 5}, meta=meta_of({"baggage": 5}))
    assert reason_of(refused) == "schema_violation"  # the guard decided it, as any other call
    with sqlite3.connect(state.database) as conn:
        [(received,)] = conn.execute("SELECT count(*) FROM audit_events WHERE type = 'call.received'").fetchall()
    assert received == len(WEIRD) * 3 + 1
    for _, _, meta in up.calls:
        assert set(meta) & {"tracestate", "baggage"} <= {"tracestate"}
        assert "\x1b" not in str(meta) and "x" * 1000 not in str(meta)


@pytest.mark.parametrize("tracing", ["tracing on"], indirect=True)
async def test_made_up_tool_names_do_not_name_spans(state: StateDir, tracing: InMemorySpanExporter) -> None:
    # The agent calls tools that do not exist, each name new and long: every one would be a span name
    # (an operation in the trace backend) and a `gen_ai.tool.name` of unbounded size.
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            for i in range(5):
                denied = await client.call_tool(f"echo__{i}{'x' * 50_000}", {})
                assert reason_of(denied) == "unknown_tool"
            await client.call_tool("echo__echo", {"text": "hi"})
    calls = [s for s in tracing.get_finished_spans() if "guard.tool" in (s.attributes or {})]
    assert sorted({s.name for s in calls}) == ["tools/call (unknown tool)", "tools/call echo__echo"]
    for s in calls:
        assert all(len(str(v)) <= 128 for v in (s.attributes or {}).values()), s.name


# -- another local process at the login's loopback redirect -------------------------------------------------

AUTHORIZE = "https://as.example/authorize?response_type=code&client_id=guard&state=the-real-state&code_challenge=c"


async def test_a_stray_redirect_to_the_login_port_neither_ends_nor_answers_the_login() -> None:
    # Another local process (or a web page guessing the port) answers the login first: with an error, to
    # abort it, or with a code of its own (another login's, or its own account's), to be exchanged instead.
    callback = _Callback()
    app = Starlette(routes=[Route(CALLBACK_PATH, callback.handle)])
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1") as local:
        callback.expect(AUTHORIZE)
        for forged in (
            {"error": "access_denied"},
            {"code": "attackers-code"},
            {"code": "attackers-code", "state": "an-older-login"},
            {"error": "access_denied", "state": "the-real-stat"},
        ):
            answer = await local.get(CALLBACK_PATH, params=forged)
            assert answer.status_code == 400, forged
            assert not callback.done.is_set() and callback.result is None and callback.error is None
        # the user's browser, with the state of the request it was sent
        answer = await local.get(CALLBACK_PATH, params={"code": "the-users-code", "state": "the-real-state"})
        assert answer.status_code == 200 and "logged in" in answer.text
    assert callback.done.is_set() and callback.result is not None and callback.result.code == "the-users-code"


async def test_the_login_port_takes_nothing_before_the_authorization_url_is_shown() -> None:
    callback = _Callback()
    app = Starlette(routes=[Route(CALLBACK_PATH, callback.handle)])
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1") as local:
        answer = await local.get(CALLBACK_PATH, params={"code": "early", "state": ""})
    assert answer.status_code == 400 and not callback.done.is_set()


def test_the_authorization_url_a_hostile_upstream_names_is_printed_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream's metadata names the authorization endpoint: console markup in its path would be read
    # as styles and links (a part made invisible, another target under it), or end the command.
    import guard_mcp._identity as identity

    hostile = "https://as.example/[conceal]hidden[/conceal]/[link=https://evil.example]a[/link]/authorize[/]?state=s"

    async def fake_login(config: Any, state: Any, name: str, *, clock: Any, open_url: Any, wait: float) -> Any:
        await open_url(hostile)
        return identity.LoginResult(name, 1, None, False)

    monkeypatch.setattr(identity, "login", fake_login)
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams:\n  remote:\n    url: https://mcp.example/mcp\n    auth: oauth\n")
    result = CliRunner().invoke(
        main,
        ["login", "remote", "--no-browser", "--config", str(config), "--state-dir", str(tmp_path / "s")],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 0, result.output
    assert hostile in result.stderr


# -- an upstream repeating the credential it was configured with ------------------------------------------

CANARY = "sk-canary-7f3a9c0e5b1d"
CAREFUL = f"""
upstreams:
  echo:
    command: unused-in-process
    env: {{TRACKER_API_KEY: {CANARY}}}
    tools:
      echo: {{action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public}}
"""


def careless_server() -> Any:
    """An in-process upstream that repeats its credential wherever an upstream's words reach the client."""
    from mcp.server import Server

    tool = types.Tool(
        name="echo",
        title=f"Echo ({CANARY})",
        description=f"Echo. Configured with {CANARY}.",
        input_schema={"type": "object", "properties": {"text": {"type": "string", "description": f"key {CANARY}"}}},
    )

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        await ctx.session.report_progress(0.5, 1.0, f"authenticated with {CANARY}")
        await ctx.session.report_progress(0.7, 1.0, "\x1b]8;;https://evil.example\x07done\x1b]8;;\x07\n" + "y" * 50_000)
        await ctx.session.elicit_form(
            f"Go on with {CANARY}?",
            {"type": "object", "properties": {"go": {"type": "boolean", "title": f"Use {CANARY}"}}},
            related_request_id=ctx.request_id,
        )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=f"used {CANARY}")],
            structured_content={"keys": {CANARY: "active"}},
        )

    return Server("careless", on_list_tools=list_tools, on_call_tool=call_tool)


async def test_an_upstreams_credential_is_cut_out_of_its_progress_questions_keys_and_tool_definitions(
    state: StateDir,
) -> None:
    # An upstream repeats the credential it was configured with where the result's cut did not reach: in its
    # progress messages, the question it asks the user, a key of its structured content and its tool's
    # definition (which the model reads in `tools/list`).
    said: list[str] = []
    asked: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        said.append(message or "")

    async def on_question(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.model_dump_json())
        return types.ElicitResult(action="accept", content={"go": True})

    upstream = HandshakeOnly(careless_server())
    async with running_guard(config_from(CAREFUL, state), state, inprocess={"echo": upstream}) as guard:
        async with Client(guard.server, mode="legacy", elicitation_callback=on_question) as client:
            listed = (await client.list_tools()).model_dump_json()
            result = await client.call_tool("echo__echo", {"text": "hi"}, progress_callback=on_progress)
    assert said[0] == "authenticated with ***" and asked and "Go on with ***?" in asked[0]
    # and its progress reaches the client's window as one short line, without terminal escapes
    assert len(said) == 2 and "\x1b" not in said[1] and "\n" not in said[1] and len(said[1]) <= 301
    assert "used ***" in result.model_dump_json() and "Configured with ***." in listed
    for shown in (listed, result.model_dump_json(), *said, *asked):
        assert CANARY not in shown, shown


# -- /metrics ---------------------------------------------------------------------------------------------

PAUSING = """
guard:
  approvals: {wait: 0.05s}
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {action: echo.say, category: write, reversibility: none, blast_radius: single, sensitivity: confidential}
"""


async def test_a_scrape_counts_pending_approvals_without_reading_them(state: StateDir) -> None:
    # The agent leaves approvals waiting (each call that needs one adds one, kept until it expires): a scrape
    # that read and parsed every one of them on the event loop grew with them; and one damaged row stopped
    # the gauge altogether.
    up = RecordingUpstream()
    async with running_guard(config_from(PAUSING, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            for i in range(4):
                assert reason_of(await client.call_tool("echo__echo", {"text": f"t{i}"})) == "pending_approval"
        with sqlite3.connect(state.database) as conn:
            conn.execute("UPDATE approvals SET bundle = '{not json' WHERE rowid = (SELECT min(rowid) FROM approvals)")
        await guard.metrics.refresh()
        text = guard.metrics.exposition().decode()
    assert 'guard_approvals_pending{group="approvers"} 4.0' in text


# -- what a span may say ----------------------------------------------------------------------------------

REDACTING = """
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public,
             redact: [text]}
"""


def failing_server() -> Any:
    """An upstream whose error repeats the call's arguments (as many do: `invalid card 4111...`)."""
    from mcp.server import Server
    from mcp.shared.exceptions import MCPError

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="echo", input_schema={"type": "object", "properties": {"text": {"type": "string"}}})]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        raise MCPError(code=-32000, message=f"cannot echo {(params.arguments or {}).get('text')}")

    return Server("failing", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.parametrize("tracing", ["tracing on"], indirect=True)
@pytest.mark.parametrize("era", ["handshake", "2026"])
async def test_an_upstreams_error_quoting_a_redacted_argument_is_not_exported_in_a_span(
    state: StateDir, tracing: InMemorySpanExporter, era: str
) -> None:
    secret = "hunter2-card-4111111111111111"
    server = failing_server()
    upstream = HandshakeOnly(server) if era == "handshake" else server
    async with running_guard(config_from(REDACTING, state), state, inprocess={"echo": upstream}) as guard:
        async with Client(guard.server) as client:
            result = await client.call_tool("echo__echo", {"text": secret})
    assert reason_of(result) == "upstream_error"
    spans = [s for s in tracing.get_finished_spans() if s.name != "tools/call echo"]  # the in-process upstream's own
    assert "MCP send tools/call echo" in {s.name for s in spans} or era == "2026"
    for span in spans:
        said = [
            span.name,
            str(span.attributes),
            span.status.description or "",
            *(str(e.attributes) for e in span.events),
        ]
        assert not any(secret in s for s in said), (span.name, said)


def test_the_exporters_serve_makes_export_no_errors_text_and_bounded_strings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from opentelemetry import trace

    _reset_globals()
    provider = configure_tracing({"OTEL_TRACES_EXPORTER": "console"})
    try:
        tracer = trace.get_tracer("test")
        with contextlib.suppress(ValueError), tracer.start_as_current_span("guard.forward") as span:
            span.set_attribute("jsonrpc.request.id", "a-client-chose-this-id" + "9" * 100_000)
            raise ValueError("upstream said: cannot echo hunter2-card-4111111111111111")
    finally:
        provider.shutdown()
        _reset_globals()
    printed = capsys.readouterr().err
    assert '"name": "guard.forward"' in printed and "ValueError" in printed and '"status_code": "ERROR"' in printed
    assert "hunter2" not in printed
    assert "a-client-chose-this-id" in printed and "9" * 1024 not in printed  # a client's string, bounded


async def test_metrics_are_refused_to_a_request_a_local_reverse_proxy_relayed(state: StateDir) -> None:
    # A proxy on the guard's machine (nginx's `proxy_pass http://127.0.0.1:8765`) connects from loopback and,
    # unless told otherwise, names the host it connects to: every client on the internet looked local.
    from test_telemetry_metrics import scrape

    from guard_mcp._transports import build_http_app

    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        app = build_http_app(guard, host="127.0.0.1", token="tok-" + "x" * 28)
        relayed = [
            await scrape(app, headers={name: value})
            for name, value in (
                ("x-real-ip", "203.0.113.9"),
                ("via", "1.1 nginx"),
                ("forwarded", "for=203.0.113.9"),
                ("x-forwarded-host", "guard.example.com"),
            )
        ]
        local = await scrape(app)
    assert [r.status_code for r in relayed] == [403] * 4 and local.status_code == 200


async def test_a_value_read_by_reference_is_cut_out_of_results_whatever_its_key_is_called(
    tmp_path: Path, state: StateDir
) -> None:
    # The operator keeps a credential by reference under a name that does not say it is one (`X-Session`,
    # `TRACKER_TENANT`): the README promises it is cut out of what the upstream sends back, as any other.
    (tmp_path / "session").write_text(CANARY + "\n")
    (tmp_path / "session").chmod(0o600)
    text = CAREFUL.replace(f"env: {{TRACKER_API_KEY: {CANARY}}}", "env: {TRACKER_SESSION_ID: {file: session}}")
    path = tmp_path / "upstreams.yaml"
    path.write_text(text)
    config = load_config(path, environ={}, builtins={"GUARD_STATE_DIR": str(state.root)})
    assert getattr(config.upstreams["echo"], "env", None) == {"TRACKER_SESSION_ID": CANARY} and not config.warnings
    assert "referenced" not in repr(config)
    async with running_guard(config, state, inprocess={"echo": HandshakeOnly(careless_server())}) as guard:
        async with Client(guard.server, mode="legacy") as client:
            result = await client.call_tool("echo__echo", {"text": "hi"})
    assert "used ***" in result.model_dump_json() and CANARY not in result.model_dump_json()


def test_the_metrics_token_is_a_secret_like_the_others(tmp_path: Path) -> None:
    # `guard.metrics.token` guards every count of the guard's calls: written out it loaded without a word,
    # and it could not be kept in a file of its own.
    (tmp_path / "metrics.token").write_text("scrape-" + "z" * 24 + "\n")
    (tmp_path / "metrics.token").chmod(0o600)
    path = tmp_path / "upstreams.yaml"
    path.write_text("guard:\n  metrics: {token: {file: metrics.token}}\nupstreams: {}\n")
    read = load_config(path, environ={})
    assert read.guard.metrics.token == "scrape-" + "z" * 24 and not read.warnings
    path.write_text("guard:\n  metrics: {token: scrape-written-out-0123456789}\nupstreams: {}\n")
    [warning] = load_config(path, environ={}).warnings
    assert "`guard.metrics.token` is written out" in warning


async def test_pending_approvals_are_counted_by_group_on_either_store(tmp_path: Path, store_url: str | None) -> None:
    from _approvals_support import bundle, decision

    from guard_mcp._approvals import ApprovalStore
    from guard_mcp._clock import FakeClock
    from guard_mcp._config import ApprovalsConfig

    store = await ApprovalStore.open(
        StateDir(tmp_path / "s"), clock=FakeClock(1_000_000.0), config=ApprovalsConfig(), store=store_url
    )
    try:
        for i, group in enumerate(["finance", "finance", "support", "finance"]):
            await store.create(bundle(request_id=f"req_{i:016x}"), decision(group=group), tool="shop__refund")
        done = await store.create(bundle(request_id="req_" + "f" * 16), decision(group="support"), tool="shop__refund")
        await store.decide(done.id, approve=False, approver="ana")
        assert await store.pending_counts() == {"finance": 3, "support": 1}
    finally:
        await store.close()


# -- another local user and upstreams.yaml --------------------------------------------------------------


def test_a_configuration_another_user_can_change_is_refused(tmp_path: Path) -> None:
    # Whoever can write upstreams.yaml runs commands as the guard's user (a stdio upstream's `command`),
    # picks the keys its policy is trusted by, and points `{file: ...}` secrets where they like.
    import os

    from guard_mcp._errors import ConfigError

    path = tmp_path / "upstreams.yaml"
    path.write_text(f"upstreams:\n  evil:\n    command: /bin/sh\n    args: [-c, 'id > {tmp_path}/owned']\n")
    path.chmod(0o644)
    assert "evil" in load_config(path, environ={}).upstreams
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"can be written by group or others \(mode 0666\).*`chmod go-w"):
        load_config(path, environ={})
    if os.geteuid() == 0:  # only root can hand a file to another user here
        path.chmod(0o644)
        os.chown(path, 65534, 65534)
        with pytest.raises(ConfigError, match="belongs to uid 65534"):
            load_config(path, environ={})
