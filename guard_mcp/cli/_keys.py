"""`guard-mcp keys …` (the guard's signing keys, the policy signer's key) and `guard-mcp permits inspect`.

Every command works on the state directory a running guard uses, so `keys rotate` in a second
terminal takes effect on the next permit the guard mints, and `<state>/jwks.json` (what local
upstreams verify with) lists a new key before it signs anything.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from guard_mcp._errors import ConfigError, StateError
from guard_mcp._jwk import b64url_decode
from guard_mcp._keys import KeyStore, generate_key_pair
from guard_mcp._state import write_private
from guard_mcp.cli._common import Env, common_options, print_json, print_table
from guard_mcp.cli._record import record
from guard_mcp.verify import MAX_PERMIT_TTL, PermitVerifier

__all__ = ["keys", "permits"]

POLICY_SIGNER = "policy-signer.pem"
POLICY_SIGNER_PUB = "policy-signer.pub.pem"


def _store(env: Env) -> KeyStore:
    return KeyStore(env.state().keys, env.clock, environment=env.config().guard.environment)


def _jwks_path(env: Env) -> Path:
    return env.state().root / "jwks.json"


@click.group()
@common_options
@click.pass_context
def keys(ctx: click.Context, env: Env) -> None:
    """The guard's permit signing keys, and the policy signer's key."""
    ctx.obj = env  # `keys --config X rotate`: the group's options count for its sub-commands


@keys.command()
@click.option("--policy-signer", is_flag=True, help="Make the key that signs policy bundles instead.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for the policy signer's key pair (default: <state>/keys).",
)
@click.option("--force", is_flag=True, help="Replace an existing policy signer key.")
@common_options
def init(env: Env, policy_signer: bool, out_dir: str | None, force: bool) -> None:
    """Create the guard's ES256 signing key (once), or with --policy-signer a policy signing key pair."""
    if out_dir is not None and not policy_signer:
        raise ConfigError("`--out` applies to `--policy-signer` only; the guard's key lives in the state directory")
    if policy_signer:
        _init_policy_signer(env, Path(out_dir) if out_dir else env.state().keys, force)
        return
    store = _store(env)
    existed = store.exists()
    kid = store.ensure()
    store.write_public_jwks(_jwks_path(env))
    if env.as_json:
        print_json({"kid": kid, "created": not existed, "keys": str(store.root), "jwks": str(_jwks_path(env))})
    elif existed:
        env.console.print(f"signing key [bold]{kid}[/] already exists in {store.root}", highlight=False)
    else:
        env.console.print(f"created signing key [bold]{kid}[/] in {store.root} (private, 0600)", highlight=False)
        env.console.print(f"public keys: {_jwks_path(env)}", highlight=False)


def _init_policy_signer(env: Env, out: Path, force: bool) -> None:
    private, public = out / POLICY_SIGNER, out / POLICY_SIGNER_PUB
    if private.exists() and not force:
        raise ConfigError(
            f"policy signer key `{private}` already exists; pass `--force` to replace it (bundles signed with "
            "it will no longer verify once its public key is replaced)"
        )
    _, private_pem, public_pem = generate_key_pair()
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(private, private_pem)
        public.write_bytes(public_pem)
    except OSError as exc:
        raise StateError(f"cannot write the policy signer key to `{out}`: {exc.strerror}") from None
    if env.as_json:
        print_json({"private_key": str(private), "public_key": str(public)})
    else:
        env.console.print(f"policy signer key: {private} (private, 0600)", highlight=False)
        env.console.print(f"public key:        {public}", highlight=False)
        env.console.print("list the public key under `guard.trusted_policy_keys` in upstreams.yaml", highlight=False)


