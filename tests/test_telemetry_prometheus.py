"""A real Prometheus server (Debian's `prometheus`) scrapes the guard's `/metrics` on loopback, and a
counter is read back through its HTTP API."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, running_guard
from mcp import Client

from guard_mcp._state import StateDir
from guard_mcp._transports import bind_http, serve_http

pytestmark = pytest.mark.anyio

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"  # .ci/run installs Debian's package


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """A Prometheus of the test's own (not the system service), scraping `target` every second."""
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: guard\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = _free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_a_prometheus_server_scrapes_the_guard_and_reads_a_counter_back(state: StateDir, tmp_path: Path) -> None:
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            for _ in range(3):
                assert not (await client.call_tool("echo__echo", {"text": "hi"})).is_error
        sock = bind_http("127.0.0.1", 0)
        port = sock.getsockname()[1]
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve_http(guard, sock, host="127.0.0.1", token="tok-" + "x" * 28))
            with prometheus(tmp_path, f"127.0.0.1:{port}") as api:
                query = 'guard_calls_total{job="guard",tool="echo__echo",effect="allow"}'
                found: list[Any] = []
                async with httpx2.AsyncClient() as http:
                    with anyio.fail_after(30):
                        while not found:
                            with contextlib.suppress(httpx2.TransportError):
                                answer = (await http.get(f"{api}/api/v1/query", params={"query": query})).json()
                                found = answer["data"]["result"]
                            if not found:
                                await anyio.sleep(0.25)
                    targets = (await http.get(f"{api}/api/v1/targets")).json()["data"]["activeTargets"]
            guard.stop_requested.set()
    assert [t["health"] for t in targets] == ["up"]  # scraped as a loopback client, no token needed
    [series] = found
    assert series["metric"]["reason"] == "policy" and float(series["value"][1]) == 3
