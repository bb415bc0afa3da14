"""What every command shares: `--config`, `--state-dir`, `--json`, `--plain`, one way to print a table
and one way to fail."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard_mcp._clock import Clock, SystemClock
from guard_mcp._errors import GuardError
from guard_mcp._escape import show_codes
from guard_mcp._state import StateDir, resolve_state_dir
from guard_mcp.demo import embedded_config_path

if TYPE_CHECKING:
    from guard_mcp._config import GuardConfig

__all__ = [
    "Env",
    "Seconds",
    "common_options",
    "describe_error",
    "embedded_config_path",
    "fail",
    "output_options",
    "print_json",
    "print_table",
]

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)


@dataclass
class Env:
    config_path: str | None
    state_dir: str | None
    as_json: bool = False
    console: Console = field(default_factory=Console)
    _config: GuardConfig | None = None
    plain_flag: bool = False
    clock: Clock = field(default_factory=SystemClock)  # the command's one clock: every time it reads is `clock.now()`

    @property
    def plain(self) -> bool:
        """Tab-separated rows instead of a drawn table: asked for, or stdout is not a terminal (a pipe
        into `grep` must not get box drawing and cells folded across lines)."""
        return self.plain_flag or not self.console.is_terminal

    def config(self) -> GuardConfig:
        if self._config is None:
            # Here: the config models (pydantic) load only for a command that reads the config.
            from guard_mcp._config import DEFAULT_CONFIG, load_config

            path = self.config_path
            if path is None:
                path = DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else str(embedded_config_path())
            self._config = load_config(path, builtins={"GUARD_STATE_DIR": str(self.state().root)})
        return self._config

    def state(self, *, read_only: bool = False) -> StateDir:
        """The state directory, checked; `read_only` for the audit's readers, which may read one another
        user owns (an auditor's copy) and create nothing."""
        state = resolve_state_dir(self.state_dir)
        return state.for_reading() if read_only else state.ensure()

    def note_if_unused(self) -> None:
        """For commands that only read: say so on stderr when no guard has used this state directory,
        so an empty answer from a mistyped `--state-dir` is not taken for the real one."""
        state = resolve_state_dir(self.state_dir)
        if not self.as_json and not state.database.exists():
            err_console.print(
                f"note: no guard has used the state directory `{state.root}` yet; if the guard runs "
                "elsewhere, pass its `--state-dir` (or set GUARD_MCP_HOME)",
                highlight=False,
                soft_wrap=True,
            )


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


def _cell(value: Any) -> str:
    text = value.plain if isinstance(value, Text) else "" if value is None else str(value)
    return show_codes(" ".join(text.split("\t")).replace("\n", " "))


def print_table(
    env: Env, columns: list[str], rows: list[list[Any]], *, title: str | None = None, header: bool = True
) -> None:
    """A table that fits: cells fold inside a long word only where it has no space, and wrap at spaces
    otherwise (never an ellipsis); with `--plain` or when piped, one tab-separated line per row with a
    header line (unless `header` is false: more rows of a table already begun), text only (control
    characters as codes)."""
    if env.plain:
        if header:
            click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join(_cell(c) for c in row))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(c if isinstance(c, Text) else Text("" if c is None else str(c)) for c in row))
    env.console.print(table)


def _inherited(name: str, value: Any, parent: Env | None) -> Any:
    """A group's own `--config`/`--state-dir`/`--json`/`--plain` (`guard-mcp tools --config X list`) counts
    for its sub-command unless the sub-command was given one on the command line."""
    if parent is None:
        return value
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    if source is click.core.ParameterSource.COMMANDLINE:
        return value
    given = {
        "config_path": parent.config_path,
        "state_dir": parent.state_dir,
        "as_json": parent.as_json,
        "plain": parent.plain_flag,
    }[name]
    return given if given not in (None, False) else value


def common_options(func: F) -> F:
    """Add `--config`, `--state-dir`, `--json` and `--plain`; hand the command an `env: Env`; map
    GuardError to a one-line message and exit status 2. A `--config` file that does not exist is that
    error before anything runs, also for a command that does not read it (it was given for a reason)."""
    return _with_options(func, config_must_exist=True)


def output_options(func: F) -> F:
    """`common_options` for a command whose `--config` names the file it is about to write (`import`)."""
    return _with_options(func, config_must_exist=False)


def _with_options(func: F, *, config_must_exist: bool) -> F:

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="upstreams.yaml to use (default: ./upstreams.yaml, else the embedded demo).",
    )
    @click.option(
        "--state-dir",
        type=click.Path(file_okay=False),
        default=None,
        envvar="GUARD_MCP_HOME",
        help="State directory (keys, database). Default: $GUARD_MCP_HOME or the user data dir.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @click.option("--plain", is_flag=True, help="Tables as tab-separated lines (the default when not a terminal).")
    @functools.wraps(func)
    def wrapper(
        *args: Any, config_path: str | None, state_dir: str | None, as_json: bool, plain: bool, **kwargs: Any
    ) -> Any:
        ctx = click.get_current_context(silent=True)
        parent = ctx.obj if ctx is not None and isinstance(ctx.obj, Env) else None
        env = Env(
            config_path=_inherited("config_path", config_path, parent),
            state_dir=_inherited("state_dir", state_dir, parent),
            as_json=_inherited("as_json", as_json, parent),
            plain_flag=_inherited("plain", plain, parent),
        )
        try:
            if config_must_exist and env.config_path is not None and not Path(env.config_path).exists():
                from guard_mcp._config import missing_config

                raise missing_config(env.config_path)
            return func(*args, env=env, **kwargs)
        except GuardError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]
