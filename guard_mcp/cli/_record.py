"""Operator actions go into the audit log the calls go into: what was done, by whom, from which account.

An approval given at the terminal, a session grant, a revoked grant, an enrolled or removed
approver, a rotated key, an accepted tool definition, a switched policy: each is appended as one
event (actor `operator:<OS user>`) to the same hash chain, at the time it happens. The action comes
first and the record second; if the record cannot be written the command says so and exits 1.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from guard_mcp._errors import GuardError
from guard_mcp.cli._common import Env, fail

if TYPE_CHECKING:
    from guard_mcp._audit import EventIn

__all__ = ["operator", "record", "record_events"]


def operator() -> str:
    """The OS account running this command (who can write the state directory can act).

    Looked up from the process's effective uid: `getpass.getuser()` believes `LOGNAME` and `USER`
    first, which whoever runs the command sets to any name they like."""
    try:
        import pwd
    except ImportError:  # no uids to look up (Windows): the login name is all there is
        try:
            return getpass.getuser()[:64]
        except (KeyError, OSError):
            return "unknown"
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name[:64]
    except KeyError:  # no passwd entry (containers): the uid itself, rather than a guess
        return f"uid:{uid}"


def record(
    env: Env,
    kind: str,
    data: dict[str, Any],
    *,
    request_id: str | None = None,
    upstream: str | None = None,
    tool: str | None = None,
    done: str = "done",
) -> None:
    """Append one operator event; on failure, exit 1 saying what was `done` but not recorded."""
    from guard_mcp._audit import EventIn

    record_events(env, [EventIn(kind, request_id=request_id, upstream=upstream, tool=tool, data=data)], done=done)


def record_events(env: Env, events: Sequence[EventIn], *, done: str) -> None:
    """Append several operator events with one opening of the log (one verification, one checkpoint)."""
    if not events:
        return
    # Here: the audit writer (and its signing) loads only for a command that records something.
    import anyio

    from guard_mcp._audit import AuditLog
    from guard_mcp._keys import KeyStore

    state = env.state()
    config = env.config()
    who = operator()
    stamped = [replace(e, actor=f"operator:{who}", data={**e.data, "os_user": who}) for e in events]

    async def append() -> None:
        clock = env.clock
        keys = KeyStore(state.keys, clock, environment=config.guard.environment)
        keys.ensure()  # checkpoints are signed; a state directory no guard has served yet gets its key now
        # A running guard's unsigned events are its own to sign: an operator command signs only its own.
        log = await AuditLog.open(state, clock=clock, keys=keys, config=config.guard.audit, seal_others=False)
        try:
            await log.append_many(stamped)
        finally:
            await log.close()

    try:
        anyio.run(append)
    except GuardError as exc:
        fail(f"{done}, but the audit log did not record it: {exc}", code=1)
