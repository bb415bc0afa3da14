"""Start every upstream of a config once, at the same time, and report what each did within a
deadline: what `check` and `import` both need.

An upstream's stderr is kept out of the terminal (it would land in the middle of a table) and
quoted, as its last line, for an upstream that failed or did not answer, without the values the
upstream was configured with.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import mcp_types as types

from guard_mcp._config import GuardConfig
from guard_mcp._state import StateDir

if TYPE_CHECKING:
    from guard_mcp._identity import UpstreamCredentials

__all__ = ["Probed", "probe_upstreams"]

_TAIL = 4096  # bytes of an upstream's stderr read back for its last line


@dataclass
class Probed:
    name: str
    transport: str
    state: str
    tools: list[types.Tool] = field(default_factory=list)
    error: str | None = None


def _last_line(log: TextIO | None) -> str:
    if log is None:
        return ""
    log.flush()
    end = log.seek(0, 2)
    log.seek(max(0, end - _TAIL))
    lines = [line for line in log.read().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def probe_upstreams(config: GuardConfig, timeout: float, *, state: StateDir | None = None) -> list[Probed]:
    """Each enabled upstream: ready with its tools, or why not (`did not answer within Ns`, or its error).
    `state`: where the logins of `auth: oauth` upstreams are kept (without it they cannot connect)."""
    from guard_mcp._clock import SystemClock
    from guard_mcp._identity import UpstreamCredentials
    from guard_mcp._upstreams import UpstreamManager

    logs: dict[str, TextIO] = {}

    def errlog(name: str) -> TextIO:
        if name not in logs:
            logs[name] = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        return logs[name]

    found: list[Probed] = []

    async def main() -> None:
        credentials = None if state is None else await UpstreamCredentials.needed(config, state, SystemClock())
        try:
            await probe(credentials)
        finally:
            if credentials is not None:
                await credentials.close()

    async def probe(credentials: UpstreamCredentials | None) -> None:
        async def nothing(*_: Any) -> None:
            return None

        manager = UpstreamManager(
            config,
            on_tools_changed=nothing,
            on_event=nothing,
            backoff=(3600, 3600),
            errlog=errlog,
            credentials=credentials,
        )
        async with anyio.create_task_group() as tg:
            await manager.start(tg, ready_timeout=timeout)
            for handle in manager.handles.values():
                kind = "stdio" if hasattr(handle.config, "command") else "http"
                if handle.state == "ready":
                    found.append(Probed(handle.name, kind, "ready", list(handle.tools)))
                    continue
                # the manager names the error's type; an UpstreamError's own words are enough
                error = (handle.error or "").removeprefix("UpstreamError: ") or f"did not answer within {timeout:g}s"
                said = _last_line(logs.get(handle.name))
                if said:
                    error += f"; its last line on stderr: {handle.said(said)}"
                found.append(Probed(handle.name, kind, handle.state, [], error))
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        for log in logs.values():
            log.close()
    return found
