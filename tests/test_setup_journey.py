"""A new user's first setup, end to end.

The README's own quick start, read from README.md and run as written: import a client's config,
review, check, put the block import printed into the client, which starts it as a desktop client
does (no shell PATH, another working directory), call, approve at the terminal, read the audit.

Then the same with two real third-party servers from npm: import a Claude Desktop config naming
`@modelcontextprotocol/server-filesystem` and `@modelcontextprotocol/server-everything`, accept the
proposed action schemas, check, serve, and call through an independent client: a read is allowed, a
write asks and runs once it is approved out of band (the way a client without elicitation works),
and the audit holds both.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from click.testing import CliRunner
from mcp import Client, StdioServerParameters

from guard_mcp.cli import main

pytestmark = [pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parent.parent
NODE_CACHE = Path(os.environ.get("GUARD_MCP_NODE_CACHE", ROOT / "tests" / ".node"))  # gitignored
PACKAGES = ("@modelcontextprotocol/server-filesystem@2026.8.31", "@modelcontextprotocol/server-everything@2026.8.31")
BINS = ("mcp-server-filesystem", "mcp-server-everything")


@pytest.fixture(scope="module")
def npm_servers() -> dict[str, Path]:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (apt-get install nodejs npm): the journey needs the real npm servers")
    bins = {name: NODE_CACHE / "node_modules" / ".bin" / name for name in BINS}
    if not all(path.exists() for path in bins.values()):
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(NODE_CACHE), "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES],
            check=True,
            timeout=600,
        )
    return bins


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GUARD_MCP_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "guard_mcp.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


NOTES_SERVER = """\
import sys
from pathlib import Path

from mcp.server import MCPServer
from mcp.types import ToolAnnotations

DIR = Path(sys.argv[1])
server = MCPServer("notes")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_note(name: str) -> str:
    \"\"\"Read the note `name`.\"\"\"
    return (DIR / name).read_text()


@server.tool()
def write_note(name: str, text: str) -> str:
    \"\"\"Write `text` to the note `name`.\"\"\"
    (DIR / name).write_text(text)
    return f"wrote {name}"


server.run()
"""


async def in_thread(*args: str, input: str | None = None) -> str:
    """A CLI command in-process, off the event loop (it runs its own), as a second terminal would."""
    done = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(main, list(args), input=input))
    assert done.exit_code == 0, done.output
    return str(done.stdout)


def readme_blocks(section: str) -> list[list[list[str]]]:
    """The README section's bash blocks, each as its `guard-mcp …` commands (split as a shell would, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    return [
        [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("guard-mcp ")]
        for block in blocks
    ]


