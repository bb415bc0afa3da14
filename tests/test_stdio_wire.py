"""The guard's stdio wire the way clients hand it over: sockets (Node's `spawn`), pipes, a plain file.

Pipes and sockets are read and written on the event loop (`_PipeLines`, `_PipeOut`); anything else
(a file, a terminal) goes through threads. Both must carry the same messages, whole, in order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_server_transports import FLAKY

from guard_mcp._transports import _LineProtocol

pytestmark = [pytest.mark.subprocess]

HELLO = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
READY = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def _call(rid: int, text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "flaky__echo", "arguments": {"text": text}},
    }


def _guard(tmp_path: Path, stdin: Any, stdout: Any) -> subprocess.Popen[bytes]:
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams:" + FLAKY)
    return subprocess.Popen(
        [sys.executable, "-m", "guard_mcp.cli", "serve", "--config", str(config), "--state-dir", str(tmp_path / "s")],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )


def _answers(read: Any, ids: set[int]) -> dict[int, dict[str, Any]]:
    """Read lines until every id in `ids` has its answer (notifications in between are skipped)."""
    found: dict[int, dict[str, Any]] = {}
    while ids - set(found):
        line = read()
        assert line, f"the guard closed its stdout before answering {sorted(ids - set(found))}"
        message = json.loads(line)
        if "id" in message:
            found[message["id"]] = message
    return found


def _echoed(answer: dict[str, Any]) -> str:
    result = answer["result"]
    assert not result.get("isError"), result
    return str(result["content"][0]["text"])


def test_a_client_that_spawns_the_guard_on_sockets_is_answered_in_order(tmp_path: Path) -> None:
    # Node's child_process gives a child socket pairs, not pipes, for stdin and stdout.
    to_guard, guard_in = socket.socketpair()
    from_guard, guard_out = socket.socketpair()
    proc = _guard(tmp_path, guard_in.fileno(), guard_out.fileno())
    guard_in.close()
    guard_out.close()
    try:
        from_guard.settimeout(60)
        reader = from_guard.makefile("rb")
        to_guard.sendall(json.dumps(HELLO).encode() + b"\n")
        assert "result" in _answers(reader.readline, {1})[1]
        to_guard.sendall(json.dumps(READY).encode() + b"\n")
        # a message cut across many writes, and several messages in one write
        big = "x" * 50_000  # many reads of the socket
        line = json.dumps(_call(2, big)).encode() + b"\n"
        for i in range(0, len(line), 4096):
            to_guard.sendall(line[i : i + 4096])
        to_guard.sendall(b"".join(json.dumps(_call(n, f"m{n}")).encode() + b"\n" for n in range(3, 8)))
        got = _answers(reader.readline, set(range(2, 8)))
        assert _echoed(got[2]) == big
        assert [_echoed(got[n]) for n in range(3, 8)] == [f"m{n}" for n in range(3, 8)]
        to_guard.shutdown(socket.SHUT_WR)  # the client's EOF: the guard stops
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        to_guard.close()
        from_guard.close()


def test_a_guard_reading_its_requests_from_a_file_answers_them_and_stops_at_the_end(tmp_path: Path) -> None:
    # Not a pipe: read by a thread, the answers still written to the pipe on the loop. Only the
    # handshake is awaited: the end of the file stops the guard, and a request read just before it
    # (a ping, a tool call) races that stop; which one wins depends on how fast the guard started.
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(json.dumps(m).encode() + b"\n" for m in (HELLO, READY)))
    with requests.open("rb") as stdin:
        proc = _guard(tmp_path, stdin, subprocess.PIPE)
        out, _ = proc.communicate(timeout=60)
    got = _answers(iter(out.splitlines(keepends=True)).__next__, {1})
    assert got[1]["result"]["serverInfo"]["name"] == "guard-mcp"
    assert proc.returncode == 0


def test_a_guard_whose_stdout_is_a_file_writes_every_answer_whole(tmp_path: Path) -> None:
    # Not a pipe: written by the SDK's own writer; the requests come over a pipe, read on the loop.
    r, w = os.pipe()
    answers = tmp_path / "answers.jsonl"
    with answers.open("wb") as stdout:
        proc = _guard(tmp_path, r, stdout)
    os.close(r)
    try:
        os.write(w, b"".join(json.dumps(m).encode() + b"\n" for m in (HELLO, READY, _call(2, "to a file"))))
        deadline = time.monotonic() + 60
        while b'"id":2' not in answers.read_bytes() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.close(w)  # EOF: the guard stops
        proc.wait(60)
    got = _answers(iter(answers.read_bytes().splitlines(keepends=True)).__next__, {1, 2})
    assert _echoed(got[2]) == "to a file"


def test_lines_are_cut_at_newlines_whatever_the_reads_hold() -> None:
    protocol = _LineProtocol()
    for chunk in (b'{"a":', b"1}\n{", b'"b":2}\n\n{"c"', b":3}"):
        protocol.data_received(chunk)
    protocol.eof_received()  # a last line without its newline is still a line
    assert list(protocol.lines) == [b'{"a":1}\n', b'{"b":2}\n', b"\n", b'{"c":3}']
    assert protocol.ended
