"""Upstream sessions: opened once at start, concurrently, kept open, supervised.

One upstream failing to start or dying does not take the others down: its tools disappear, the
failure is reported, and a supervisor restarts it with backoff. Calls go over the one open session.

A changed tool list reaches the catalog three ways, so a definition changed under a running guard
is pinned (and withheld) in seconds in either protocol era: the handshake era's
`notifications/tools/list_changed`, a 2026-07-28 `subscriptions/listen` stream where the upstream
serves one, and the liveness poll (a `tools/list` that is compared, not only answered).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypeVar
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from guard_mcp._catalog import cut_out, one_line
from guard_mcp._config import GuardConfig, HttpUpstream, StdioUpstream, Upstream
from guard_mcp._errors import UpstreamAuthRequired, UpstreamError
from guard_mcp._naming import SEPARATOR
from guard_mcp._secrets import names_a_secret

if TYPE_CHECKING:
    from guard_mcp._identity import UpstreamCredentials, UpstreamOAuthClient

__all__ = ["UpstreamHandle", "UpstreamManager"]

log = logging.getLogger("guard_mcp.upstreams")

State = Literal["starting", "ready", "failed", "stopped"]
_SDK_CLOSED = "Connection closed"  # the message of the SDK's MCPError for a transport that went away
_MAX_UPSTREAM_TEXT = 300
ElicitRelay = Callable[[str, types.ElicitRequestParams], Awaitable[types.ElicitResult | types.ErrorData]]


@dataclass
class UpstreamHandle:
    name: str
    config: Upstream
    state: State = "starting"
    client: Client | None = None
    tools: list[types.Tool] = field(default_factory=list)
    error: str | None = None
    restarts: int = 0
    dead: anyio.Event = field(default_factory=anyio.Event)
    ready: anyio.Event = field(default_factory=anyio.Event)
    oauth: UpstreamOAuthClient | None = None  # `auth: oauth`: the client holding its tokens
    referenced: frozenset[str] = frozenset()  # the configuration's values read by reference (`{file: ...}`)

    @functools.cached_property
    def credentials(self) -> set[str]:
        """The credentials its configuration holds (cut out of every result it returns)."""
        return _credentials(self.config, self.referenced)

    def held(self) -> set[str]:
        """The credentials the guard holds for it (configured, or OAuth tokens): cut out of all it sends back."""
        return self.credentials | (self.oauth.storage.secrets() if self.oauth is not None else set())

    def said(self, text: str) -> str:
        """Upstream text as the guard repeats it (banner, `check`, the log, the audit, the model): one
        bounded line without control characters, and without the secrets this upstream was configured
        with or the OAuth tokens the guard holds for it (an upstream may echo what it rejected)."""
        held = self.oauth.storage.secrets() if self.oauth is not None else set()
        return one_line(cut_out(text, _secrets(self.config) | held, "***", shortest=_MIN_SECRET), _MAX_UPSTREAM_TEXT)

    def login_needed(self) -> str | None:
        """Why this OAuth upstream cannot be called until someone logs in again, or None."""
        return self.oauth.login_message() if self.oauth is not None and self.oauth.needs_login else None


class UpstreamManager:
    """Owns one supervisor task per configured upstream."""

    def __init__(
        self,
        config: GuardConfig,
        *,
        on_tools_changed: Callable[[str], Awaitable[None]],
        on_event: Callable[[str, dict[str, Any]], Awaitable[None]],
        elicit_relay: ElicitRelay | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
        liveness_interval: float = 10.0,
        inprocess: dict[str, Any] | None = None,
        credentials: UpstreamCredentials | None = None,
        errlog: Callable[[str], TextIO] | None = None,
    ) -> None:
        self.handles = {
            name: UpstreamHandle(name, up, referenced=config.referenced)
            for name, up in config.upstreams.items()
            if not up.disabled
        }
        self._on_tools_changed = on_tools_changed
        self._on_event = on_event
        self._elicit_relay = elicit_relay
        self._backoff = backoff
        self._liveness = liveness_interval
        # Tests and embedders may hand in server objects to connect in-process instead of spawning.
        self._inprocess = dict(inprocess or {})
        self._credentials = credentials  # the OAuth logins of `auth: oauth` upstreams
        # Where a stdio upstream's stderr goes, by upstream name (default: the guard's own stderr).
        # `check` and `import` keep it out of their tables and quote it for an upstream that failed.
        self._errlog = errlog

    async def start(self, tg: anyio.abc.TaskGroup, *, ready_timeout: float = 15.0) -> None:
        """Start every upstream at once; return when each is ready or has failed once (bounded)."""
        for handle in self.handles.values():
            tg.start_soon(self._supervise, handle, name=f"upstream:{handle.name}")
        with anyio.move_on_after(ready_timeout):
            for handle in self.handles.values():
                await handle.ready.wait()

    # -- supervision -----------------------------------------------------------------------------

    async def _supervise(self, handle: UpstreamHandle) -> None:
        delay, cap = self._backoff
        while True:
            started = anyio.current_time()
            stopping = False
            try:
                await self._run_once(handle)
            except anyio.get_cancelled_exc_class():
                stopping = True  # the guard is stopping: a clean stop, not an upstream that went down
                raise
            except Exception as exc:  # any failure of one upstream stays with that upstream
                handle.error = handle.said(_describe(exc))
                log.warning("upstream %s failed: %s", handle.name, handle.error)
            finally:
                was_ready = handle.state == "ready"
                handle.client = None
                handle.tools = []
                handle.state = "stopped" if stopping else "failed"
                handle.ready.set()
                if not stopping:
                    with anyio.CancelScope(shield=True):
                        if was_ready:
                            await self._on_tools_changed(handle.name)
                        await self._on_event("upstream.down", {"upstream": handle.name, "error": handle.error})
            if anyio.current_time() - started > 60:
                delay = self._backoff[0]  # it ran for a while: restart promptly
            await anyio.sleep(delay)
            delay = min(delay * 2, cap)
            handle.restarts += 1
            handle.dead = anyio.Event()

    async def _run_once(self, handle: UpstreamHandle) -> None:
        handle.state = "starting"
        timeout = handle.config.timeout
        timed_out = False
        async with contextlib.AsyncExitStack() as stack:
            transport = self._inprocess.get(handle.name) or await self._transport(handle, stack)

            async def on_elicit(
                context: Any, params: types.ElicitRequestParams
            ) -> types.ElicitResult | types.ErrorData:
                if self._elicit_relay is None:
                    return types.ElicitResult(action="decline")
                return await self._elicit_relay(handle.name, _without_tokens(params, handle.held()))

            async def on_message(message: Any) -> None:
                if isinstance(message, types.ToolListChangedNotification):
                    await self._refresh(handle)

            client = Client(
                transport,
                raise_exceptions=False,
                elicitation_callback=on_elicit,
                message_handler=on_message,
                client_info=types.Implementation(name="guard-mcp", version="0.1.0"),
                cache=None,
            )
            # The start-up deadline is a watchdog task, not a cancel scope around entering the
            # client: the client's own task group must be entered and left in one scope.
            async with anyio.create_task_group() as tg:

                async def watchdog() -> None:
                    nonlocal timed_out
                    await anyio.sleep(timeout)
                    if handle.state != "ready":
                        timed_out = True
                        tg.cancel_scope.cancel()

                tg.start_soon(watchdog)
                async with client:
                    handle.client = client
                    handle.tools = await self._list_tools(client, handle)
                    handle.state = "ready"
                    handle.error = None
                    await self._on_event(
                        "upstream.ready",
                        {"upstream": handle.name, "tools": len(handle.tools), "restarts": handle.restarts},
                    )
                    await self._on_tools_changed(handle.name)
                    handle.ready.set()  # only once its tools are in the catalog
                    tg.start_soon(self._watch_liveness, handle, client)
                    tg.start_soon(self._follow_changes, handle, client)
                    await handle.dead.wait()
                tg.cancel_scope.cancel()
        if timed_out:
            raise UpstreamError(f"upstream `{handle.name}` did not start within {timeout:g}s")

    async def _transport(self, handle: UpstreamHandle, stack: contextlib.AsyncExitStack) -> Any:
        config = handle.config
        if isinstance(config, StdioUpstream):
            if shutil.which(config.command, path=None) is None and "/" not in config.command:
                raise UpstreamError(f"command `{config.command}` was not found on PATH; install it or give a full path")
            params = StdioServerParameters(
                command=config.command, args=config.args, env=config.env or None, cwd=config.cwd
            )
            if self._errlog is not None:
                return stdio_client(params, errlog=self._errlog(self._name_of(config)))
            return params
        assert isinstance(config, HttpUpstream)
        auth: httpx2.Auth | None = None
        transport: httpx2.AsyncBaseTransport | None = None
        if config.auth is not None:
            if self._credentials is None:
                raise UpstreamError(f"upstream `{handle.name}` signs in with OAuth, and this command holds no logins")
            from guard_mcp._identity import LocalRefusals

            # A fresh client each attempt: it reads the vault, so a `guard-mcp login` elsewhere is picked up.
            oauth = handle.oauth = auth = await self._credentials.client(handle.name, config)
            transport = LocalRefusals(httpx2.AsyncHTTPTransport(), oauth.login_message)
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers=config.headers,
                timeout=httpx2.Timeout(config.timeout, read=config.timeout + 5),
                auth=auth,
                transport=transport,
            )
        )
        return streamable_http_client(config.url, http_client=http)

    def _name_of(self, config: Upstream) -> str:
        return next(name for name, handle in self.handles.items() if handle.config is config)

    @staticmethod
    async def _list_tools(client: Client, handle: UpstreamHandle) -> list[types.Tool]:
        """The upstream's tools, without a credential the guard holds for it (a description may repeat one)."""
        held = handle.held()
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(100):  # an upstream that pages forever is cut off
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            result = await client.session.list_tools(params=params)
            tools.extend(_without_tokens(t, held) for t in result.tools)
            cursor = result.next_cursor
            if not cursor:
                break
        return tools

    async def _refresh(self, handle: UpstreamHandle) -> None:
        client = handle.client
        if client is None:
            return
        try:
            tools = await self._list_tools(client, handle)
        except Exception as exc:
            handle.error = handle.said(_describe(exc))
            handle.dead.set()
            return
        await self._take(handle, tools)

    async def _take(self, handle: UpstreamHandle, tools: list[types.Tool]) -> None:
        """Adopt a freshly listed tool set; the catalog hears of it only if it differs."""
        if tools == handle.tools:
            return
        handle.tools = tools
        await self._on_tools_changed(handle.name)

    async def _follow_changes(self, handle: UpstreamHandle, client: Client) -> None:
        """At the 2026-07-28 era an upstream cannot push `list_changed`: listen for it instead.

        An upstream that does not serve `subscriptions/listen` (or an older era, whose
        notifications arrive on their own) is left to the liveness poll.
        """
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    await self._refresh(handle)
        except (ListenNotSupportedError, SubscriptionLost, MCPError, TimeoutError) as exc:
            log.debug(
                "upstream %s: no tools/list_changed stream (%s); polling instead",
                handle.name,
                handle.said(_describe(exc)),
            )

    async def _watch_liveness(self, handle: UpstreamHandle, client: Client) -> None:
        while True:
            await anyio.sleep(self._liveness)
            try:
                with anyio.fail_after(max(5.0, self._liveness)):
                    # tools/list rather than ping: ping does not exist in the 2026-07-28 era, and
                    # the answer shows a definition changed without a notification
                    tools = await self._list_tools(client, handle)
            except Exception as exc:
                handle.error = f"did not answer a ping: {handle.said(_describe(exc))}"
                handle.dead.set()
                return
            await self._take(handle, tools)

    # -- calls -----------------------------------------------------------------------------------

    def login_needed(self, name: str) -> str | None:
        """For a tool name (`upstream__tool`) or an upstream's: why its OAuth upstream needs a login, or None."""
        handle = self.handles.get(name) or self.handles.get(name.split(SEPARATOR, 1)[0])
        return handle.login_needed() if handle is not None else None

    async def call(
        self,
        upstream: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        meta: types.RequestParamsMeta,
        progress: ProgressFnT | None = None,
        scrub: Callable[[str], str] | None = None,
    ) -> types.CallToolResult:
        """Call a tool on an upstream's open session. Raises UpstreamError; never hangs past the timeout.

        `scrub` takes the call's redacted values out of the upstream's words for the error's `for_log`."""
        handle = self.handles.get(upstream)
        if handle is None or handle.client is None or handle.state != "ready":
            raise UpstreamError(f"upstream `{upstream}` is not connected; it is being restarted")
        client = handle.client
        timeout = handle.config.timeout
        # the guard's credentials for it (configured, or OAuth tokens) never reach the client or the model
        held = handle.held()
        relayed = progress
        if progress is not None:
            relay = progress

            async def worded(progress: float, total: float | None, message: str | None) -> None:
                # its progress is its words in the client's window: one bounded line, no credential in it
                await relay(
                    progress, total, None if message is None else one_line(_cut(message, held), _MAX_UPSTREAM_TEXT)
                )

            relayed = worded
        try:
            # The SDK's own request clock: on expiry it tells the upstream to stop (notifications/cancelled).
            result = await client.call_tool(
                tool, arguments, read_timeout_seconds=timeout, progress_callback=relayed, meta=meta
            )
            return _without_tokens(result, held)
        except TimeoutError:  # the transport's bounded write
            raise UpstreamError(f"upstream `{upstream}` did not take `{tool}` within {timeout:g}s") from None
        except MCPError as exc:
            needed = handle.login_needed()
            if needed is not None:  # refused inside the guard: the call never reached the upstream
                raise UpstreamAuthRequired(needed) from None
            if exc.code == types.REQUEST_TIMEOUT:
                raise UpstreamError(f"upstream `{upstream}` did not answer `{tool}` within {timeout:g}s") from None
            # The SDK's own "Connection closed"; an upstream may answer a tool error with the same
            # generic server-error code, which must not drop its session.
            if exc.code == types.CONNECTION_CLOSED and exc.error.message == _SDK_CLOSED:
                handle.error = "connection closed mid-call"
                handle.dead.set()
            # the upstream's own words as one bounded line: they may not write the guard's lines or flood the log
            said = handle.said(exc.error.message)
            # before one_line: collapsed or cut at its limit, an echoed value is no longer found whole
            logged = said if scrub is None else handle.said(scrub(exc.error.message))
            raise UpstreamError(
                f"upstream `{upstream}` failed `{tool}`: {said}",
                for_log=f"upstream `{upstream}` failed `{tool}`: {logged}",
            ) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            handle.error = handle.said(_describe(exc))
            handle.dead.set()
            raise UpstreamError(f"upstream `{upstream}` went away during `{tool}`; it is being restarted") from None
        except Exception as exc:
            raise UpstreamError(f"upstream `{upstream}` failed `{tool}`: {handle.said(_describe(exc))}") from None


