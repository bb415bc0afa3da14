"""What every command shares: `--config`, `--state-dir`, `--json`, and one way to fail."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from guard_mcp._config import DEFAULT_CONFIG, GuardConfig, load_config
from guard_mcp._errors import GuardError
from guard_mcp._state import StateDir, resolve_state_dir

__all__ = ["Env", "Seconds", "common_options", "describe_error", "embedded_config_path", "fail", "print_json"]

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)


def embedded_config_path() -> Path:
    """The demo upstreams.yaml shipped inside the package."""
    return Path(str(resources.files("guard_mcp.demo").joinpath("upstreams.yaml")))


@dataclass
class Env:
    config_path: str | None
    state_dir: str | None
    as_json: bool = False
    console: Console = field(default_factory=Console)
    _config: GuardConfig | None = None

    def config(self) -> GuardConfig:
        if self._config is None:
            path = self.config_path
            if path is None:
                path = DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else str(embedded_config_path())
            self._config = load_config(path, builtins={"GUARD_STATE_DIR": str(self.state().root)})
        return self._config

    def state(self) -> StateDir:
        return resolve_state_dir(self.state_dir).ensure()

    def note_if_unused(self) -> None:
        """For commands that only read: say so on stderr when no guard has used this state directory,
        so an empty answer from a mistyped `--state-dir` is not taken for the real one."""
        state = resolve_state_dir(self.state_dir)
        if not self.as_json and not state.database.exists():
            err_console.print(f"note: no guard has used the state directory `{state.root}` yet; if the guard runs "
                              "elsewhere, pass its `--state-dir` (or set GUARD_MCP_HOME)", highlight=False,
                              soft_wrap=True)


class Seconds(click.FloatRange):
    """A number of seconds within bounds; NaN, which every bound lets through, is refused too."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"`{value}` is not a number of seconds", param, ctx)
        return seconds


_MAX_ERROR = 1000


def fail(message: str, code: int = 2) -> NoReturn:
    # The message may quote what was typed or stored (an id, a name): shown as text, never as markup,
    # its control characters as codes (an ESC could rewrite the terminal), and bounded.
    from guard_mcp._approvals._prompt import show_codes  # here: most commands never fail

    shown = show_codes(message)
    shown = shown if len(shown) <= _MAX_ERROR else shown[:_MAX_ERROR] + "…"
    err_console.print(Text.assemble(("error:", "bold red"), " ", shown), highlight=False, soft_wrap=True)
    sys.exit(code)


def describe_error(exc: BaseException) -> str:
    """One line for an unexpected failure: a task group's sub-exceptions unwrapped (a GuardError says
    its own words), others by type and first line, never a traceback."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(describe_error(e) for e in exc.exceptions))
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, GuardError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def common_options(func: F) -> F:
    """Add `--config`, `--state-dir` and `--json`; hand the command an `env: Env`; map GuardError
    to a one-line message and exit status 2."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="upstreams.yaml to use (default: ./upstreams.yaml, else the embedded demo).")
    @click.option("--state-dir", type=click.Path(file_okay=False), default=None, envvar="GUARD_MCP_HOME",
                  help="State directory (keys, database). Default: $GUARD_MCP_HOME or the user data dir.")
    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @functools.wraps(func)
    def wrapper(*args: Any, config_path: str | None, state_dir: str | None, as_json: bool, **kwargs: Any) -> Any:
        env = Env(config_path=config_path, state_dir=state_dir, as_json=as_json)
        try:
            return func(*args, env=env, **kwargs)
        except GuardError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]
