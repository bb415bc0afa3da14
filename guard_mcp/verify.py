"""Verify a guard-mcp permit before acting: the module an upstream's author imports.

    from guard_mcp.verify import PermitVerifier, SqliteReplayStore, requires_permit

    verifier = PermitVerifier(jwks="/var/lib/guard-mcp/jwks.json", issuer="guard-mcp",
                              audience="shop", environment="production",
                              replay_store=SqliteReplayStore("/var/lib/shop/permits.db"))

    @server.tool()
    @requires_permit(verifier, action="refund.create")
    async def refund(customer_id: str, amount: int) -> str: ...

A permit is a compact ES256 JWS (header `kid`, `typ` = `permit+jwt`) whose claims bind one call:
the upstream (`aud`), the action (`act`), the exact arguments (`payload_hash`), the environment
(`env`), a validity window and a single-use `jti`. `verify` never raises on hostile input: it
answers a `VerifyResult` whose `reason` is one of `REASONS`, checked in this order so the reason
is the most precise one:

    missing → malformed → unknown_key → bad_signature → wrong_issuer → wrong_environment →
    wrong_audience → expired / not_yet_valid → wrong_action → wrong_tool → payload_mismatch → replayed

A permit valid for longer than MAX_PERMIT_TTL (no guard mints one) is `malformed`. `wrong_tool` is
checked when the caller names the tool (`requires_permit` names the one the request called).

`unknown_key` also covers a key published for another environment, a JWKS that could not be
read (a remote one that has not refreshed within its TTL), and a JWKS file that is not trusted: one
that group or others can write, or whose owner is neither root nor `expected_owner` (default: the
verifying process's user). Whoever can write it could publish a key of their own. The result's
`detail` then says in one line what is wrong and what to do; it is logged as well.

`replayed` also covers a replay store that failed: whether the permit was used before cannot be
proven, so the call is refused. The `jti` is consumed last, only for an otherwise valid permit, so a
bad attempt never burns a good one; it is remembered for REPLAY_MEMORY seconds past `exp`, more than
any leeway or clock step back.

Depends on cryptography and rfc8785 only (and on the MCP SDK inside `requires_permit`, psycopg inside
`PostgresReplayStore`: upstreams on several hosts sharing one PostgreSQL database accept a permit once).
"""

from __future__ import annotations

import functools
import hmac
import inspect
import json
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from guard_mcp._canonical import payload_hash
from guard_mcp._claims import OPTIONAL_STR_CLAIMS, STR_CLAIMS, TIME_CLAIMS
from guard_mcp._clock import Clock, SystemClock
from guard_mcp._jwk import b64url_decode
from guard_mcp._jwks import JwksSource, open_jwks
from guard_mcp._replay import MemoryReplayStore, PostgresReplayStore, ReplayStore, SqliteReplayStore

__all__ = [
    "MAX_LEEWAY",
    "MAX_PERMIT_BYTES",
    "MAX_PERMIT_TTL",
    "PERMIT_META_KEY",
    "PERMIT_TYP",
    "REASONS",
    "REFUSAL_META_KEY",
    "REPLAY_MEMORY",
    "MemoryReplayStore",
    "PermitVerifier",
    "PostgresReplayStore",
    "ReplayStore",
    "SqliteReplayStore",
    "VerifyResult",
    "requires_permit",
]

PERMIT_META_KEY: Final = "dev.guard-mcp/permit"
# The key under which a refused call's reason code travels in the result's `_meta`.
REFUSAL_META_KEY: Final = "dev.guard-mcp/permit_refused"
PERMIT_TYP: Final = "permit+jwt"
# A permit is a few hundred bytes; anything near this is an attack on the parser, not a permit.
MAX_PERMIT_BYTES: Final = 8 * 1024
# The longest a permit lives (`exp` - `iat`): the guard caps every permit at this, and a verifier
# refuses a longer one, which only a leaked signing key could make.
MAX_PERMIT_TTL: Final = 3600
# The most clock skew a verifier may tolerate; more would stretch every permit's life.
MAX_LEEWAY: Final = 300
# Seconds a used `jti` is remembered after its `exp`: longer than MAX_LEEWAY, so verifiers with
# different leeways on one store, or a clock stepped back, never meet a forgotten permit still valid.
REPLAY_MEMORY: Final = 3600

