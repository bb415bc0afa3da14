"""Which `CallerCheck` the HTTP gate runs: the identity provider's JWTs when `guard.http.auth` is set,
else the guard's one bearer token (configured, or made and kept in the state directory)."""

from __future__ import annotations

from guard_mcp._clock import Clock
from guard_mcp._config import GuardConfig
from guard_mcp._errors import ConfigError
from guard_mcp._identity._callers import CallerCheck, SharedToken
from guard_mcp._identity._local import http_token
from guard_mcp._identity._resource import ResourceServer
from guard_mcp._state import StateDir

__all__ = ["caller_check"]


def caller_check(
    config: GuardConfig, state: StateDir, clock: Clock, *, token: str | None = None, resource: str | None = None
) -> CallerCheck:
    """`token` overrides the configured or stored one; `resource` is the guard's URL as served (the
    default of `guard.http.auth.resource`)."""
    auth = config.guard.http.auth
    if auth is None:
        return SharedToken(token if token is not None else http_token(config, state)[0])
    where = auth.resource or resource
    if where is None:
        raise ConfigError(
            "`guard.http.auth` needs the guard's URL to name itself to clients; set "
            "`guard.http.auth.resource`, like `https://guard.example.com/mcp`"
        )
    return ResourceServer(auth, resource=where, clock=clock)
