"""`guard-mcp import claude-config FILE`: turn a client's `mcpServers` block into upstreams.yaml.

Reads Claude Desktop, Cursor and Claude Code configs (`.mcp.json`, and `~/.claude.json` with its
per-project servers), writes the equivalent upstreams.yaml with the guard's defaults spelled out,
checks it with the same loader `serve` uses, and prints the one entry the client should keep so it
launches only the guard. The client's own file is never modified.

Unless told not to, it starts each server once (bounded by `--timeout`), lists its tools and writes a
proposed action schema for every one (guard_mcp/_propose.py), each field with a comment saying where
it came from. Proposals are marked `proposed: true` and count as no schema until a person accepts them
(`guard-mcp tools review`), so what the upstream says about itself never decides its risk.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from guard_mcp._errors import ConfigError
from guard_mcp._state import write_private
from guard_mcp.cli._common import Env, Seconds, err_console, output_options, print_json

if TYPE_CHECKING:
    import mcp_types as types

__all__ = ["ImportResult", "convert_client_config", "import_"]

_STDIO_KEYS = {"command", "args", "env", "cwd"}
_HTTP_KEYS = {"url", "headers"}
_PASSED_KEYS = {"disabled"}
_TRANSPORT_TYPES = {"stdio", "http", "streamable-http", "streamableHttp", "sse"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
_SECRET_NAME = re.compile(r"key|token|secret|passw|pwd|auth|credential|cookie|session|private", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^(?:bearer\s+\S{8,}|sk-|ghp_|gho_|github_pat_|xox[abpr]-|glpat-|AKIA)", re.IGNORECASE)


@dataclass
class ImportResult:
    yaml_text: str
    upstreams: list[str]
    warnings: list[str] = field(default_factory=list)
    secrets: bool = False  # literal secrets were kept, so the file is written private
    source: Path = Path()
    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # per upstream: the tools it listed, or why it could not be listed (absent: not connected)
    listed: dict[str, list[types.Tool] | str] = field(default_factory=dict)

    def render(self) -> str:
        self.yaml_text = _render(self.source, self.entries, self.listed)
        return self.yaml_text


# ------------------------------------------------------------------------------------------ reading

_MAX_CLIENT_CONFIG = 10_000_000  # characters; client configurations are a few kilobytes


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"client config `{path}` does not exist; pass the path to its JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read client config `{path}`: {exc}") from None
    if len(text) > _MAX_CLIENT_CONFIG:
        raise ConfigError(
            f"client config `{path}` is over {_MAX_CLIENT_CONFIG // 1_000_000} MB; pass the client's "
            "own configuration file"
        )
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"client config `{path}` nests too deeply to be a client configuration") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"`{path}`:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}; fix the file and retry"
        ) from None


def _collect(path: Path, data: Any, project: str | None, warnings: list[str]) -> list[tuple[str, Any]]:
    """(name, entry) pairs in file order: the top-level servers, then Claude Code's per-project ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"`{path}` is not a JSON object with `mcpServers`; pass a client's MCP config file")
    found: list[tuple[str, Any]] = []
    top = data.get("mcpServers")
    if top is not None and not isinstance(top, dict):
        raise ConfigError(f"`{path}`: `mcpServers` must be an object of servers by name")
    found.extend((top or {}).items())
    projects = data.get("projects")
    if isinstance(projects, dict):
        if project is not None and project not in projects:
            raise ConfigError(f"`{path}` has no project `{project}`; choose one of: {', '.join(sorted(projects))}")
        for where, settings in projects.items():
            if project is not None and where != project:
                continue
            servers = settings.get("mcpServers") if isinstance(settings, dict) else None
            if not isinstance(servers, dict):
                continue
            for name, entry in servers.items():
                same = [e for n, e in found if n == name]
                if same and same[0] == entry:
                    continue
                if same:
                    warnings.append(f"server `{name}` of project `{where}` differs from an earlier one of that name")
                found.append((name, entry))
    elif project is not None:
        raise ConfigError(f"`{path}` has no `projects`; `--project` only applies to Claude Code's ~/.claude.json")
    if not found:
        raise ConfigError(
            f"`{path}` has no servers under `mcpServers`; pass a Claude Desktop, Claude Code or Cursor MCP config"
        )
    return found


