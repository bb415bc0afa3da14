from __future__ import annotations

import json
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from guard_mcp._config import HttpUpstream, StdioUpstream, load_config
from guard_mcp.cli import main
from guard_mcp.cli._import import sanitize_name

DESKTOP = {
    "mcpServers": {
        "shop": {"command": "python", "args": ["-m", "guard_mcp.demo.shop"], "env": {"SHOP_DB": "/tmp/s.db"}},
        "remote": {"type": "http", "url": "https://mcp.example.com/mcp", "headers": {"X-Team": "support"}},
    }
}


def write(tmp_path: Path, data: Any, name: str = "claude_desktop_config.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def run(*args: str | Path, connect: bool = False) -> Result:
    # Not connecting unless a test asks: these servers do not exist (and one is not on loopback).
    flags = [] if connect else ["--no-connect"]
    return CliRunner().invoke(main, ["import", "claude-config", *map(str, args), *flags])


def test_a_desktop_config_becomes_an_equivalent_upstreams_yaml(tmp_path: Path) -> None:
    out = tmp_path / "upstreams.yaml"
    result = run(write(tmp_path, DESKTOP), "-o", out)
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    shop, remote = cfg.upstreams["shop"], cfg.upstreams["remote"]
    assert isinstance(shop, StdioUpstream)
    assert (shop.command, shop.args, shop.env) == ("python", ["-m", "guard_mcp.demo.shop"], {"SHOP_DB": "/tmp/s.db"})
    assert isinstance(remote, HttpUpstream)
    assert (remote.url, remote.headers) == ("https://mcp.example.com/mcp", {"X-Team": "support"})
    assert cfg.guard.environment == "development"
    assert "# tools:" in out.read_text()
    assert f'"{out}"' in result.stdout  # the client snippet points at the absolute path
    assert result.stderr == ""


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def _snippet(tmp_path: Path) -> dict[str, Any]:
    result = run(write(tmp_path, DESKTOP), "-o", tmp_path / "up.yaml", "--force", "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)["client_config"]["mcpServers"]["guard"])


def test_the_client_snippet_names_the_installation_running_and_always_by_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A desktop client starts the command without the shell's PATH or working directory: an older
    # guard-mcp earlier on PATH, a relative PATH entry or a bare name would each start the wrong thing, or nothing.
    venv = _executable(tmp_path / "venv" / "bin" / "python")
    mine = _executable(venv.parent / "guard-mcp")
    _executable(tmp_path / "old" / "guard-mcp")
    monkeypatch.setattr(sys, "executable", str(venv))
    monkeypatch.setenv("PATH", str(tmp_path / "old"))
    assert _snippet(tmp_path)["command"] == str(mine)

    mine.unlink()  # run from a checkout: only a relative PATH entry has one
    _executable(tmp_path / "rel" / "guard-mcp")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "rel")
    assert _snippet(tmp_path)["command"] == str(tmp_path / "rel" / "guard-mcp")

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # none at all: this interpreter runs the CLI module
    guard = _snippet(tmp_path)
    assert guard["command"] == str(venv) and guard["args"][:3] == ["-m", "guard_mcp.cli", "serve"]


def test_the_claude_code_line_adds_the_guard_for_every_project_and_quotes_a_path_with_spaces(tmp_path: Path) -> None:
    where = tmp_path / "My Guard"
    where.mkdir()
    result = run(write(tmp_path, DESKTOP), "-o", where / "upstreams.yaml")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("For Claude Code: "))
    words = shlex.split(line.removeprefix("For Claude Code: "))
    assert words[:6] == ["claude", "mcp", "add", "--scope", "user", "guard"]  # for every project, not this directory
    assert words[-2:] == ["--config", str(where / "upstreams.yaml")]


def test_a_config_that_already_starts_the_guard_is_not_wrapped_in_the_guard_again(tmp_path: Path) -> None:
    # importing the client's config again after the guard went in (to pick up a server added since)
    # must not make the guard an upstream of itself, which would guard every call twice
    guarded = {
        "mcpServers": {
            "guard": {
                "command": "/home/u/.guard-mcp/bin/guard-mcp",
                "args": ["serve", "--config", "/home/u/guard/upstreams.yaml"],
            },
            "guard-dev": {"command": "/usr/bin/python3", "args": ["-m", "guard_mcp.cli", "serve"]},
            "notes": {"command": "notes-server"},
        }
    }
    out = tmp_path / "upstreams.yaml"
    result = run(write(tmp_path, guarded), "-o", out)
    assert result.exit_code == 0, result.output
    assert list(load_config(out).upstreams) == ["notes"]
    assert (
        "server `guard` is guard-mcp itself: skipped; the servers it guards are in `/home/u/guard/upstreams.yaml`"
        in result.stderr
    )
    assert "server `guard-dev` is guard-mcp itself" in result.stderr

    only = {"mcpServers": {"guard": guarded["mcpServers"]["guard"]}}
    result = run(write(tmp_path, only, "mcp.json"), "-o", tmp_path / "again.yaml")
    assert result.exit_code != 0 and not (tmp_path / "again.yaml").exists()
    assert (
        "names no server but guard-mcp itself, which already guards those in `/home/u/guard/upstreams.yaml`: "
        "add a new server under that file's `upstreams:`" in result.output
    )