REASONS: Final = frozenset(
    {
        "missing",
        "malformed",
        "bad_signature",
        "unknown_key",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "wrong_environment",
        "wrong_action",
        "wrong_tool",
        "payload_mismatch",
        "replayed",
    }
)

_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_MAX_JTI = 128
_SIG_BYTES = 64
_ECDSA = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True)
class VerifyResult:
    """`valid`, or the reason (one of `REASONS`) it is not.

    `claims` are present once the signature has verified (authentic, not necessarily valid for
    this call), and None before that: unauthenticated claims are never handed out.
    """

    valid: bool
    reason: str | None = None
    claims: dict[str, Any] | None = None
    # For the upstream's operator, not its caller: why there were no keys (a JWKS file not trusted, unreadable).
    detail: str | None = None


def _refuse(reason: str, claims: dict[str, Any] | None = None, detail: str | None = None) -> VerifyResult:
    return VerifyResult(valid=False, reason=reason, claims=claims, detail=detail)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two parsers could disagree on which value wins; refuse the ambiguity.
            raise ValueError(f"duplicate member `{key}`")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class _Parsed:
    kid: str
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _parse(token: str) -> _Parsed | None:
    """Split and decode a compact JWS; None for anything that is not a well-formed permit."""
    if len(token) > MAX_PERMIT_BYTES or not token.isascii() or token.count(".") != 2:
        return None
    header_b64, claims_b64, sig_b64 = token.split(".")
    header_raw, claims_raw, signature = b64url_decode(header_b64), b64url_decode(claims_b64), b64url_decode(sig_b64)
    if header_raw is None or claims_raw is None or signature is None or len(signature) != _SIG_BYTES:
        return None
    header = _json_object(header_raw)
    # Exactly these members: `jwk`, `jku`, `x5u`, `crit` and friends would let the token pick its key.
    if header is None or set(header) != _HEADER_MEMBERS:
        return None
    kid = header["kid"]
    if header["alg"] != "ES256" or header["typ"] != PERMIT_TYP or not isinstance(kid, str) or not kid:
        return None
    claims = _json_object(claims_raw)
    if claims is None or not _well_formed(claims):
        return None
    return _Parsed(kid, claims, f"{header_b64}.{claims_b64}".encode("ascii"), signature)


def _well_formed(claims: dict[str, Any]) -> bool:
    if not all(isinstance(claims.get(name), str) for name in STR_CLAIMS):
        return False
    if not all(isinstance(claims.get(name, ""), str) for name in OPTIONAL_STR_CLAIMS):
        return False
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            return False
    jti: str = claims["jti"]
    return (
        0 < len(jti) <= _MAX_JTI and claims["nbf"] < claims["exp"] and claims["exp"] - claims["iat"] <= MAX_PERMIT_TTL
    )


def _signature_ok(key: ec.EllipticCurvePublicKey, parsed: _Parsed) -> bool:
    r = int.from_bytes(parsed.signature[:32], "big")
    s = int.from_bytes(parsed.signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), parsed.signing_input, _ECDSA)
    except InvalidSignature:
        return False
    return True


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


