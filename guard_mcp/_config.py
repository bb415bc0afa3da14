"""upstreams.yaml: the `mcpServers` shape MCP clients already use, plus what the guard adds.

Loading is strict: unknown keys, bad types, unknown `${VAR}`s and bad names are a ConfigError
that names the file, the line and the key, and nothing starts.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guard_mcp._duration import parse_duration
from guard_mcp._errors import ConfigError
from guard_mcp._headline import parse_template
from guard_mcp._models import ActionSchema, ActionTraits
from guard_mcp._secrets import inline_secrets, read_reference

__all__ = [
    "ApprovalsConfig",
    "AuditConfig",
    "ConsoleConfig",
    "GuardConfig",
    "GuardSection",
    "HttpAuthConfig",
    "HttpUpstream",
    "LimitConfig",
    "MetricsConfig",
    "NotifyConfig",
    "NotifyTarget",
    "StdioUpstream",
    "ToolConfig",
    "Upstream",
    "UpstreamOAuth",
    "load_config",
    "missing_config",
    "parse_duration",
    "read_config_text",
]

UPSTREAM_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{0,23}")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DEFAULT_CONFIG = "upstreams.yaml"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def read_secret(value: Any, info: ValidationInfo) -> Any:
    """A secret key's value: as written, or read from the `{file|env|keyring: ...}` it names (_secrets)."""
    if not isinstance(value, dict):
        return value
    context = info.context or {}
    secret = read_reference(value, environ=context.get("environ", os.environ), base=context.get("base"))
    referenced = context.get("referenced")
    if referenced is not None:  # what was read is a secret whatever its key is called (cut out of results)
        referenced.add(secret)
    return secret


