"""`/metrics`: what it counts, who may read it, and that no argument or person's name is ever a label."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
import pytest
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from guard_mcp._console._context import BASE
from guard_mcp._server import Guard
from guard_mcp._state import StateDir
from guard_mcp._telemetry import with_metrics
from guard_mcp._transports import build_http_app

pytestmark = pytest.mark.anyio

TOKEN = "tok-" + "x" * 28
SCRAPE_TOKEN = "scrape-" + "y" * 24
SECRET = "s3cr3t-argument-value"
CONFIG = """
guard:
  principal: alice-the-caller
  approvals: {wait: 0.2s}
%s
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public,
             limits: [{window: 1h, calls: 2}]}
      store: {action: note.store, category: write, reversibility: none, blast_radius: single,
              sensitivity: confidential, redact: [text]}
"""
TOOLS = [
    types.Tool(
        name=n,
        description=n,
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    )
    for n in ("echo", "store", "extra")
]


@contextlib.asynccontextmanager
async def guard_with_calls(state: StateDir, extra: str = "") -> AsyncIterator[Guard]:
    up = RecordingUpstream(TOOLS)
    async with running_guard(config_from(CONFIG % extra, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            for _ in range(3):  # the third is over the limit
                await client.call_tool("echo__echo", {"text": SECRET})
            assert reason_of(await client.call_tool("echo__echo", {"text": 5})) == "schema_violation"
            assert reason_of(await client.call_tool("echo__store", {"text": SECRET})) == "pending_approval"
            assert reason_of(await client.call_tool(f"echo__{SECRET}", {})) == "unknown_tool"
            await client.call_tool("echo__extra", {"text": SECRET})  # listed by the upstream, not in the config
        yield guard


async def scrape(
    app: Any, *, client: str = "127.0.0.1", host: str = "127.0.0.1:8765", headers: dict[str, str] | None = None
) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=app, client=(client, 40000))
    async with httpx2.AsyncClient(transport=transport, base_url=f"http://{host}") as http:
        return await http.get("/metrics", headers=headers or {})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_calls_by_effect_and_reason_with_bounded_labels(state: StateDir) -> None:
    async with guard_with_calls(state) as guard:
        response = await scrape(build_http_app(guard, host="127.0.0.1", token=TOKEN))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)

    def calls(tool: str, effect: str, reason: str) -> float:
        return got.get(("guard_calls_total", (("effect", effect), ("reason", reason), ("tool", tool))), 0.0)

    assert calls("echo__echo", "allow", "policy") == 2
    assert calls("echo__echo", "deny", "limit_exceeded") == 1
    assert calls("echo__echo", "deny", "schema_violation") == 1
    assert calls("echo__store", "approve", "pending_approval") == 1
    assert calls("other", "deny", "unknown_tool") == 1  # the caller's made-up name is not a label
    assert calls("other", "approve", "pending_approval") == 1  # nor a tool the upstream lists beyond the config
    assert sum(v for (n, labels), v in got.items() if n == "guard_calls_total" and ("tool", "other") in labels) == 2
    assert got[("guard_limit_checks_total", (("result", "within"), ("tool", "echo__echo")))] == 2
    assert got[("guard_limit_checks_total", (("result", "limit_exceeded"), ("tool", "echo__echo")))] == 1
    assert got[("guard_decision_seconds_count", ())] == 5  # every call that reached the policy
    assert got[("guard_forward_seconds_count", (("upstream", "echo"),))] == 2
    assert got[("guard_approval_wait_seconds_count", (("group", "approvers"),))] == 2  # `store`, and `extra` (unknown)
    assert got[("guard_approvals_pending", (("group", "approvers"),))] == 2
    assert got[("guard_upstream_up", (("upstream", "echo"),))] == 1
    assert got[("guard_upstream_restarts_total", (("upstream", "echo"),))] == 0
    assert got[("guard_audit_commit_seconds_count", ())] >= 5
    assert got[("guard_audit_fsyncs_total", ())] == got[("guard_audit_commit_seconds_count", ())]  # synchronous: full
    # Never an argument's value, a caller's or an approver's name.
    assert SECRET not in response.text and "alice" not in response.text


async def test_attack_metrics_are_refused_to_a_remote_client_and_to_a_rebound_host_name(state: StateDir) -> None:
    async with guard_with_calls(state) as guard:
        app = build_http_app(guard, host="0.0.0.0", token=TOKEN)
        remote = await scrape(app, client="192.0.2.7")
        rebound = await scrape(app, host="attacker.example:8765")  # a page that points its name at 127.0.0.1
        mcp_token = await scrape(app, client="192.0.2.7", headers={"authorization": f"Bearer {TOKEN}"})
        local = await scrape(app, host="localhost:8765")
        v6 = await scrape(app, client="::1", host="[::1]:8765")
    assert remote.status_code == rebound.status_code == mcp_token.status_code == 403
    assert "guard_calls_total" not in remote.text + rebound.text + mcp_token.text
    assert "`guard.metrics.token`" in remote.json()["error_description"]
    assert local.status_code == v6.status_code == 200


async def test_with_a_token_only_a_scraper_sending_it_reads_metrics_from_anywhere(state: StateDir) -> None:
    async with guard_with_calls(state, f"  metrics: {{token: {SCRAPE_TOKEN}}}") as guard:
        app = build_http_app(guard, host="0.0.0.0", token=TOKEN)
        none = await scrape(app)
        wrong = await scrape(app, headers={"authorization": f"Bearer {TOKEN}"})  # the MCP token is not it
        right = await scrape(app, client="192.0.2.7", headers={"authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert none.status_code == wrong.status_code == 401
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200 and "guard_calls_total" in right.text


async def test_metrics_can_be_turned_off_and_other_paths_pass_through(state: StateDir) -> None:
    async with guard_with_calls(state, "  metrics: {enabled: false}") as guard:
        off = await scrape(build_http_app(guard, host="127.0.0.1", token=TOKEN))
    assert off.status_code == 401  # the MCP gate's answer: no `/metrics` in front of it

    async def console(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with guard_with_calls(state) as guard:
        wrapped = with_metrics(console, guard.metrics, guard.config.guard.metrics)  # the console's own listener
        transport = httpx2.ASGITransport(app=wrapped)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8766") as http:
            assert (await http.get(f"{BASE}/")).status_code == 204
            assert "guard_calls_total" in (await http.get("/metrics")).text


def test_upstreams_down_and_restarted_and_commits_without_fsync_are_told_apart() -> None:
    from types import SimpleNamespace

    from guard_mcp._config import load_config
    from guard_mcp._telemetry import Metrics

    config = load_config(text="guard:\n  audit: {synchronous: normal}\n" + CONFIG.split("%s\n", 1)[1], environ={})
    metrics = Metrics(config)
    handles = {"echo": SimpleNamespace(state="down", restarts=3), "b": SimpleNamespace(state="ready", restarts=0)}
    metrics.watch(SimpleNamespace(handles=handles), None)  # type: ignore[arg-type]
    metrics.committed(0.002)
    got = samples(metrics.exposition().decode())
    assert got[("guard_upstream_up", (("upstream", "echo"),))] == 0
    assert got[("guard_upstream_restarts_total", (("upstream", "echo"),))] == 3
    assert got[("guard_upstream_up", (("upstream", "b"),))] == 1
    assert got[("guard_audit_commit_seconds_count", ())] == 1
    assert got[("guard_audit_fsyncs_total", ())] == 0  # synchronous: normal commits without an fsync