@keys.command()
@click.option(
    "--max-permit-ttl",
    type=click.IntRange(min=1),
    default=MAX_PERMIT_TTL,
    show_default=True,
    help="Seconds the old key stays published: the longest a permit it signed can still live.",
)
@common_options
def rotate(env: Env, max_permit_ttl: int) -> None:
    """Make a new signing key; the old one verifies its permits until they have expired."""
    store = _store(env)
    new, old = store.rotate(max_permit_ttl, publish_to=_jwks_path(env))
    if env.as_json:
        print_json({"kid": new, "retired": old, "jwks": str(_jwks_path(env))})
    else:
        env.console.print(f"new signing key [bold]{new}[/]", highlight=False)
        if old:
            env.console.print(
                f"{old} no longer signs; it stays published for {max_permit_ttl}s plus a margin", highlight=False
            )
    record(env, "key.rotated", {"kid": new, "retired": old}, done=f"rotated to {new}")


@keys.command("list")
@common_options
def list_(env: Env) -> None:
    """The permit signing keys: which one signs, which retired ones are still published, and until when."""
    rows = _store(env).describe()
    if env.as_json:
        print_json(rows)
        return
    if not rows:
        env.console.print("no signing key yet; `guard-mcp keys init` makes one (the guard does at its first start)")
        return
    print_table(
        env,
        ["kid", "state", "created", "published until", "environment"],
        [
            [
                r["kid"],
                r["state"],
                _utc(r["created"]),
                _utc(r["publish_until"]) if r["publish_until"] else "",
                r["environment"] or "",
            ]
            for r in rows
        ],
    )


def _utc(ts: Any) -> str:
    return "" if not isinstance(ts, int | float) else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@keys.command()
@common_options
def jwks(env: Env) -> None:
    """Print the public keys (JWKS) upstreams verify permits with."""
    print_json(_store(env).jwks())


# ------------------------------------------------------------------------------------------ permits


@click.group()
@common_options
@click.pass_context
def permits(ctx: click.Context, env: Env) -> None:
    """Look inside permits."""
    ctx.obj = env  # `permits --config X inspect TOKEN`: the group's options count for its sub-commands


def _decode_part(token: str, index: int) -> dict[str, Any] | None:
    parts = token.split(".")
    raw = b64url_decode(parts[index]) if len(parts) == 3 else None
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _when(ts: Any, now: float) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return repr(ts)
    try:
        stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):  # the token's claims are not trusted: any number may come
        return f"{ts!r} (not a date)"
    delta = int(ts - now)
    rel = f"in {delta}s" if delta > 0 else (f"{-delta}s ago" if delta < 0 else "now")
    return f"{stamp} ({rel})"


@permits.command()
@click.argument("token")
@common_options
def inspect(env: Env, token: str) -> None:
    """Decode a permit and check it against this guard's keys (`-` reads it from stdin).

    Checks the signature, key, issuer, environment and validity window; the audience, action and
    arguments are for the upstream to check. Exits 1 when the permit is not valid.
    """
    if token == "-":  # noqa: S105 (the conventional name for stdin, not a secret)
        token = sys.stdin.read()
    token = token.strip()
    cfg = env.config().guard
    store = _store(env)
    clock = env.clock
    verifier = PermitVerifier(
        store.jwks(), issuer=cfg.permits.issuer, audience="", environment=cfg.environment, clock=clock
    )
    result = verifier.inspect(token)
    header, claims = _decode_part(token, 0), _decode_part(token, 1)
    if env.as_json:
        print_json({"valid": result.valid, "reason": result.reason, "header": header, "claims": claims})
    else:
        _show(env, header, claims, result.valid, result.reason, clock.now())
    if not result.valid:
        sys.exit(1)


def _show(
    env: Env, header: dict[str, Any] | None, claims: dict[str, Any] | None, valid: bool, reason: str | None, now: float
) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    if header is not None:
        table.add_row("key", Text(str(header.get("kid"))))
        table.add_row("algorithm", Text(str(header.get("alg"))))
    for name, value in (claims or {}).items():
        shown = _when(value, now) if name in ("iat", "nbf", "exp") else str(value)
        table.add_row(name, Text(shown))
    if header is not None or claims is not None:
        env.console.print(table)
    if valid:
        env.console.print("[bold green]valid[/] (signature, issuer, environment, time)", highlight=False)
    else:
        env.console.print(f"[bold red]invalid:[/] {reason}", highlight=False)