# A value, or a reference to where it is kept: `{file: PATH}`, `{env: NAME}`, `{keyring: SERVICE/NAME}`.
Secret = Annotated[str, BeforeValidator(read_secret)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _per(value: Any) -> Any:
    if value not in ("actor", "all"):
        raise ValueError(f"`{value}` is not a way to count; write `per: actor` (each principal alone) or `per: all`")
    return value


class LimitConfig(_Strict):
    """A velocity or cumulative limit on one tool's permitted calls, over a rolling window
    (enforced by guard_mcp/_limits.py): `{window: 1h, calls: 20}` or `{window: 24h, sum: amount, max: 2000}`."""

    window: Duration
    calls: int | None = None
    sum: str | None = None
    max: float | None = None
    per: Annotated[Literal["actor", "all"], BeforeValidator(_per)] = "actor"

    @field_validator("calls", mode="before")
    @classmethod
    def _calls(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"`{v}` is not a positive whole number of calls; write it like `calls: 20`")
        return v

    @field_validator("max", mode="before")
    @classmethod
    def _max(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0):
            raise ValueError(f"`{v}` is not a positive finite number; write it like `max: 2000`")
        return v

    @field_validator("sum", mode="before")
    @classmethod
    def _sum(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not 0 < len(v) <= 128):
            raise ValueError(f"`{v}` is not an argument name; write it like `sum: amount`")
        return v

    @model_validator(mode="after")
    def _one_measure(self) -> LimitConfig:
        if self.calls is not None and (self.sum is not None or self.max is not None):
            raise ValueError(
                "a limit counts `calls` or adds up an argument (`sum` + `max`), not both; write two limits"
            )
        if self.max is not None and self.sum is None:
            raise ValueError("`max` needs `sum:`, the argument whose values add up to it")
        if self.calls is None and self.sum is None:
            raise ValueError(
                "a limit needs `calls: N`, or `sum: ARGUMENT` with `max: N`; write it like `{window: 1h, calls: 20}`"
            )
        if self.sum is not None and self.max is None:
            raise ValueError(f"`sum: {self.sum}` needs `max:`, the most the window may add up to")
        return self


class ToolConfig(ActionTraits):
    """The action schema an operator attaches to one upstream tool: the model's traits (frozen, unknown keys
    refused, like every config section), the action's name when it is not `upstream.tool`, and limits."""

    action: str | None = None
    limits: list[LimitConfig] = Field(default_factory=list)
    # A schema `guard-mcp import` (or `tools review --propose`) proposed from what the upstream says about the
    # tool: until a person accepts it (`guard-mcp tools review`, or deleting the line) it is served as `unknown`.
    proposed: bool = False

    @field_validator("constraints")
    @classmethod
    def _constraint_schemas(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Caught here, not at the first call: a broken constraint would deny every call of the tool.
        # Imported here: only a config with constraints pays for the schema machinery and its child process.
        from guard_mcp._patterns import schema_problem

        for arg, schema in v.items():
            problem = schema_problem(schema)
            if problem is not None:
                raise ValueError(
                    f"the constraint on `{arg}` is not a valid JSON Schema ({problem}); "
                    "write it like `{maximum: 100}`"
                )
        return v

    @field_validator("headline")
    @classmethod
    def _headline(cls, v: str | None) -> str | None:
        if v is not None:
            parse_template(v)  # refused here, not when an approver is first shown it
        return v

    @field_validator("action")
    @classmethod
    def _action_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", v):
            raise ValueError(f"action `{v}` must be dotted lower-case words like `refund.create`")
        return v

    def schema_for(self, upstream: str, tool: str) -> ActionSchema:
        traits = {name: getattr(self, name) for name in ActionTraits.model_fields}
        return ActionSchema(action=self.action or f"{upstream}.{tool}".lower(), **traits)


def _elicitation_mode(value: Any) -> Any:
    if value not in ("relay", "decline"):
        raise ValueError(f"`{value}` is not an elicitation mode; write `relay` (ask the user) or `decline`")
    return value


def _new_tools_mode(value: Any) -> Any:
    if value not in ("withhold", "allow"):
        raise ValueError(
            f"`{value}` is not a way to treat new tools; write `withhold` (until `guard-mcp tools "
            "accept`) or `allow` (serve them at once)"
        )
    return value


class _UpstreamBase(_Strict):
    tools: dict[str, ToolConfig] = Field(default_factory=dict)
    timeout: Duration = 60.0  # per call
    disabled: bool = False
    # What to do when the upstream asks the user something mid-call (guard_mcp/_relay.py).
    elicitation: Annotated[Literal["relay", "decline"], BeforeValidator(_elicitation_mode)] = "relay"
    # A tool the upstream lists after its first listing (guard_mcp/_pins.py): withheld until accepted, or served.
    new_tools: Annotated[Literal["withhold", "allow"], BeforeValidator(_new_tools_mode)] = "withhold"
    # Accepted so a client's `mcpServers` entry pastes in unchanged.
    type: Literal["stdio", "http", "streamable-http", "streamableHttp"] | None = None


class StdioUpstream(_UpstreamBase):
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, Secret] = Field(default_factory=dict)
    cwd: str | None = None


def _oauth(value: Any) -> Any:
    if value == "oauth":
        return {"type": "oauth"}
    if isinstance(value, dict):
        return value
    raise ValueError(f"`{str(value)[:40]}` is not a way to sign in; write `auth: oauth`")


class UpstreamOAuth(_Strict):
    """`auth: oauth`: the guard signs in to the upstream itself (`guard-mcp login UPSTREAM`) and holds the
    tokens, sealed in its state directory. Without `client_id` it names itself by `client_metadata_url`
    where the authorization server takes client ID metadata documents, else it registers itself
    (dynamic client registration)."""

    type: Literal["oauth"] = "oauth"
    scope: str | None = None  # default: what the upstream asks for
    client_id: str | None = None  # a client registered beforehand
    client_secret: Secret | None = None  # its secret, if it has one (a `{file: PATH}`, `{keyring: ...}` or `${VAR}`)
    redirect_port: int | None = Field(default=None, ge=1, le=65535)  # the loopback port of the login redirect
    # The https URL of a client ID metadata document you publish for the guard (`client_id`: that URL,
    # `redirect_uris: [http://127.0.0.1/callback]` with `application_type: native` for any loopback port,
    # `token_endpoint_auth_method: none`); used where the authorization server takes such documents.
    client_metadata_url: str | None = None

    @field_validator("client_metadata_url")
    @classmethod
    def _metadata_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https://[^\s/?#]+/[^\s?#]+", v):
            raise ValueError(
                f"`client_metadata_url` `{v[:200]}` must be an https:// URL with a path, like "
                "`https://guard.example.com/oauth/client.json`"
            )
        return v

    @model_validator(mode="after")
    def _one_client(self) -> UpstreamOAuth:
        if self.client_metadata_url is not None and self.client_id is not None:
            raise ValueError("`client_id` and `client_metadata_url` name two clients; keep one")
        if self.client_secret is not None and self.client_id is None:
            raise ValueError("`client_secret` belongs to a `client_id` registered beforehand; give both, or neither")
        return self


class HttpUpstream(_UpstreamBase):
    url: str
    headers: dict[str, Secret] = Field(default_factory=dict)
    auth: Annotated[UpstreamOAuth, BeforeValidator(_oauth)] | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> HttpUpstream:
        if self.auth is not None and any(k.lower() == "authorization" for k in self.headers):
            raise ValueError("`auth: oauth` and an `Authorization` header are two credentials; remove the header")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            # not the value itself: it may hold a key expanded from `${VAR}`
            raise ValueError("url must start with http:// or https://")
        return v


def _upstream_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "http" if "url" in v else "stdio"
    return "http" if isinstance(v, HttpUpstream) else "stdio"


Upstream = Annotated[
    Annotated[StdioUpstream, Tag("stdio")] | Annotated[HttpUpstream, Tag("http")],
    Discriminator(_upstream_kind),
]


class ApprovalsConfig(_Strict):
    # how long a call waits in-line for a decision: under the clients' own request timeouts (the TypeScript
    # SDK's is 60 s whatever progress says), so `pending_approval` arrives before the client gives up
    wait: Duration = 45.0
    expire: Duration = 7200.0  # default deadline of an approval
    heartbeat: Duration = 5.0  # progress notification interval while waiting
    escalate_after: Duration | None = None
    escalate_to: str | None = None
    preauth_max: Duration = 3600.0  # longest session pre-authorisation an approver may grant


class AuditConfig(_Strict):
    redact: list[str] = Field(default_factory=list)  # argument names stored only as a digest
    checkpoint_every: int = Field(default=1000, ge=1)  # events between signed checkpoints
    # ... and the longest an event waits for one: bounds what a cut of the unsigned tail can remove unseen
    checkpoint_interval: Duration = 10.0
    synchronous: Literal["full", "normal"] = "full"


class PermitsConfig(_Strict):
    issuer: str = "guard-mcp"
    ttl: Duration = 300.0  # the longest a permit of this guard lives; a rule's `permit_ttl` may ask for less

    @field_validator("ttl")
    @classmethod
    def _short(cls, v: float) -> float:
        from guard_mcp.verify import MAX_PERMIT_TTL  # the verifier's bound; loading a config does not load it

        if not 1 <= v <= MAX_PERMIT_TTL:
            raise ValueError(f"`{v:g}s` is not between 1s and {MAX_PERMIT_TTL // 60}m, the longest a permit may live")
        return v


MIN_TOKEN_CHARS = 16
DEFAULT_MAX_RESULT = 4 * 2**20
MIN_MAX_RESULT = 1024
MAX_MAX_RESULT = 64 * 2**20  # a guard holds a whole result in memory before it relays it


# Asymmetric signatures only: with an HMAC algorithm allowed, a token "signed" with the IdP's public key
# (which anyone can fetch) would verify; `none` is never a signature.
CALLER_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_CALLER_LEEWAY = 300.0


def _idp_url(value: str, key: str) -> str:
    # RFC 8414 asks for https; plain http is accepted on loopback only (a local or test provider).
    if not re.fullmatch(
        r"https://[^\s/?#]+(/[^\s?#]*)?|http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/[^\s?#]*)?", value
    ):
        raise ValueError(
            f"`{key}` `{value[:200]}` must be an https:// URL (http:// only on loopback) without a query or fragment"
        )
    return value


class HttpAuthConfig(_Strict):
    """The guard as an OAuth 2.1 resource server: callers present bearer JWTs from this identity provider."""

    issuer: str
    # The guard's MCP endpoint as its clients reach it (behind a proxy it is not the bind address);
    # default `http://HOST:PORT/mcp` of the bind.
    resource: str | None = None
    audience: str | None = None  # default: the resource URL (RFC 8707)
    jwks_uri: str | None = None  # default: `jwks_uri` of the issuer's metadata
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    principal_claim: str = "sub"
    groups_claim: str | None = None
    leeway: float = 30.0  # seconds of clock skew tolerated on `exp` and `nbf`
    scopes: list[str] = Field(default_factory=list)  # scopes every token must carry

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        return _idp_url(v, "issuer")

    @field_validator("jwks_uri")
    @classmethod
    def _jwks(cls, v: str | None) -> str | None:
        return None if v is None else _idp_url(v, "jwks_uri")

    @field_validator("resource")
    @classmethod
    def _resource(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s?#]+", v):
            raise ValueError(f"`resource` `{v[:200]}` must be the guard's URL, like `https://guard.example.com/mcp`")
        return v

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("`algorithms` is empty: no token could verify; write it like `[RS256, ES256]`")
        for alg in v:
            if alg not in CALLER_ALGORITHMS:
                raise ValueError(
                    f"algorithm `{alg}` is not allowed for caller tokens; use asymmetric ones: "
                    f"{', '.join(CALLER_ALGORITHMS)}"
                )
        return v

    @field_validator("principal_claim", "groups_claim")
    @classmethod
    def _claim(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_:./-]{1,128}", v):
            raise ValueError(f"`{v[:80]}` is not a claim name; write it like `sub`, `email` or `groups`")
        return v

    @field_validator("leeway", mode="before")
    @classmethod
    def _leeway(cls, v: Any) -> Any:
        seconds = 0.0 if v in (0, "0") else parse_duration(v)
        if not 0 <= seconds <= MAX_CALLER_LEEWAY:
            raise ValueError(f"`leeway` `{v}` must be between 0 and {MAX_CALLER_LEEWAY:g} seconds")
        return seconds


class HttpServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    # The bearer token clients present when no identity provider is configured; without one, the guard
    # makes one at first start and keeps it in the state directory (`guard-mcp serve --print-token`).
    token: Secret | None = None
    auth: HttpAuthConfig | None = None

    @model_validator(mode="after")
    def _one_way_in(self) -> HttpServeConfig:
        if self.auth is not None and self.token is not None:
            raise ValueError(
                "`token` and `auth` are two ways in; keep `auth` (tokens from the identity provider) and remove `token`"
            )
        return self

    # Browser origins allowed to call the guard (`https://app.example.com`, `http://localhost:*`); a request
    # carrying any other `Origin` is refused (403), as the MCP spec asks. Loopback origins are allowed
    # when the guard binds loopback.
    allowed_origins: list[str] = Field(default_factory=list)

    @field_validator("token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        # An empty token (`${GUARD_HTTP_TOKEN}` unset) must not quietly switch authentication off, and one
        # with whitespace in it can never be sent in a header: every client would be refused.
        if v is None:
            return v
        if len(v) < MIN_TOKEN_CHARS or not v.isprintable() or any(c.isspace() for c in v):
            raise ValueError(
                f"the bearer token must be at least {MIN_TOKEN_CHARS} printable characters without "
                "spaces; generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"`{origin}` is not an origin; write it like `https://app.example.com` or `http://localhost:*`"
                )
        return v


class ConsoleConfig(_Strict):
    """The web approval console (guard_mcp/_console): under `/console/` of the HTTP transport, and on a
    loopback listener of its own (`host`, `port`; 0 picks a free one, announced) under `serve` over stdio."""

    enabled: bool | None = None  # unset: on when the console listens on loopback, off elsewhere
    host: str = "127.0.0.1"
    port: int = Field(default=8766, ge=0, le=65535)
    # The base URL in the links the guard hands out (`https://guard.example.com/console`), when a proxy
    # stands in front; unset, the links name the listener itself, as `http://localhost:PORT/console`.
    public_url: str | None = None
    session: Duration = 1800.0  # a signed-in session ends this long after sign-in
    idle: Duration = 600.0  # ... or this long after its last request
    enrol_expire: Duration = 86400.0  # how long a passkey enrolment link stays usable (once)
    # Approver groups whose members may accept changed tool definitions and give grants for one tool
    # from the console; none by default (those stay CLI actions).
    admins: list[str] = Field(default_factory=list)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?", v):
            raise ValueError(f"`{v}` is not a base URL; write it like `https://guard.example.com/console`")
        return None if v is None else v.rstrip("/")


# What a notification target may be told about, and what it is told about unless it says otherwise.
APPROVAL_NOTICES = ("approval.requested", "approval.escalated", "approval.decided", "approval.expired")
NOTICES = (*APPROVAL_NOTICES, "audit.broken", "tool.pin_changed", "policy.refused")
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_WEBHOOK_SECRET_BYTES = (24, 64)  # what the Standard Webhooks specification asks of a symmetric secret


def _webhook_secret_bytes(value: str) -> bytes:
    """The key bytes of a `whsec_...` secret (base64, as the Standard Webhooks libraries read it)."""
    raw = value.removeprefix("whsec_")
    try:
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


class NotifyTarget(_Strict):
    """One place notifications go (guard_mcp/_notify): a signed webhook, or any Apprise URL (Slack, Teams,
    Matrix, ntfy, e-mail, ...). Neither the URL nor the secret is ever quoted in an error or a log line."""

    webhook: Secret | None = Field(default=None, repr=False)  # POSTed JSON, signed per Standard Webhooks
    # The webhook's signing secret (`whsec_` + base64 of 24 to 64 random bytes), usually `${VAR}`.
    secret: Secret | None = Field(default=None, repr=False)
    # An Apprise URL instead of a webhook: `slack://…`, `msteams://…`, `matrixs://…`, `ntfys://…`, `mailtos://…`.
    apprise: Secret | None = Field(default=None, repr=False)
    groups: list[str] | None = None  # approver groups whose approvals go here; unset: every group
    # What this target is told about: any of the four approval events (the default), `audit.broken`,
    # `tool.pin_changed`, `policy.refused`.
    events: list[str] = Field(default_factory=lambda: list(APPROVAL_NOTICES))
    timeout: Duration = 10.0  # per delivery attempt

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("webhook must be a URL starting with http:// or https://")  # no echo: it may hold a token
        return v

    @field_validator("apprise")
    @classmethod
    def _apprise_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z][a-z0-9+.-]*://\S", v):
            raise ValueError(
                "apprise must be an Apprise URL like `slack://...` or `mailtos://...` "
                "(see the Apprise documentation for each service)"
            )
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is None:
            return v
        low, high = _WEBHOOK_SECRET_BYTES
        if not low <= len(_webhook_secret_bytes(v)) <= high:
            raise ValueError(
                f"the webhook secret must be `whsec_` and base64 of {low} to {high} random bytes; "
                "generate one with `python -c 'import base64,secrets; "
                'print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\'`'
            )
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str] | None) -> list[str] | None:
        for group in v or ():
            if not _GROUP_NAME.fullmatch(group):
                raise ValueError(f"`{group}` is not an approver group name; write it like `support_leads`")
        if v is not None and not v:
            raise ValueError("`groups: []` would route nothing here; list groups, or leave `groups` out for all")
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        for kind in v:
            if kind not in NOTICES:
                raise ValueError(f"`{kind}` is not an event a target can be told about; use {', '.join(NOTICES)}")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> NotifyTarget:
        if (self.webhook is None) == (self.apprise is None):
            raise ValueError("a target is either `webhook: URL` (with `secret:`) or `apprise: URL`; give one")
        if self.webhook is not None and self.secret is None:
            raise ValueError(
                "a webhook needs `secret:` (a `whsec_...` value, usually `${VAR}`), so its receiver "
                "can tell the guard's messages from forged ones"
            )
        if self.apprise is not None and self.secret is not None:
            raise ValueError("`secret:` signs webhooks; an Apprise URL carries its own credentials")
        return self


