"""`guard-mcp serve` with the standard `OTEL_*` variables: its spans reach an OTLP/HTTP receiver, the
stdio wire stays clean, and the console's own listener answers `/metrics`."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-argument-value"
CONFIG = """
guard:
  console: {port: 0}
upstreams:
  echo:
    command: ${PYTHON}
    args: [-m, guard_mcp.demo.echo]
    tools:
      echo: {action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public}
"""


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP trace receiver on loopback that keeps each export's body."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the http.server hook
            bodies.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


async def test_serve_exports_spans_over_otlp_and_its_console_listener_answers_metrics(
    tmp_path: Path, state: StateDir, receiver: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = receiver
    config = tmp_path / "upstreams.yaml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PYTHONPATH=str(ROOT),
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="guard-under-test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    params = StdioServerParameters(
        command=sys.executable,
        env=env,
        args=["-m", "guard_mcp.cli", "serve", "--config", str(config), "--state-dir", str(state.root)],
    )
    async with Client(params, mode="legacy") as client:  # spans on stdout would break this wire
        with anyio.fail_after(30):
            while True:
                if (
                    "echo__echo" in {t.name for t in (await client.list_tools()).tools}
                    and (state.root / "console.url").exists()
                ):
                    break
                await anyio.sleep(0.05)
        result = await client.call_tool("echo__echo", {"text": SECRET})
        assert not result.is_error
        base = (state.root / "console.url").read_text().strip().removesuffix("/console")
        async with httpx2.AsyncClient() as http:
            metrics = await http.get(base.replace("localhost", "127.0.0.1") + "/metrics")
    assert metrics.status_code == 200
    assert 'guard_calls_total{effect="allow",reason="policy",tool="echo__echo"} 1.0' in metrics.text
    # The guard flushed its spans when it stopped (stdin closed).
    spans = []
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope in resource_spans.scope_spans:
                spans += [(service, s) for s in scope.spans]
    names = {s.name for _, s in spans}
    assert {"tools/call echo__echo", "guard.validate", "guard.decide", "guard.permit", "guard.forward"} <= names
    assert {service for service, _ in spans} == {"guard-under-test"}
    assert all(SECRET.encode() not in body for body in bodies)