def test_a_cursor_configs_own_variables_become_the_guards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Cursor expands `${env:NAME}`, `${userHome}` and `${workspaceFolder}` itself; copied as they are, the
    # upstream got the literal text (a key `${env:CTX_KEY}`), or the guard refused to start
    monkeypatch.setenv("CTX_KEY", "k-123")
    cursor = {
        "mcpServers": {
            "ctx": {
                "command": "npx",
                "args": ["-y", "ctx-mcp", "${userHome}/notes", "--root=${workspaceFolder}"],
                "env": {"API_KEY": "${env:CTX_KEY}"},
            },
            "remote": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ${env:CTX_KEY}"}},
        }
    }
    out = tmp_path / "upstreams.yaml"
    result = run(write(tmp_path, cursor, "mcp.json"), "-o", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "${env:" not in text and "${userHome}" not in text
    assert f'"{Path.home()}/notes"' in text and '"${CTX_KEY}"' in text and '"Bearer ${CTX_KEY}"' in text
    assert "literal secret" not in result.stderr  # a variable, not a secret written out
    assert (
        "server `ctx` names `${workspaceFolder}`, the client's open project, which the guard serving every "
        "project does not know: write that folder's path instead"
    ) in result.stderr
    assert "`${workspaceFolder}` is not set in this shell" not in result.stderr


def test_json_output_carries_the_client_snippet(tmp_path: Path) -> None:
    out = tmp_path / "up.yaml"
    result = run(write(tmp_path, DESKTOP), "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    guard = report["client_config"]["mcpServers"]["guard"]
    assert list(report["client_config"]["mcpServers"]) == ["guard"]
    assert guard["args"] == ["serve", "--config", str(out)]
    assert guard["command"].endswith("guard-mcp")
    assert report["upstreams"] == ["shop", "remote"]
    assert report["warnings"] == []


def test_output_defaults_to_the_config_option(tmp_path: Path) -> None:
    target = tmp_path / "chosen.yaml"
    result = run(write(tmp_path, DESKTOP), "--config", target)
    assert result.exit_code == 0, result.output
    assert set(load_config(target).upstreams) == {"shop", "remote"}


def test_an_existing_file_is_not_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "upstreams.yaml"
    out.write_text("# mine\n")
    source = write(tmp_path, DESKTOP)
    refused = run(source, "-o", out)
    assert refused.exit_code == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert out.read_text() == "# mine\n"
    assert run(source, "-o", out, "--force").exit_code == 0
    assert set(load_config(out).upstreams) == {"shop", "remote"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{\n  "mcpServers": {\n    "a": {"command": "x",}\n  }\n}', ":3:26: invalid JSON"),
        ("[1, 2]", "is not a JSON object"),
        ({"servers": {"a": {"command": "x"}}}, "has no servers under `mcpServers`"),
        ({"mcpServers": {}}, "has no servers under `mcpServers`"),
        ({"mcpServers": []}, "`mcpServers` must be an object"),
        ({"mcpServers": {"odd": {"args": ["x"]}}}, "server `odd` has neither `command` nor `url`"),
        ({"mcpServers": {"both": {"command": "x", "url": "https://a"}}}, "server `both` has both"),
        ({"mcpServers": {"a": {"command": "x", "args": "--flag"}}}, "`args` must be a list of strings"),
        ({"mcpServers": {"a": {"command": "x", "env": {"K": ["v"]}}}}, "`env` must be an object of string values"),
        ({"mcpServers": {"a": {"url": "ftp://files.example.com"}}}, "must start with http:// or https://"),
        ({"mcpServers": {"a": "npx server"}}, "server `a` must be an object"),
    ],
)
def test_bad_input_gets_one_clear_error_and_writes_nothing(tmp_path: Path, source: Any, message: str) -> None:
    out = tmp_path / "upstreams.yaml"
    result = run(write(tmp_path, source), "-o", out)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    result = run(tmp_path / "nope.json", "-o", tmp_path / "u.yaml")
    assert result.exit_code == 2
    assert "nope.json` does not exist" in result.stderr


def test_invalid_names_are_sanitized_deterministically_and_reported(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        {"mcpServers": {"my_files.v2": {"command": "a"}, "my files v2": {"command": "b"}, "42": {"command": "c"}}},
    )
    first = run(source, "-o", tmp_path / "one.yaml")
    second = run(source, "-o", tmp_path / "two.yaml")
    assert first.exit_code == 0, first.output
    assert second.stderr == first.stderr
    upstreams = load_config(tmp_path / "one.yaml").upstreams
    assert {name: up.command for name, up in upstreams.items()} == {  # type: ignore[union-attr]
        "my-files-v2": "a",
        "my-files-v2-2": "b",
        "server": "c",
    }
    assert list(load_config(tmp_path / "two.yaml").upstreams) == list(upstreams)
    assert "`my_files.v2` is not a valid upstream name; imported as `my-files-v2`" in first.stderr
    assert "`my files v2` is not a valid upstream name; imported as `my-files-v2-2`" in first.stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("github", "github"),
        ("my_server", "my-server"),
        ("@scope/pkg", "scope-pkg"),
        ("9lives", "lives"),
        ("___", "server"),
        ("a" * 40, "a" * 24),
        ("abcdefghijklmnopqrstuvw_xyz", "abcdefghijklmnopqrstuvw"),
        ("Café", "Caf"),
    ],
)
def test_sanitize_name(name: str, expected: str) -> None:
    assert sanitize_name(name) == expected