class PermitVerifier:
    """Checks permits for one upstream (`audience`) in one environment.

    `jwks` is a JWKS dict, the path of a JWKS file (re-read when it changes), or an http(s) URL
    (cached for `jwks_ttl` seconds; see the module docstring for what happens when it is down).
    A JWKS file must belong to root or `expected_owner` (a uid; default: this process's user, so pass
    the guard's uid when the guard runs as another user) and be writable by no one else.
    `leeway` tolerates that many seconds (at most MAX_LEEWAY) of clock skew on `exp`, `nbf` and
    `iat`. Without a `replay_store`, used permits are remembered in memory (one process only).
    """

    def __init__(
        self,
        jwks: str | os.PathLike[str] | dict[str, Any],
        *,
        issuer: str,
        audience: str,
        environment: str,
        replay_store: ReplayStore | None = None,
        leeway: float = 0,
        clock: Clock | None = None,
        jwks_ttl: float = 300,
        expected_owner: int | None = None,
    ) -> None:
        if not (isinstance(leeway, (int, float)) and 0 <= leeway <= MAX_LEEWAY):  # NaN fails too
            raise ValueError(f"leeway `{leeway}` must be between 0 and {MAX_LEEWAY} seconds")
        if not (isinstance(jwks_ttl, (int, float)) and 0 < jwks_ttl < float("inf")):
            raise ValueError(f"jwks_ttl `{jwks_ttl}` must be a positive number of seconds")
        self.issuer = issuer
        self.audience = audience
        self.environment = environment
        self.leeway = float(leeway)
        self.clock: Clock = clock or SystemClock()
        # `is None`, not `or`: an empty store has len() 0 and would be silently swapped out.
        self.replay_store: ReplayStore = MemoryReplayStore(self.clock) if replay_store is None else replay_store
        self._keys: JwksSource = open_jwks(jwks, ttl=jwks_ttl, clock=self.clock, expected_owner=expected_owner)

    def verify(self, token: str | None, *, action: str, arguments: Any, tool: str | None = None) -> VerifyResult:
        """Decide whether `token` permits calling `action` with exactly `arguments`, once; with `tool`,
        also that it was minted for that tool (the name as this upstream serves it)."""
        try:
            return self._verify(token, action=action, arguments=arguments, tool=tool)
        except Exception:  # a verifier that crashes must still refuse, never raise into the upstream
            return _refuse("malformed")

    def inspect(self, token: str | None) -> VerifyResult:
        """The checks that do not depend on a call: form, key, signature, issuer, environment and
        validity window. Audience, action and payload are not checked and nothing is consumed."""
        try:
            result = self._authentic(token)
            if isinstance(result, VerifyResult):
                return result
            claims = result.claims
            return self._window(claims) or VerifyResult(valid=True, claims=claims)
        except Exception:
            return _refuse("malformed")

    # -- stages ----------------------------------------------------------------------------------

    def _authentic(self, token: str | None) -> _Parsed | VerifyResult:
        if token is None or token == "":
            return _refuse("missing")
        if not isinstance(token, str):
            return _refuse("malformed")
        parsed = _parse(token)
        if parsed is None:
            return _refuse("malformed")
        key = self._keys.key(parsed.kid, self.environment)
        if key is None:
            return _refuse("unknown_key", detail=self._keys.problem)
        if not _signature_ok(key, parsed):
            return _refuse("bad_signature")
        claims = parsed.claims
        if not _same(claims["iss"], self.issuer):
            return _refuse("wrong_issuer", claims)
        if not _same(claims["env"], self.environment):
            return _refuse("wrong_environment", claims)
        return parsed

    def _window(self, claims: dict[str, Any]) -> VerifyResult | None:
        now = self.clock.now()
        if now >= claims["exp"] + self.leeway:
            return _refuse("expired", claims)
        if now + self.leeway < claims["nbf"] or now + self.leeway < claims["iat"]:
            return _refuse("not_yet_valid", claims)
        return None

    def _verify(self, token: str | None, *, action: str, arguments: Any, tool: str | None) -> VerifyResult:
        result = self._authentic(token)
        if isinstance(result, VerifyResult):
            return result
        claims = result.claims
        if not _same(claims["aud"], self.audience):
            return _refuse("wrong_audience", claims)
        refused = self._window(claims)
        if refused is not None:
            return refused
        if not _same(claims["act"], action):
            return _refuse("wrong_action", claims)
        if tool is not None and not _same(claims["tool"], tool):
            return _refuse("wrong_tool", claims)
        try:
            actual = payload_hash(arguments)
        except Exception:  # arguments JSON cannot carry cannot match any permit
            return _refuse("payload_mismatch", claims)
        if not _same(claims["payload_hash"], actual):
            return _refuse("payload_mismatch", claims)
        try:
            first_use = self.replay_store.consume(claims["jti"], claims["exp"] + REPLAY_MEMORY)
        except Exception:  # unknown whether it was used before: refuse
            first_use = False
        if first_use is not True:
            return _refuse("replayed", claims)
        return VerifyResult(valid=True, claims=claims)


