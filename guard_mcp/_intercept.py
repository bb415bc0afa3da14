"""Stages 1 and 2: resolve the call, check its arguments, and build the Action Bundle the policy sees."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from referencing.exceptions import Unresolvable

from guard_mcp._canonical import canonical_json, sha256_hex
from guard_mcp._catalog import CatalogEntry
from guard_mcp._errors import ConfigError
from guard_mcp._models import ActionBundle, Actor
from guard_mcp._patterns import PatternError, is_bounded, pattern_budget

__all__ = ["Invalid", "build_bundle", "check_arguments", "new_request_id"]


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Invalid:
    reason: str
    message: str  # to the caller, who sent the arguments: it may quote a value
    logged: str | None = None  # to the audit log, when `message` may quote a value (a redacted one, say)

    @property
    def for_log(self) -> str:
        return self.message if self.logged is None else self.logged


def check_arguments(entry: CatalogEntry, arguments: Any, max_bytes: int) -> tuple[bytes, Invalid | None]:
    """Return the canonical bytes of the arguments, or why they are refused."""
    if not isinstance(arguments, dict):
        return b"", Invalid("schema_violation", "arguments must be a JSON object")
    try:
        canonical = canonical_json(arguments)
    except ConfigError as exc:
        return b"", Invalid("schema_violation", str(exc), "the arguments hold a value JSON cannot carry canonically")
    if len(canonical) > max_bytes:
        return canonical, Invalid(
            "payload_too_large", f"arguments are {len(canonical)} bytes; the limit is {max_bytes} (guard.max_argument_bytes)"
        )
    validator = entry.validator()
    if validator is None:
        return canonical, Invalid("schema_violation", entry.validator_error or "the tool's input schema is invalid")
    try:
        if is_bounded(validator):  # its patterns share one time budget per call
            with pattern_budget():
                error = next(iter(validator.iter_errors(arguments)), None)
        else:
            error = next(iter(validator.iter_errors(arguments)), None)
    except Unresolvable as exc:  # a `$ref` the guard does not fetch (see _patterns.LOCAL_ONLY)
        return canonical, Invalid("schema_violation", f"the tool's input schema refers to `{str(exc)[:120]}`, "
                                  "which the guard does not fetch; only references inside the schema resolve")
    except PatternError as exc:
        # a regex that ran out of time (or cannot be used) stops the whole validation: refused
        return canonical, Invalid("schema_violation", str(exc)[:300])
    except RecursionError:  # `$ref`s that lead back to themselves (`a` → `b` → `a`), or very deep arguments
        return canonical, Invalid("schema_violation", "the arguments nest too deeply for the tool's input schema, or "
                                  "the schema refers to itself without end (a `$ref` loop); flatten the arguments "
                                  "or fix the schema upstream")
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "arguments"
        if len(where) > 120:  # the path is made of the caller's own keys: it is not copied whole into the log
            where = where[:120] + "…"
        # jsonschema's message quotes the offending value (`'hunter2' is too short`): the log names the rule
        # it broke instead, which comes from the schema, so a redacted argument stays out of the audit.
        rule = json.dumps(error.validator_value, default=str)
        rule = rule if len(rule) <= 80 else rule[:80] + "…"
        return canonical, Invalid("schema_violation", f"`{where}`: {error.message[:300]}",
                                  f"`{where}`: breaks `{error.validator}: {rule}`")
    return canonical, None


def build_bundle(
    entry: CatalogEntry,
    arguments: dict[str, Any],
    canonical: bytes,
    *,
    request_id: str,
    actor: Actor,
    environment: str,
) -> ActionBundle:
    schema = entry.schema
    resource = None
    if schema.resource is not None and schema.resource in arguments:
        value = arguments[schema.resource]
        resource = value if isinstance(value, str) else canonical_json(value).decode()
    return ActionBundle(
        request_id=request_id,
        action=schema.action,
        upstream=entry.upstream,
        tool=entry.original,
        actor=actor,
        arguments=arguments,
        payload_hash="sha256:" + sha256_hex(canonical),
        resource=resource,
        category=schema.category,
        reversibility=schema.reversibility,
        blast_radius=schema.blast_radius,
        sensitivity=schema.sensitivity,
        environment=environment,
    )