def test_literal_secrets_are_kept_with_a_warning_and_the_file_is_private(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        {
            "mcpServers": {
                "github": {"command": "npx", "env": {"GITHUB_TOKEN": "ghp_0123456789abcdef", "LOG_LEVEL": "info"}},
                "remote": {"url": "https://a.example/mcp", "headers": {"Authorization": "Bearer abcdefgh12345678"}},
            }
        },
    )
    out = tmp_path / "upstreams.yaml"
    result = run(source, "-o", out)
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    assert cfg.upstreams["github"].env["GITHUB_TOKEN"] == "ghp_0123456789abcdef"  # type: ignore[union-attr]
    assert "env `GITHUB_TOKEN` holds a literal secret" in result.stderr
    assert "write `${GITHUB_TOKEN}` instead" in result.stderr
    assert "write `Bearer ${REMOTE_TOKEN}` instead" in result.stderr
    assert "LOG_LEVEL" not in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_variable_references_are_kept_and_unset_ones_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMPORT_TEST_TOKEN", raising=False)
    source = write(tmp_path, {"mcpServers": {"gh": {"command": "npx", "env": {"TOKEN": "${IMPORT_TEST_TOKEN}"}}}})
    out = tmp_path / "upstreams.yaml"
    result = run(source, "-o", out)
    assert result.exit_code == 0, result.output
    assert '"${IMPORT_TEST_TOKEN}"' in out.read_text()
    assert "`${IMPORT_TEST_TOKEN}` is not set in this shell" in result.stderr
    assert "literal secret" not in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # always: secrets hide where no pattern looks (args, URLs)
    monkeypatch.setenv("IMPORT_TEST_TOKEN", "t")
    assert load_config(out).upstreams["gh"].env == {"TOKEN": "t"}  # type: ignore[union-attr]


def test_keys_upstreams_yaml_has_no_use_for_are_dropped_with_a_warning(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        {
            "mcpServers": {
                "fs": {"command": "uvx", "autoApprove": ["read"], "disabled": True},
                "old": {"type": "sse", "url": "https://a.example/sse"},
            }
        },
    )
    out = tmp_path / "upstreams.yaml"
    result = run(source, "-o", out)
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    assert cfg.upstreams["fs"].disabled is True
    assert "ignored key `autoApprove`" in result.stderr
    assert "server `old` uses the SSE transport" in result.stderr


CLAUDE_CODE = {
    "numStartups": 12,
    "mcpServers": {"shop": {"command": "python", "args": ["-m", "guard_mcp.demo.shop"]}},
    "projects": {
        "/home/me/a": {"mcpServers": {"db": {"command": "db-mcp"}}, "history": []},
        "/home/me/b": {
            "mcpServers": {"db": {"command": "db-mcp"}, "jira": {"url": "https://jira.example/mcp"}},
        },
        "/home/me/c": {"allowedTools": []},
    },
}