# ---------------------------------------------------------------------------------------- converting


def sanitize_name(name: str) -> str:
    """A deterministic valid upstream name: letters, digits and `-`, starting with a letter, at most 24."""
    clean = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    clean = re.sub(r"^[^A-Za-z]+", "", clean) or "server"
    return clean[:24].rstrip("-")


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = name[: 24 - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
        n += 1


def _looks_secret(key: str, value: str) -> bool:
    if _VAR.search(value) or not value.strip():
        return False
    return bool(_SECRET_NAME.search(key) or _SECRET_VALUE.match(value.strip()))


def _env_name(upstream: str, key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{upstream}_{key}").upper().strip("_")


def _strings(path: Path, name: str, key: str, value: Any, kind: type) -> Any:
    if kind is list and not (isinstance(value, list) and all(isinstance(v, str | int | float) for v in value)):
        raise ConfigError(f"`{path}`: server `{name}`: `{key}` must be a list of strings")
    if kind is dict and not (
        isinstance(value, dict) and all(isinstance(v, str | int | float | bool) for v in value.values())
    ):
        raise ConfigError(f"`{path}`: server `{name}`: `{key}` must be an object of string values")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"`{path}`: server `{name}`: `{key}` must be a string")
    if kind is list:
        return [str(v) for v in value]
    if kind is dict:
        return {str(k): (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in value.items()}
    return value


# The variables clients expand in their own configs (Cursor, VS Code): `${env:NAME}` is the guard's
# `${NAME}`, the user's home is known now; the client's open project is not known to the guard.
_CLIENT_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def _home() -> str:
    return str(Path.home())


def _separator() -> str:
    return os.sep


_CLIENT_KNOWN: dict[str, Callable[[], str]] = {"userHome": _home, "pathSeparator": _separator}
_CLIENT_PROJECT = re.compile(r"\$\{(workspaceFolder(?:Basename)?)\}")


def _client_variables(source_name: str, value: str, result: ImportResult) -> str:
    value = _CLIENT_ENV.sub(lambda m: "${" + m.group(1) + "}", value)
    for var, known in _CLIENT_KNOWN.items():
        value = value.replace("${" + var + "}", known())
    for var in dict.fromkeys(_CLIENT_PROJECT.findall(value)):
        warning = (
            f"server `{source_name}` names `${{{var}}}`, the client's open project, which the guard serving "
            "every project does not know: write that folder's path instead"
        )
        if warning not in result.warnings:
            result.warnings.append(warning)
    return value


def _convert_entry(path: Path, source_name: str, name: str, entry: Any, result: ImportResult) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"`{path}`: server `{source_name}` must be an object with `command` or `url`")
    has_command, has_url = "command" in entry, "url" in entry
    if not has_command and not has_url:
        raise ConfigError(
            f"`{path}`: server `{source_name}` has neither `command` nor `url`; add one or remove the entry"
        )
    if has_command and has_url:
        raise ConfigError(f"`{path}`: server `{source_name}` has both `command` and `url`; keep one")
    keys = _STDIO_KEYS if has_command else _HTTP_KEYS
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in keys:
            kind = {"command": str, "cwd": str, "url": str, "args": list, "env": dict, "headers": dict}[key]
            converted = _strings(path, source_name, key, value, kind)
            if isinstance(converted, str):
                converted = _client_variables(source_name, converted, result)
            elif isinstance(converted, list):
                converted = [_client_variables(source_name, v, result) for v in converted]
            else:
                converted = {k: _client_variables(source_name, v, result) for k, v in converted.items()}
            out[key] = converted
        elif key == "type" and value in _TRANSPORT_TYPES:
            if value == "sse":
                result.warnings.append(
                    f"server `{source_name}` uses the SSE transport; guard-mcp speaks streamable HTTP, so check "
                    f"that `{entry.get('url')}` serves it"
                )
        elif key in _PASSED_KEYS and isinstance(value, bool):
            out[key] = value
        else:
            result.warnings.append(f"server `{source_name}`: ignored key `{key}`, which upstreams.yaml has no use for")
    for key in ("env", "headers"):
        for var, value in out.get(key, {}).items():
            if not _looks_secret(var, value):
                continue
            result.secrets = True
            if key == "env":
                where, suggestion = f"env `{var}`", f"${{{var}}}"
            elif value.lower().startswith("bearer "):
                where, suggestion = f"header `{var}`", f"Bearer ${{{_env_name(name, 'token')}}}"
            else:
                where, suggestion = f"header `{var}`", f"${{{_env_name(name, var)}}}"
            result.warnings.append(
                f"upstream `{name}` {where} holds a literal secret, kept as is; write `{suggestion}` instead "
                "and export it where the guard runs"
            )
    return out


def _guard_config(entry: Any) -> str | None:
    """For an entry that starts guard-mcp's own `serve`, the `--config` it names (`""` when none), else None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return None
    args = [str(a) for a in entry.get("args") or [] if isinstance(a, str | int | float)]
    program = Path(entry["command"]).name.lower().removesuffix(".exe")
    if program == "guard-mcp":
        rest = args
    elif args[:2] == ["-m", "guard_mcp.cli"]:
        rest = args[2:]
    else:
        return None
    if not rest or rest[0] != "serve":
        return None
    return rest[rest.index("--config") + 1] if "--config" in rest[:-1] else ""


def convert_client_config(path: Path, *, project: str | None = None) -> ImportResult:
    """The upstreams.yaml text for a client config, with what the user should know about it."""
    from guard_mcp._config import UPSTREAM_NAME  # here, like `load_config` below: `--help` loads no models

    result = ImportResult(yaml_text="", upstreams=[], source=path)
    entries = _collect(path, _parse(path), project, result.warnings)
    taken: set[str] = set()
    converted: list[tuple[str, dict[str, Any]]] = []
    guards: list[str] = []
    for source_name, entry in entries:
        guarded = _guard_config(entry)
        if guarded is not None:  # wrapped in itself, every call would be guarded twice over
            where = f"`{guarded}`" if guarded else "its config"
            guards.append(where)
            result.warnings.append(
                f"server `{source_name}` is guard-mcp itself: skipped; the servers it guards are "
                f"in {where}, add new ones under its `upstreams:`"
            )
            continue
        name = source_name if UPSTREAM_NAME.fullmatch(source_name) else sanitize_name(source_name)
        name = _unique(name, taken)
        if name != source_name:
            result.warnings.append(f"server name `{source_name}` is not a valid upstream name; imported as `{name}`")
        taken.add(name)
        converted.append((name, _convert_entry(path, source_name, name, entry, result)))
    if guards and not converted:
        raise ConfigError(
            f"`{path}` names no server but guard-mcp itself, which already guards those in "
            f"{guards[0]}: add a new server under that file's `upstreams:`, or import the client "
            "config you had before the guard"
        )
    result.upstreams = [name for name, _ in converted]
    result.entries = converted
    result.render()
    return result


# ----------------------------------------------------------------------------------------- rendering


def _scalar(value: Any) -> str:
    # A JSON string is a valid YAML double-quoted scalar, so quoting never depends on the content.
    return json.dumps(value)


_HEADER = """\
# guard-mcp configuration, imported from {source}
# on {when}. Your MCP client now launches only the guard; the guard launches these servers.
#
# Attach an action schema to each tool under its upstream's `tools:`; a tool without one counts
# as `unknown`, which is never LOW risk. `guard-mcp tools --config <this file>` lists the names.
#   tools:
#     some_tool:
#       action: github.some_tool  # dotted lower-case words; permits are bound to it
#       category: read            # read, write, communicate, destructive, financial, permission
#       reversibility: full       # full, partial, none
#       blast_radius: single      # single, many, all
#       sensitivity: internal     # public, internal, confidential, restricted
#       resource: repo            # the argument that names what the call acts on
#       headline: "Do some thing in {{repo}}"  # how its approvals read; `{{argument}}` shows a value

guard:
  environment: development  # permits carry it; set `production` where it matters
  principal: local-user  # who the calls are attributed to in approvals and the audit log
  # policy: policies/my.bundle.json  # a signed policy bundle; without one the built-in tier defaults apply
  # trusted_policy_keys: [keys/policy-signer.pub.pem]
  approvals:
    # How long a call waits in-line for a decision before it answers `pending_approval` (approve it,
    # then repeat the call). Under the clients' own request timeouts (the TypeScript SDK gives up at
    # 60s), so the client sees that answer instead of a timeout.
    wait: 45s
    expire: 2h  # an approval nobody decides by then is a denial
  # Without a policy, approvals belong to the approver group `approvers`; a HIGH-risk one needs a named
  # member with a TOTP code: `guard-mcp approvers add YOUR_NAME --group approvers`.

upstreams:
"""

_TOOLS_HINT = """\
    # tools:
    #   some_tool: {{action: {action}.some_tool, category: read, reversibility: full}}
"""
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_MAX_COMMENT = 160
PROPOSED_NOTE = "served as `unknown` until accepted: `guard-mcp tools review`, or delete this line"


def _key(key: str) -> str:
    # a plain key only when YAML reads it back as the same string (`on`, `null`, `1` would not be)
    return key if _PLAIN_KEY.match(key) and yaml.safe_load(key) == key else _scalar(key)


def _comment(text: str) -> str:
    """Text for a YAML comment: one line (an upstream's description or argument name must not end the
    comment and write keys of its own), bounded."""
    from guard_mcp._catalog import one_line

    return one_line(text, _MAX_COMMENT)


def _render_tools(upstream: str, listed: list[types.Tool] | str) -> list[str]:
    from guard_mcp._propose import propose

    if isinstance(listed, str):
        return [f"    # tools: not listed: {_comment(listed)}; once it runs, `guard-mcp tools` lists them\n"]
    if not listed:
        return ["    tools: {}  # the server listed no tools\n"]
    lines = ["    tools:  # proposals from what the server says about its tools: check each one\n"]
    for tool in listed:
        proposal = propose(upstream, tool)
        if proposal.summary:
            lines.append(f"      # {_comment(f'`{tool.name}`: {proposal.summary}')}\n")
        lines.append(f"      {_key(tool.name)}:\n")
        lines.append(f"        proposed: true  # {PROPOSED_NOTE}\n")
        for key, value in proposal.fields.items():
            shown = _key(value) if key == "resource" else _scalar(value) if key == "headline" else value
            lines.append(f"        {key}: {shown}  # {_comment(proposal.why[key])}\n")
    return lines


def _render(
    source: Path, upstreams: list[tuple[str, dict[str, Any]]], listed: dict[str, list[types.Tool] | str] | None = None
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [_HEADER.format(source=source.resolve(), when=when)]
    for name, entry in upstreams:
        lines.append(f"  {name}:\n")
        for key, value in entry.items():
            if isinstance(value, list):
                lines.append(f"    {key}: [{', '.join(_scalar(v) for v in value)}]\n")
            elif isinstance(value, dict):
                lines.append(f"    {key}:{' {}' if not value else ''}\n")
                lines.extend(f"      {_key(k)}: {_scalar(v)}\n" for k, v in value.items())
            elif isinstance(value, bool):
                lines.append(f"    {key}: {'true' if value else 'false'}\n")
            else:
                lines.append(f"    {key}: {_scalar(value)}\n")
        if listed is not None and name in listed:
            lines.extend(_render_tools(name, listed[name]))
        else:
            lines.append(_TOOLS_HINT.format(action=re.sub(r"[^a-z0-9]+", "_", name.lower())))
    return "".join(lines)


# ------------------------------------------------------------------------------------------ listing


def _loadable(text: str) -> Any:
    from guard_mcp._config import load_config

    referenced = sorted(set(_VAR.findall(text)) - set(os.environ) - {"PYTHON"})
    return load_config(text=text, environ={**os.environ, **{var: "" for var in referenced}})


def list_tools(result: ImportResult, timeout: float) -> None:
    """Start every imported server once, at the same time, and take what each lists within `timeout`
    seconds; one that fails or does not answer is recorded with why, and its entry is still written."""
    from guard_mcp.cli._probe import probe_upstreams

    config = _loadable(result.yaml_text)
    listed: dict[str, list[types.Tool] | str] = {}
    for probed in probe_upstreams(config, timeout):
        if probed.state == "ready":
            listed[probed.name] = probed.tools
        elif probed.error and probed.error.startswith("did not answer"):
            listed[probed.name] = f"`{probed.name}` {probed.error}"
        else:
            listed[probed.name] = f"`{probed.name}` did not start: {probed.error}"
    for name, up in config.upstreams.items():
        if up.disabled:
            listed[name] = f"`{name}` is disabled"
    result.listed = listed
    result.render()


# ------------------------------------------------------------------------------------------ writing


def _validate(text: str) -> list[str]:
    """Load the result the way `serve` will; a `${VAR}` unset here is a warning, not a failure."""
    from guard_mcp._config import load_config

    referenced = sorted(set(_VAR.findall(text)) - set(os.environ) - {"PYTHON"})
    environ = {**os.environ, **{var: "" for var in referenced}}
    try:
        load_config(text=text, environ=environ)
    except ConfigError as exc:
        raise ConfigError(f"the imported configuration does not load, nothing written: {exc}") from None
    project = set(_CLIENT_PROJECT.findall(text))  # said already, in the client's words
    return [
        f"`${{{var}}}` is not set in this shell; export it where the guard runs"
        for var in referenced
        if var not in project
    ]


def _write(out: Path, text: str) -> None:
    """Always private (0600), through a fresh temporary file: a client config hides secrets in places no
    pattern finds (`args`, a URL's query), and a leftover or planted `.tmp` must not decide the mode."""
    try:
        write_private(out, text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write `{out}`: {exc.strerror}; choose a writable place with -o") from None


def _output_path(given: Path) -> Path:
    """The absolute path to write, refusing a symbolic link: writing through one lands the imported
    servers and their secrets wherever it points (the repository's `upstreams.yaml` points into the
    installed package), and --force must not change that. Only the directory part is resolved."""
    path = given.expanduser()
    if path.is_symlink():
        raise ConfigError(
            f"`{path}` is a symbolic link; import does not write through links, even with --force: "
            "pass -o with a path of its own, or remove the link first"
        )
    return path.parent.resolve() / path.name


def client_entry(config: Path) -> dict[str, Any]:
    """The only server the client should keep. An absolute command, because desktop clients do not
    start it from the user's shell and may not have the virtualenv on PATH: the `guard-mcp` of the
    installation running now (another one earlier on PATH may be another version), else the one on
    PATH, else this interpreter running the CLI module."""
    args = ["serve", "--config", str(config)]
    beside = Path(sys.executable).parent / "guard-mcp"
    found = str(beside) if beside.is_file() else shutil.which("guard-mcp")
    if found is None:
        return {
            "mcpServers": {
                "guard": {"command": os.path.abspath(sys.executable), "args": ["-m", "guard_mcp.cli", *args]}
            }
        }
    return {"mcpServers": {"guard": {"command": os.path.abspath(found), "args": args}}}


@click.group("import")
@output_options
@click.pass_context
def import_(ctx: click.Context, env: Env) -> None:
    """Import an existing MCP client configuration into upstreams.yaml."""
    ctx.obj = env  # `import --config X claude-config FILE`: the group's options count for the sub-command


@import_.command("claude-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write upstreams.yaml (default: --config, else ./upstreams.yaml).",
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--project", default=None, help="With ~/.claude.json: import only this project's servers.")
@click.option(
    "--connect/--no-connect",
    default=True,
    show_default=True,
    help="Start each server once to list its tools and propose their action schemas.",
)
@click.option(
    "--timeout",
    type=Seconds(min=0.1, max=600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the servers to list their tools.",
)
@output_options
def claude_config(
    file: Path, output: Path | None, force: bool, project: str | None, connect: bool, timeout: float, env: Env
) -> None:
    """Write upstreams.yaml from a Claude Desktop, Claude Code or Cursor MCP config FILE."""
    out = _output_path(output or Path(env.config_path or "upstreams.yaml"))
    result = convert_client_config(file.expanduser(), project=project)
    if out.exists() and not force:
        raise ConfigError(f"`{out}` already exists; pass --force to overwrite it, or -o to write elsewhere")
    result.warnings.extend(_validate(result.yaml_text))
    if connect:
        if not env.as_json:
            err_console.print(
                f"listing the tools of {len(result.upstreams)} server(s) (waiting up to {timeout:g}s)…",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        list_tools(result, timeout)
        _validate(result.yaml_text)
    _write(out, result.yaml_text)
    snippet = client_entry(out)
    steps = next_steps(out)
    tools = {name: (len(v) if isinstance(v, list) else None) for name, v in result.listed.items()}
    unlisted = {name: v for name, v in result.listed.items() if isinstance(v, str)}
    if env.as_json:
        print_json(
            {
                "output": str(out),
                "upstreams": result.upstreams,
                "warnings": result.warnings,
                "client_config": snippet,
                "tools": tools,
                "unlisted": unlisted,
                "next": steps,
            }
        )
        return
    for warning in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {warning}", markup=True, highlight=False, soft_wrap=True)
    console = env.console
    console.print(
        f"Wrote [bold]{out}[/] with {len(result.upstreams)} upstream(s): {', '.join(result.upstreams)}.",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"Replace the `mcpServers` block of `{file}` with:", highlight=False, markup=False, soft_wrap=True)
    console.print(json.dumps(snippet, indent=2), highlight=False, markup=False, soft_wrap=True)
    guard = snippet["mcpServers"]["guard"]
    console.print(
        # user scope: without it the guard is added for the directory this runs in only, not the user's projects
        "For Claude Code: claude mcp add --scope user guard -- " + shlex.join([guard["command"], *guard["args"]]),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for name, why in unlisted.items():
        err_console.print(
            f"[bold yellow]warning:[/] tools of `{name}` not listed: {why}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
    proposed = sum(n for n in tools.values() if n)
    if proposed:
        console.print(
            f"Proposed an action schema for each of {proposed} tool(s); until you accept them they count "
            "as `unknown` (every call asks).",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    console.print("Next:", highlight=False, markup=False)
    for step in steps:
        console.print(f"  {step}", highlight=False, markup=False, soft_wrap=True)


def next_steps(out: Path) -> list[str]:
    """The three commands after an import: review the proposals, check the servers, enrol an approver."""
    config = shlex.quote(str(out))
    return [
        f"guard-mcp tools review --config {config}",
        f"guard-mcp check --config {config}",
        "guard-mcp approvers add YOUR_NAME --group approvers",
    ]