_MIN_SECRET = 4  # shorter configured values (`1`, `on`) are not secrets, and would cut words apart
_Message = TypeVar("_Message", bound=BaseModel)


def _secrets(config: Upstream) -> set[str]:
    """The values an upstream's configuration holds that must not be repeated: env and header values
    (and a header's credential after its scheme), the URL's password and query values."""
    found = _credentials(config)
    for value in (*getattr(config, "env", {}).values(), *getattr(config, "headers", {}).values()):
        found.add(value)
        found.add(value.rsplit(" ", 1)[-1])  # `Bearer sk-…`: the token alone
    url = getattr(config, "url", None)
    if url:
        parts = urlsplit(url)
        found.update(v for _, v in parse_qsl(parts.query))
        if parts.password:
            found.add(parts.password)
    return found


def _credentials(config: Upstream, referenced: frozenset[str] = frozenset()) -> set[str]:
    """The credentials an upstream's configuration holds, to be cut out of its results as well: the client
    secret, and the env and header values whose names say they are one (`Authorization`, `API_KEY`, ...) or
    that were read by reference (`X-Session: {file: session}`)."""
    found: set[str] = set()
    auth = getattr(config, "auth", None)
    if auth is not None and auth.client_secret:
        found.add(auth.client_secret)
    for name, value in (*getattr(config, "env", {}).items(), *getattr(config, "headers", {}).items()):
        if names_a_secret(name) or value in referenced:
            found.update((value, value.rsplit(" ", 1)[-1]))
    return found


def _cut(text: str, tokens: set[str]) -> str:
    return cut_out(text, {t for t in tokens if len(t) >= _MIN_SECRET}, "***", shortest=_MIN_SECRET)


def _without_tokens(message: _Message, tokens: set[str]) -> _Message:
    """`message` (a result, a tool's definition, a question) with every token the guard holds for the upstream
    replaced, wherever a string holds it, names of keys included: an upstream may repeat the credential it was
    sent."""
    tokens = {t for t in tokens if len(t) >= _MIN_SECRET}
    if not tokens or not any(t in message.model_dump_json() for t in tokens):
        return message

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return cut_out(value, tokens, "***", shortest=_MIN_SECRET)
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    log.warning("an upstream repeated a credential the guard holds for it; cut out")
    return type(message).model_validate(scrub(message.model_dump(by_alias=True, mode="json", exclude_none=True)))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