# -------------------------------------------------------------------------------- MCPServer tools

F = TypeVar("F", bound=Callable[..., Any])
_CONTEXT_PARAM = "guard_permit_context"


def _context_param(sig: inspect.Signature, context_type: type) -> str | None:
    for param in sig.parameters.values():
        ann = param.annotation
        candidates = (ann, *typing.get_args(ann))
        if any(inspect.isclass(c) and issubclass(c, context_type) for c in candidates):
            return param.name
    return None


def _permit_and_call(ctx: Any) -> tuple[Any, str, Any]:
    """The permit from the request `_meta`, the tool the request called, and the arguments exactly as
    the request carried them."""
    try:
        request = ctx.request_context
    except Exception:  # no request behind this call (called directly, not over MCP)
        return None, "", None
    meta = request.meta or {}
    params = request.params or {}
    arguments = params.get("arguments")
    name = params.get("name")
    return meta.get(PERMIT_META_KEY), name if isinstance(name, str) else "", {} if arguments is None else arguments


def _refusal(reason: str | None) -> Any:
    from mcp.types import CallToolResult, TextContent

    code = reason or "malformed"
    return CallToolResult(
        content=[TextContent(type="text", text=f"permit_refused: {code}")],
        is_error=True,
        meta={REFUSAL_META_KEY: code},
    )


def requires_permit(verifier: PermitVerifier, *, action: str) -> Callable[[F], F]:
    """Refuse an `MCPServer` tool call unless its `_meta` carries a valid permit for `action` and for
    the tool the request called (`wrong_tool`: a permit minted for another tool of this upstream).

    Apply it under `@server.tool()`. A refused call returns a normal `isError` result whose text
    is `permit_refused: <reason>` (the reason also in its `_meta`), and the tool body does not run.

    The payload hash is checked against the arguments of the request as they arrived, before the
    SDK coerces them and fills in defaults: those are what the guard hashed, and what the tool's
    parameters are derived from.
    """
    from mcp.server.mcpserver import Context

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        ctx_name = _context_param(sig, Context)
        added = ctx_name is None
        if ctx_name is None:
            ctx_name = _CONTEXT_PARAM
            params = list(sig.parameters.values())
            at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
            params.insert(
                at, inspect.Parameter(ctx_name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Context)
            )
            sig = sig.replace(parameters=params)
        name: str = ctx_name

        def take_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # The context parameter this decorator added is not the tool's: it never reaches the body.
            return kwargs.pop(name, None) if added else sig.bind_partial(*args, **kwargs).arguments.get(name)

        def check(ctx: Any) -> VerifyResult:
            token, tool, arguments = _permit_and_call(ctx)
            if arguments is None:
                return _refuse("missing")
            return verifier.verify(token, action=action, arguments=arguments, tool=tool)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                import anyio.to_thread

                # A remote JWKS refresh or a SQLite commit must not stall the event loop.
                ctx = take_context(args, kwargs)
                result = await anyio.to_thread.run_sync(check, ctx)
                if not result.valid:
                    return _refusal(result.reason)
                return await fn(*args, **kwargs)

            wrapper: Callable[..., Any] = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                result = check(take_context(args, kwargs))
                if not result.valid:
                    return _refusal(result.reason)
                return fn(*args, **kwargs)

            wrapper = sync_wrapper

        wrapper.__signature__ = sig  # type: ignore[attr-defined]
        annotations = {p.name: p.annotation for p in sig.parameters.values() if p.annotation is not p.empty}
        if sig.return_annotation is not sig.empty:
            annotations["return"] = sig.return_annotation
        wrapper.__annotations__ = annotations
        return typing.cast(F, wrapper)

    return decorate