class NotifyRetryConfig(_Strict):
    first: Duration = 10.0  # wait before the second attempt; doubles each time after
    max: Duration = 900.0  # the longest wait between two attempts
    give_up: Duration = 86400.0  # after this long undelivered, a notification is dropped and logged


class NotifyConfig(_Strict):
    """`guard.notify`: who hears about approvals (and, if they ask, a broken audit log, a changed tool, a
    refused policy), through a durable outbox in the state directory."""

    # The console's base URL (`https://guard.example.com/console`): messages link to `{link_base}/approvals/ID`,
    # a page where the approver signs in. A link never approves anything by itself.
    link_base: str | None = None
    # Where notifications go, by name (1-24 letters, digits or `-`): each a `webhook` or an `apprise` URL.
    targets: dict[str, NotifyTarget] = Field(default_factory=dict)
    retry: NotifyRetryConfig = NotifyRetryConfig()  # how a failed delivery is tried again

    @field_validator("link_base")
    @classmethod
    def _link_base(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?", v):
            raise ValueError(f"`{v}` is not a base URL; write it like `https://guard.example.com/console`")
        return None if v is None else v.rstrip("/")

    @field_validator("targets")
    @classmethod
    def _names(cls, v: dict[str, NotifyTarget]) -> dict[str, NotifyTarget]:
        for name in v:
            if not UPSTREAM_NAME.fullmatch(name):
                raise ValueError(f"target name `{name}` must be 1-24 letters, digits or `-`, starting with a letter")
        return v


class MetricsConfig(_Strict):
    """`guard.metrics`: `GET /metrics` (Prometheus text) on the HTTP transport and the console's listener."""

    enabled: bool = True  # false: no `/metrics` on any listener
    # Unset: only loopback scrapers (a loopback client naming a loopback host). Set (`${METRICS_TOKEN}` or a
    # `{file: PATH}` reference, 16+ characters): any scraper sending `Authorization: Bearer <token>`, and no other.
    token: Secret | None = Field(default=None, min_length=16)


def _policy_paths(data: Any) -> Any:
    """`policy: PATH`, or `policy: {bundle: PATH, shadow: PATH}`: the candidate in `shadow` is decided beside
    the live bundle on every call and never changes an outcome (guard_mcp/_policy/_engine.py)."""
    if not isinstance(data, dict) or not isinstance(data.get("policy"), dict):
        return data
    spec = dict(data["policy"])
    unknown = sorted(set(spec) - {"bundle", "shadow"}, key=str)
    if unknown:
        raise ValueError(f"unknown key `{unknown[0]}` under `policy`; write `policy: {{bundle: PATH, shadow: PATH}}`")
    out = {k: v for k, v in data.items() if k != "policy"}
    out["policy"] = spec.get("bundle")
    if "shadow" in spec:
        out["shadow_policy"] = spec["shadow"]
    return out


class GuardSection(_Strict):
    environment: str = "development"
    principal: str = "local-user"
    policy: str | None = None
    # A candidate bundle decided beside `policy` (written `policy: {bundle: ..., shadow: ...}`).
    shadow_policy: str | None = None
    trusted_policy_keys: list[str] = Field(default_factory=list)
    approvals: ApprovalsConfig = ApprovalsConfig()
    audit: AuditConfig = AuditConfig()
    permits: PermitsConfig = PermitsConfig()
    http: HttpServeConfig = HttpServeConfig()
    console: ConsoleConfig = ConsoleConfig()
    notify: NotifyConfig = NotifyConfig()  # who hears about approvals, by webhook, chat or mail (docs/notify.md).
    metrics: MetricsConfig = MetricsConfig()  # who may read `/metrics` (docs/operations.md)
    max_argument_bytes: int = Field(default=256 * 1024, ge=1024)
    # An upstream's answer larger than this is refused (`result_too_large`), not relayed.
    max_result_bytes: int = DEFAULT_MAX_RESULT

    @field_validator("max_result_bytes", mode="before")
    @classmethod
    def _result_bound(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or not MIN_MAX_RESULT <= v <= MAX_MAX_RESULT:
            raise ValueError(
                f"`{v}` is not a byte count between {MIN_MAX_RESULT} and {MAX_MAX_RESULT} "
                f"({MAX_MAX_RESULT // 2**20} MiB); write it like `4194304` (4 MiB, the default)"
            )
        return v

    # Unset: the SQLite database in the state directory. A `postgresql://user:${PGPASSWORD}@host/db` URL:
    # a PostgreSQL server several guard instances share (docs/storage.md says which stores move there).
    store: Secret | None = None

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str | None) -> str | None:
        # not the value itself: it may hold a password expanded from `${VAR}`
        if v is not None and not re.match(r"^postgres(ql)?://[^/\s]", v, re.IGNORECASE):
            raise ValueError(
                "`guard.store` must be a `postgresql://user:${PGPASSWORD}@host:5432/guard` URL; leave it "
                "unset for the SQLite database in the state directory"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _policy_forms(cls, data: Any) -> Any:
        return _policy_paths(data)

    @field_validator("environment")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", v):
            raise ValueError(f"environment `{v}` must be a short lower-case name like `production`")
        return v


class GuardConfig(_Strict):
    guard: GuardSection = GuardSection()
    upstreams: dict[str, Upstream] = Field(default_factory=dict)
    source: Path | None = Field(default=None, exclude=True)
    # What loads but should change: a secret written out in the file (loading fills it; `check` and `serve` say it).
    warnings: tuple[str, ...] = Field(default=(), exclude=True)
    # The values read by reference (`{file|env|keyring: ...}`), whatever the keys holding them are called.
    referenced: frozenset[str] = Field(default=frozenset(), exclude=True, repr=False)

    @field_validator("upstreams")
    @classmethod
    def _names(cls, v: dict[str, Upstream]) -> dict[str, Upstream]:
        for name in v:
            if not UPSTREAM_NAME.fullmatch(name):
                raise ValueError(f"upstream name `{name}` must be 1-24 letters, digits or `-`, starting with a letter")
        return v

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(path).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p

    def action_schema(self, upstream: str, tool: str) -> ActionSchema:
        up = self.upstreams.get(upstream)
        cfg = up.tools.get(tool) if up is not None else None
        if cfg is None or cfg.proposed:  # a proposal nobody accepted is no schema
            return ActionSchema.unknown(upstream, tool)
        return cfg.schema_for(upstream, tool)


# ---------------------------------------------------------------------------------------- loading


_MAX_NODES = 100_000  # nodes of the document with its aliases expanded (a real config has hundreds)


def _bounded(root: yaml.Node | None, where: str) -> None:
    """Refuse a document whose aliases refer to themselves or expand to a huge tree (a "billion laughs"
    of a few hundred bytes): every later walk of the configuration would follow each alias again."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ConfigError(
                f"{where}:{node.start_mark.line + 1}: invalid YAML: an alias refers to the node "
                "that contains it; write the value out"
            )
        open_.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1 + sum(size(child) for child in children)
        open_.discard(key)
        if total > _MAX_NODES:
            raise ConfigError(
                f"{where}: invalid YAML: its aliases expand to more than {_MAX_NODES:,} values; "
                "write the configuration out without nested aliases"
            )
        sizes[key] = total
        return total

    if root is not None:
        size(root)


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int], where: str) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            line = k.start_mark.line + 1
            if (*path, key) in out and k.tag != "tag:yaml.org,2002:merge":
                # YAML keeps the last one silently: a second `refund:` would drop the first's limits.
                raise ConfigError(
                    f"{where}:{line}: `{_dotted((*path, key))}` is given twice (first on line "
                    f"{out[(*path, key)]}); keep one"
                )
            out[(*path, key)] = line
            _line_index(v, (*path, key), out, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, (*path, i), out, where)


def _interpolate(value: Any, env: Mapping[str, str], where: tuple[Any, ...], errors: list[tuple[Any, ...]]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append((*where, name))
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, (*where, k), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, (*where, i), errors) for i, v in enumerate(value)]
    return value


def _locate(path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def missing_config(path: str | os.PathLike[str]) -> ConfigError:
    """The one error for a config file that is not there."""
    return ConfigError(
        f"config file `{path}` does not exist: pass `--config FILE`, or run `guard-mcp demo` for the embedded example"
    )


def read_config_text(path: Path) -> str:
    """The config file's text; a ConfigError when it is not there, cannot be read as UTF-8, or is another
    user's or writable by others (`_refuse_untrusted`)."""
    try:
        with open(path, "rb") as f:  # checked and read on one open file
            _refuse_untrusted(path, os.fstat(f.fileno()))
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise missing_config(path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file `{path}`: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    environ: Mapping[str, str] | None = None,
    builtins: Mapping[str, str] | None = None,
) -> GuardConfig:
    """Load and validate upstreams.yaml. `text` parses a string instead (tests, imports).

    `${PYTHON}` (the guard's interpreter) is always defined; `builtins` adds more, such as
    `${GUARD_STATE_DIR}`, and wins over the environment.
    """
    src = Path(path) if path is not None else None
    where = str(src) if src is not None else "<config>"
    if text is None:
        if src is None:
            raise ConfigError("no configuration given: pass `--config FILE`")
        text = read_config_text(src)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _bounded(node, where)
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply; fix the syntax and retry") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        # The problem text can quote the document (a tag, an alias: a secret pasted in the wrong place).
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem = "explicit tags (`!…`) are not supported"
        elif "alias" in str(getattr(exc, "problem", "")):
            problem = "an alias (`*…`) names no anchor"
        else:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}; fix the syntax and retry") from None
    except (ValueError, TypeError, OverflowError):  # `!!int abc`: a value that does not fit its tag
        raise ConfigError(f"{where}: invalid YAML: a value does not fit its `!!` tag; remove the tag") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}:1: the top level must be a mapping with `guard:` and `upstreams:`")
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines, where)
    if "mcpServers" in raw:
        if "upstreams" in raw:
            raise ConfigError(f"{where}: use either `upstreams:` or `mcpServers:`, not both")
        raw["upstreams"] = raw.pop("mcpServers")
        lines.update({("upstreams", *k[1:]): v for k, v in lines.items() if k[:1] == ("mcpServers",)})
    env = dict(os.environ if environ is None else environ)
    env.setdefault("PYTHON", sys.executable)
    env.update(builtins or {})
    warnings = [
        f"{where}:{_locate(key, lines)}: `{_dotted(key)}` is written out in the configuration; keep it in a file "
        "(`{file: PATH}`, mode 0600), the OS keyring (`{keyring: SERVICE/NAME}`) or the environment (`${VAR}`)"
        for key in sorted(inline_secrets(raw), key=lambda k: _locate(k, lines) or 0)
    ]
    missing: list[tuple[Any, ...]] = []
    raw = _interpolate(raw, env, (), missing)
    if missing:
        *key, var = missing[0]
        at = _locate(tuple(key), lines)
        raise ConfigError(
            f"{where}:{at}: `{_dotted(tuple(key))}` uses `${{{var}}}`, which is not set in the guard's "
            f"environment; export {var} or write `${{{var}:-default}}`"
        )
    upstreams = raw.get("upstreams")
    if isinstance(upstreams, dict):
        for name, entry in upstreams.items():
            if isinstance(entry, dict) and "command" in entry and "url" in entry:
                raise ConfigError(
                    f"{where}:{_locate(('upstreams', name), lines)}: upstream `{name}` has both `command` "
                    "and `url`; keep `command` for stdio or `url` for HTTP"
                )
            if isinstance(entry, dict) and "command" not in entry and "url" not in entry:
                raise ConfigError(
                    f"{where}:{_locate(('upstreams', name), lines)}: upstream `{name}` needs `command` "
                    "(stdio) or `url` (streamable HTTP)"
                )
    try:
        referenced: set[str] = set()
        cfg = GuardConfig.model_validate(
            raw, context={"environ": env, "base": src.parent if src else None, "referenced": referenced}
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        if loc[:1] == ("upstreams",) and len(loc) > 2 and loc[2] in _UNION_TAGS:
            loc = loc[:2] + loc[3:]  # the stdio/http tag pydantic adds after the upstream's name
        at = _locate(loc, lines)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key `{loc[-1]}`; {_suggest(str(loc[-1]), tuple(err['loc'][:-1]))}"
        elif err["type"] == "missing":
            msg = f"required key `{loc[-1]}` is missing"
        raise ConfigError(f"{where}:{at}: at `{_dotted(loc)}`: {msg}") from None
    return cfg.model_copy(
        update={
            "source": src.resolve() if src is not None else None,
            "warnings": tuple(warnings),
            "referenced": frozenset(referenced),
        }
    )


_UNION_TAGS = {"stdio", "http"}


def _refuse_untrusted(src: Path, st: os.stat_result) -> None:
    """A configuration someone else can change runs their commands as this user (a stdio upstream's
    `command`) and names the policy keys the guard trusts: it must be this user's (or root's), and writable
    by no one else (a user's private group aside, as `_state` counts it)."""
    if os.name != "posix":
        return
    from guard_mcp._state import writable_by_others

    if st.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"config file `{src}` belongs to uid {st.st_uid}, who could run commands as you through "
            "it; keep the configuration in a file of your own"
        )
    if writable_by_others(st):
        raise ConfigError(
            f"config file `{src}` can be written by group or others (mode "
            f"{st.st_mode & 0o7777:04o}), who could run commands as you through it; run "
            f"`chmod go-w {src}`"
        )


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config model that holds the keys at `loc` (pydantic's error location, union tags included)."""
    current: Any = GuardConfig
    parts = list(loc)
    while True:
        while get_origin(current) is Annotated:
            current = get_args(current)[0]
        if get_origin(current) in (Union, UnionType):
            members = {_tag_of(m): get_args(m)[0] if get_origin(m) is Annotated else m for m in get_args(current)}
            if parts and parts[0] in members:
                current = members[parts.pop(0)]
                continue
            models = [m for m in members.values() if isinstance(m, type) and issubclass(m, BaseModel)]
            if not models:
                return None
            current = models[0]
            continue
        if not parts:
            return current if isinstance(current, type) and issubclass(current, BaseModel) else None
        part = parts.pop(0)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None


def _tag_of(member: Any) -> Any:
    if get_origin(member) is Annotated:
        tag = next((m for m in get_args(member)[1:] if isinstance(m, Tag)), None)
        if tag is not None:
            return tag.tag
    return member


def _suggest(key: str, loc: tuple[Any, ...]) -> str:
    """A did-you-mean for a misspelt key, from the field names of the model it was given to."""
    model = _model_at(loc)
    known = sorted(n for n, f in model.model_fields.items() if not f.exclude) if model is not None else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    if known:
        return f"the keys here are {', '.join(f'`{k}`' for k in known)}"
    return "check the spelling against docs/config.md"
