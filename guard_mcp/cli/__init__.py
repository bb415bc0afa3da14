"""The `guard-mcp` command line. Sub-commands live in one module each and load lazily, so
`guard-mcp approvals approve` in a second terminal starts fast, and `guard-mcp --help` loads none
of them (their one-line help is written here too; a test keeps the two the same)."""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["main"]

# command name -> (module, attribute, the first paragraph of its help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("guard_mcp.cli._serve", "serve", "Serve the guarded tools to an MCP client (stdio by default)."),
    "check": ("guard_mcp.cli._check", "check", "Validate the config, connect to each upstream, and report."),
    "tools": ("guard_mcp.cli._tools", "tools", "The guarded tool catalog. With no sub-command: list it."),
    "import": ("guard_mcp.cli._import", "import_", "Import an existing MCP client configuration into upstreams.yaml."),
    "demo": ("guard_mcp.cli._demo", "demo", "Run a scripted agent and human through the guard against the demo shop."),
    "policy": ("guard_mcp.cli._replay", "policy", "Compile, sign, verify, test and explain policies."),
    "keys": ("guard_mcp.cli._keys", "keys", "The guard's permit signing keys, and the policy signer's key."),
    "permits": ("guard_mcp.cli._keys", "permits", "Look inside permits."),
    "audit": ("guard_mcp.cli._audit", "audit", "Inspect, verify and export the tamper-evident audit log."),
    "approvals": (
        "guard_mcp.cli._approvals",
        "approvals",
        "The approval queue: list, show, approve, deny; session pre-authorisation (grant, grants, revoke).",
    ),
    "approvers": (
        "guard_mcp.cli._approvals",
        "approvers",
        "Named approvers and their TOTP second factor (needed for step-up approvals).",
    ),
    "simulate": (
        "guard_mcp.cli._simulate",
        "simulate",
        "Attack a real guard (its own process, over stdio) in front of "
        "the real demo shop, and show what stopped each attack.",
    ),
    "limits": (
        "guard_mcp.cli._limits",
        "limits",
        "Usage against each tool's `limits`, per principal, in each rolling window now.",
    ),
    "sessions": (
        "guard_mcp.cli._sessions",
        "sessions",
        "Client sessions: id, principal, client name, first and last call, number of calls.",
    ),
    "store": ("guard_mcp.cli._store", "store", "The guard's store (`guard.store`): schema versions and migrations."),
    "login": (
        "guard_mcp.cli._login",
        "login",
        "Log the guard in to an `auth: oauth` upstream in the browser; its "
        "tokens are kept sealed in the guard's store.",
    ),
}


def _summary(name: str) -> click.Command:
    """A stand-in with the command's help, for the command list (not runnable)."""
    return click.Command(name, help=_COMMANDS[name][2])


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `--help`, from the table above: importing every command (and so
        pydantic, the MCP SDK, the policy engine) only to print one line each took most of a second."""
        limit = formatter.width - 6 - max(len(name) for name in _COMMANDS)
        rows = [(name, _summary(name).get_short_help_str(limit)) for name in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        try:
            module = importlib.import_module(target[0])
        except ModuleNotFoundError as exc:
            if exc.name == target[0]:
                return None
            raise
        cmd: Any = getattr(module, target[1], None)
        return cmd if isinstance(cmd, click.Command) else None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="guard-mcp")
def main() -> None:
    """guard-mcp: an MCP server that decides, approves, permits and audits every tool call."""
