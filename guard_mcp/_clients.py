"""Which client a request comes from, and the connected clients to tell when the tool list changes.

The SDK builds a fresh `ServerSession` for every request, so a session object is not an identity.
What lasts is the connection: a handshake-era client keeps one `Connection` for its life; a
2026-07-28 client over a duplex stream (stdio) keeps one outbound channel for the stream; a
2026-07-28 client over HTTP or in-process sends each request on its own and has no session at all
(`session_id` is None: no session grant can cover it).
"""

from __future__ import annotations

import contextlib
import secrets
import weakref
from typing import Any

import anyio
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

__all__ = ["Listeners", "connection_of", "session_id"]

_ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_NOTIFY_TIMEOUT = 1.0


def connection_of(session: Any) -> Any | None:
    """The SDK `Connection` a request's session belongs to (None for anything else)."""
    # `ServerSession` keeps its connection private and SDK 2.3 offers no accessor for it.
    return getattr(session, "_connection", None)


def _modern(connection: Any) -> bool:
    return getattr(connection, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS


def _anchor(session: Any) -> Any | None:
    """The object that lives exactly as long as the client's session, or None if it has none."""
    connection = connection_of(session)
    if connection is None:
        return None
    if _modern(connection):
        return connection.outbound if connection.has_standalone_channel else None
    return connection


def session_id(session: Any) -> str | None:
    """A stable id for one client session (`ses_…`), the same for every request in it."""
    anchor = _anchor(session)
    if anchor is None:
        return None
    sid = _ids.get(anchor)
    if sid is None:
        sid = _ids[anchor] = "ses_" + secrets.token_hex(6)
    return sid


class Listeners:
    """Handshake-era connections, told of tool list changes by a push (`notifications/tools/list_changed`).

    2026-07-28 clients cannot be pushed to: they learn of changes on a `subscriptions/listen`
    stream they open (served from the guard's subscription bus).
    """

    def __init__(self) -> None:
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, session: Any) -> None:
        connection = connection_of(session)
        if connection is not None and not _modern(connection) and connection.has_standalone_channel:
            self._connections.add(connection)

    async def tools_changed(self) -> None:
        for connection in list(self._connections):
            # a client that went away has nothing to hear; one that stopped reading holds nobody up
            with contextlib.suppress(Exception), anyio.move_on_after(_NOTIFY_TIMEOUT):
                await connection.outbound.notify("notifications/tools/list_changed", None)