def test_claude_code_user_and_project_servers_are_merged(tmp_path: Path) -> None:
    out = tmp_path / "upstreams.yaml"
    result = run(write(tmp_path, CLAUDE_CODE, ".claude.json"), "-o", out)
    assert result.exit_code == 0, result.output
    assert list(load_config(out).upstreams) == ["shop", "db", "jira"]


def test_claude_code_project_filter(tmp_path: Path) -> None:
    source = write(tmp_path, CLAUDE_CODE, ".claude.json")
    out = tmp_path / "upstreams.yaml"
    assert run(source, "-o", out, "--project", "/home/me/a").exit_code == 0
    assert list(load_config(out).upstreams) == ["shop", "db"]
    unknown = run(source, "-o", tmp_path / "x.yaml", "--project", "/nowhere")
    assert unknown.exit_code == 2
    assert "has no project `/nowhere`" in unknown.stderr


def test_conflicting_project_servers_are_both_kept_under_distinct_names(tmp_path: Path) -> None:
    data = {
        "projects": {
            "/p1": {"mcpServers": {"db": {"command": "one"}}},
            "/p2": {"mcpServers": {"db": {"command": "two"}}},
        }
    }
    out = tmp_path / "upstreams.yaml"
    result = run(write(tmp_path, data, ".claude.json"), "-o", out)
    assert result.exit_code == 0, result.output
    ups = load_config(out).upstreams
    assert {n: u.command for n, u in ups.items()} == {"db": "one", "db-2": "two"}  # type: ignore[union-attr]
    assert "server `db` of project `/p2` differs" in result.stderr


def test_the_commented_tools_hint_is_valid_once_uncommented(tmp_path: Path) -> None:
    out = tmp_path / "upstreams.yaml"
    assert run(write(tmp_path, {"mcpServers": {"my-db": {"command": "db"}}}), "-o", out).exit_code == 0
    text = out.read_text().replace("    # tools:", "    tools:").replace("    #   some_tool:", "      some_tool:")
    tool = load_config(text=text).upstreams["my-db"].tools["some_tool"]
    assert tool.action == "my_db.some_tool"
    assert tool.category == "read"


def test_attack_a_planted_tmp_file_decides_neither_the_mode_nor_the_target(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        {
            "mcpServers": {
                "pg": {
                    "command": "npx",
                    "args": ["server-postgres", "postgresql://admin:PG-PASSWORD-123@db.internal/prod"],
                }
            }
        },
    )
    out = tmp_path / "upstreams.yaml"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "upstreams.yaml.tmp").symlink_to(victim)  # the old fixed temporary name, planted
    result = run(source, "-o", out)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me" and not out.is_symlink()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the password in `args` stays private


def test_a_client_config_nested_thousands_deep_is_one_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "deep.json"
    source.write_text("[" * 100_000 + "]" * 100_000)
    result = run(source, "-o", tmp_path / "upstreams.yaml")
    assert result.exit_code == 2 and "nests too deeply" in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_attack_an_output_path_that_is_a_symlink_is_refused_and_nothing_is_written_through_it(
    tmp_path: Path, force: list[str]
) -> None:
    package_file = tmp_path / "package" / "upstreams.yaml"
    package_file.parent.mkdir()
    package_file.write_text("# shipped with the package\n")
    link = tmp_path / "upstreams.yaml"
    link.symlink_to(package_file)
    source = write(tmp_path, {"mcpServers": {"gh": {"command": "gh-mcp", "env": {"GITHUB_TOKEN": "ghp_secret1234"}}}})
    result = run(source, "-o", link, *force)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "symbolic link" in result.stderr and f"`{link}`" in result.stderr
    assert package_file.read_text() == "# shipped with the package\n"
    assert link.is_symlink() and link.resolve() == package_file


def test_attack_the_default_output_in_the_working_directory_is_not_written_through_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package_file = tmp_path / "demo.yaml"
    package_file.write_text("# demo\n")
    work = tmp_path / "clone"
    work.mkdir()
    (work / "upstreams.yaml").symlink_to(package_file)
    monkeypatch.chdir(work)
    result = run(write(tmp_path, DESKTOP), "--force")
    assert result.exit_code == 2 and "symbolic link" in result.stderr
    assert package_file.read_text() == "# demo\n"


# ------------------------------------------------------------------------- proposed action schemas

import mcp_types as types  # noqa: E402

from guard_mcp.cli._import import convert_client_config, list_tools  # noqa: E402