@pytest.mark.anyio
async def test_the_readme_quick_start_as_written_guards_a_server_a_desktop_client_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup, approve = readme_blocks("Add it to your client")[:2]
    assert [c[:2] for c in setup] == [["guard-mcp", "import"], ["guard-mcp", "tools"], ["guard-mcp", "check"]]
    home, workdir, notes = tmp_path / "data", tmp_path / "guard", tmp_path / "notes"
    workdir.mkdir()
    notes.mkdir()
    monkeypatch.chdir(workdir)  # `mkdir -p ~/guard && cd ~/guard`
    monkeypatch.setenv("GUARD_MCP_HOME", str(home))  # stands for the user data directory every command finds
    (notes / "plan").write_text("the plan")
    # the user's client config, naming a stdio server of their own
    server = tmp_path / "notes_server.py"
    server.write_text(NOTES_SERVER)
    desktop = tmp_path / "claude_desktop_config.json"
    desktop.write_text(
        json.dumps({"mcpServers": {"notes": {"command": sys.executable, "args": [str(server), str(notes)]}}})
    )

    imported = ""
    for command in setup:
        args = command[1:]
        if args[:2] == ["import", "claude-config"]:
            args[2] = str(desktop)  # the README names the macOS path; the file is the user's own
        said = await in_thread(*args, input="a\n" * 20)  # review: accept each proposal
        imported = imported or said
    config = workdir / "upstreams.yaml"
    assert "proposed: true" not in config.read_text()

    # the block import printed is what the client runs: absolute paths, no shell PATH, another directory
    block = json.loads(imported.split(" with:\n", 1)[1].split("\nFor Claude Code: ", 1)[0])
    guard = block["mcpServers"]["guard"]
    assert list(block["mcpServers"]) == ["guard"] and Path(guard["command"]).is_absolute()
    assert guard["args"] == ["serve", "--config", str(config)]
    params = StdioServerParameters(
        command=guard["command"],
        args=guard["args"],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "GUARD_MCP_HOME": str(home), "PYTHONPATH": str(ROOT)},
    )
    async with Client(params) as client:
        with anyio.fail_after(60):
            listed: set[str] = set()
            while "notes__write_note" not in listed:  # the guard connects its upstream in the background
                listed = {t.name for t in (await client.list_tools()).tools}
                await anyio.sleep(0.1)
            read = await client.call_tool("notes__read_note", {"name": "plan"})
        assert not read.is_error and "the plan" in text_of(read), text_of(read)

        sent: list[types.CallToolResult] = []

        async def send() -> None:
            sent.append(await client.call_tool("notes__write_note", {"name": "todo", "text": "approved"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with anyio.fail_after(40):  # under the imported 45 s in-line wait
                pending: list[dict[str, Any]] = []
                while not pending:
                    await anyio.sleep(0.2)
                    queue = await in_thread("approvals", "list", "--json")
                    pending = [a for a in json.loads(queue or "[]") if a.get("state") == "pending"]
            assert not (notes / "todo").exists()  # asked before it wrote
            # the README's approval block, as written, with the id the queue shows
            outputs: dict[str, str] = {}
            later = []
            for command in approve:
                args = [pending[0]["id"] if a == "apr_…" else a for a in command[1:]]
                if args[0] == "audit":  # what the call did is read once it has done it
                    later.append(args)
                    continue
                outputs[" ".join(args[:2])] = await in_thread(*args)
        assert not sent[0].is_error, text_of(sent[0])
        with anyio.fail_after(10):  # the result's own event is committed just after the answer
            for args in later:
                while "call.result" not in (out := await in_thread(*args)) and args[1] == "show":  # noqa: ASYNC110
                    await anyio.sleep(0.1)
                outputs[" ".join(args[:2])] = out
    assert (notes / "todo").read_text() == "approved"
    assert "notes__write_note" in outputs["approvals list"]
    assert outputs["approvals approve"].startswith(f"approved {pending[0]['id']}")
    assert "/console/enrol/" in outputs["approvers add"]
    assert "notes__write_note" in outputs["audit search"] and "completed" in outputs["audit search"]
    assert "looks right" in outputs["audit show"] and "call.result" in outputs["audit show"]


@pytest.mark.anyio
async def test_import_review_check_serve_call_approve_audit(npm_servers: dict[str, Path], tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "plans.md").write_text("the plan\n")
    desktop = tmp_path / "claude_desktop_config.json"
    desktop.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "filesystem": {"command": str(npm_servers["mcp-server-filesystem"]), "args": [str(files)]},
                    "everything": {"command": str(npm_servers["mcp-server-everything"])},
                }
            }
        )
    )
    config, state = tmp_path / "upstreams.yaml", tmp_path / "state"

    # import: every tool proposed, none trusted yet, and the way on printed last
    out = ok(cli("import", "claude-config", desktop, "-o", config))
    written = config.read_text()
    assert "wait: 45s" in written and "--group approvers" in written
    assert written.count("proposed: true") >= 20
    assert "read_text_file:" in written and "write_file:" in written and "get-sum:" in written
    last = out.strip().splitlines()[-3:]
    assert [line.split()[:3] for line in last] == [
        ["guard-mcp", "tools", "review"],
        ["guard-mcp", "check", "--config"],
        ["guard-mcp", "approvers", "add"],
    ]
    before = json.loads(ok(cli("tools", "list", "--config", config, "--state-dir", state, "--json")))
    assert {t["declared"] for t in before["tools"]} == {False}  # proposals are not schemas

    # review: accept them all
    ok(cli("tools", "review", "--config", config, "--accept-all"))
    assert "proposed: true" not in config.read_text()

    # check: both servers answer, every served tool has a schema
    report = json.loads(ok(cli("check", "--config", config, "--json")))
    assert report["ok"] and {u["upstream"]: u["state"] for u in report["upstreams"]} == {
        "filesystem": "ready",
        "everything": "ready",
    }

    # serve, and call through an independent client (no elicitation: approvals go out of band)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guard_mcp.cli", "serve", "--config", str(config), "--state-dir", str(state)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    async with Client(params) as client:
        with anyio.fail_after(60):
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"filesystem__read_text_file", "filesystem__write_file", "everything__echo"} <= tools
            read = await client.call_tool("filesystem__read_text_file", {"path": str(files / "plans.md")})
        assert not read.is_error, text_of(read)
        assert "the plan" in text_of(read)

        wrote: list[types.CallToolResult] = []

        async def write() -> None:
            wrote.append(
                await client.call_tool(
                    "filesystem__write_file", {"path": str(files / "notes.md"), "content": "approved\n"}
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            with anyio.fail_after(40):  # under the 45 s in-line wait: the call is still waiting
                pending: list[dict[str, Any]] = []
                while not pending:
                    await anyio.sleep(0.2)
                    done = await anyio.run_process(
                        [
                            sys.executable,
                            "-m",
                            "guard_mcp.cli",
                            "approvals",
                            "list",
                            "--state-dir",
                            str(state),
                            "--json",
                        ],
                        env={**os.environ, "PYTHONPATH": str(ROOT)},
                        check=False,
                    )
                    pending = [a for a in json.loads(done.stdout or b"[]") if a.get("state") == "pending"]
            assert not (files / "notes.md").exists()  # asked before it wrote
            # the approver reads what it does, in words import proposed from the tool (`Write file {path}`)
            said = pending[0]["headline"]
            assert said.startswith(f"Write file {str(files)[:10]}") and said.endswith("notes.md"), said
            approved = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "guard_mcp.cli",
                    "approvals",
                    "approve",
                    pending[0]["id"],
                    "--reason",
                    "my notes",
                    "--state-dir",
                    str(state),
                ],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                check=False,
            )
            assert approved.returncode == 0, approved.stderr.decode()
        assert not wrote[0].is_error, text_of(wrote[0])
    assert (files / "notes.md").read_text() == "approved\n"

    # the audit tells both stories
    calls = json.loads(ok(cli("audit", "search", "--state-dir", state, "--json")))
    by_tool = {c["tool"]: c for c in calls}
    assert by_tool["filesystem__read_text_file"]["effect"] == "allow"
    assert by_tool["filesystem__write_file"]["effect"] == "approve"
    assert by_tool["filesystem__write_file"]["outcome"] == "completed"
    ok(cli("audit", "verify", "--state-dir", state))
    # and the approval's story, by the id the client was given
    story = json.loads(ok(cli("audit", "show", pending[0]["id"], "--state-dir", state, "--json")))
    assert story["approval"]["state"] == "approved" and story["approval"]["used_by"] == story["approval"]["request_id"]
    assert story["approval"]["reason"] == "my notes" and "call.result" in [e["type"] for e in story["events"]]