READ = types.Tool(
    name="read_text_file",
    description="Read a file.",
    input_schema={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    annotations=types.ToolAnnotations(read_only_hint=True),
)
WRITE = types.Tool(
    name="write_file",
    description="Write a file.",
    input_schema={"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}},
    annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
)
REFUND = types.Tool(
    name="issueRefund",
    input_schema={"type": "object", "properties": {"customer_id": {"type": "string"}, "amount": {"type": "number"}}},
    annotations=types.ToolAnnotations(read_only_hint=True),
)  # says read-only; the name says money
MYSTERY = types.Tool(name="frobnicate", input_schema={"type": "object"})


def imported(tmp_path: Path, listed: dict[str, Any]) -> tuple[str, Any]:
    result = convert_client_config(write(tmp_path, {"mcpServers": {"fs": {"command": "fs-mcp"}}}))
    result.listed = listed
    text = result.render()
    return text, load_config(text=text)


def test_every_listed_tool_gets_a_proposal_that_counts_as_no_schema_until_accepted(tmp_path: Path) -> None:
    text, cfg = imported(tmp_path, {"fs": [READ, WRITE, REFUND, MYSTERY]})
    tools = cfg.upstreams["fs"].tools
    assert set(tools) == {"read_text_file", "write_file", "issueRefund", "frobnicate"}
    assert all(t.proposed for t in tools.values())
    for name in tools:  # the guard serves each as `unknown`
        schema = cfg.action_schema("fs", name)
        assert not schema.declared and schema.category.value == "unknown"
    proposed = {name: (t.category.value, t.reversibility.value, t.resource) for name, t in tools.items()}
    assert proposed == {
        "read_text_file": ("read", "full", "path"),
        "write_file": ("destructive", "none", "path"),
        "issueRefund": ("financial", "none", "customer_id"),
        "frobnicate": ("unknown", "none", None),
    }
    # every field says where it came from
    entry = text[text.index("      read_text_file:") : text.index("      write_file:")]
    for key in ("proposed", "action", "category", "reversibility", "blast_radius", "sensitivity", "resource"):
        line = next(x for x in entry.splitlines() if x.strip().startswith(f"{key}:"))
        assert "  # " in line, line
    assert "readOnlyHint" in entry and "the name has `read`" in entry
    assert "the riskier reading" in text[text.index("issueRefund:") :]


def test_attack_an_upstreams_description_and_names_cannot_write_keys_into_the_file(tmp_path: Path) -> None:
    evil = types.Tool(
        name="read_x\n        proposed: false\n      pwn",
        description="Harmless.\n        proposed: false\n        category: read\r\u2028proposed: false\x85x",
        input_schema={"type": "object", "properties": {"path\n        proposed: false": {"type": "string"}}},
        annotations=types.ToolAnnotations(read_only_hint=True),
    )
    text, cfg = imported(tmp_path, {"fs": [evil]})
    tools = cfg.upstreams["fs"].tools
    assert list(tools) == [evil.name]
    assert tools[evil.name].proposed is True
    assert cfg.action_schema("fs", evil.name).declared is False
    assert text.count("proposed: true") == 1


def test_a_server_that_does_not_answer_or_start_is_written_with_why_and_how_long(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        {
            "mcpServers": {
                "silent": {"command": sys.executable, "args": ["-c", "import time; time.sleep(30)"]},
                "missing": {"command": "no-such-mcp-server-here"},
            }
        },
    )
    result = convert_client_config(source)
    list_tools(result, timeout=1.5)
    cfg = load_config(text=result.yaml_text)
    assert set(cfg.upstreams) == {"silent", "missing"}
    assert "# tools: not listed: `silent` did not answer within 1.5s" in result.yaml_text
    assert (
        "# tools: not listed: `missing` did not start: command `no-such-mcp-server-here` was not found"
        in result.yaml_text
    )


def test_import_asks_for_a_wait_under_client_timeouts_names_the_group_and_ends_with_three_commands(
    tmp_path: Path,
) -> None:
    out = tmp_path / "up.yaml"
    result = run(write(tmp_path, DESKTOP), "-o", out)
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    assert cfg.guard.approvals.wait == 45  # the TypeScript SDK gives up on a request at 60 s
    assert "--group approvers" in out.read_text()
    tail = result.stdout.strip().splitlines()[-4:]
    assert tail[0] == "Next:"
    assert tail[1].split() == ["guard-mcp", "tools", "review", "--config", str(out)]
    assert tail[2].split() == ["guard-mcp", "check", "--config", str(out)]
    assert tail[3].split()[:3] == ["guard-mcp", "approvers", "add"]
