"""Stages 1 and 2: resolve the call, check its arguments, and build the Action Bundle the policy sees.

An argument the caller leaves out is not left for the upstream to fill in: the upstream's input
schema `default`s are applied first (top-level properties, and the properties of nested objects the
caller gave, through local `$ref`s and `allOf`), so what is validated, decided, hashed into the
permit and forwarded is what will run. Defaults under `anyOf`, `oneOf` or `if`/`then` are not
applied (which branch the upstream takes is not known). An argument an operator constraint names
that is still missing then is refused as `schema_violation`: a constraint is a promise about the
value the upstream uses, which the guard cannot see when the upstream picks it.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from referencing.exceptions import Unresolvable

from guard_mcp._canonical import canonical_json, sha256_hex
from guard_mcp._catalog import CatalogEntry
from guard_mcp._errors import ConfigError
from guard_mcp._models import ActionBundle, Actor
from guard_mcp._patterns import PatternError, is_bounded, pattern_budget

__all__ = ["Checked", "Invalid", "build_bundle", "check_arguments", "new_request_id", "with_defaults"]

_MAX_REFS = 32  # `$ref` hops followed for one property: more is a loop
_MAX_DEPTH = 32  # nested objects filled in


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


@dataclass(frozen=True)
class Checked:
    """The arguments as they will be forwarded (defaults filled in), their canonical bytes, and why they
    are refused if they are."""

    arguments: dict[str, Any]
    canonical: bytes
    invalid: Invalid | None = None
    defaulted: tuple[str, ...] = field(default=())  # dotted paths the schema's defaults filled in


def with_defaults(schema: Any, arguments: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """`arguments` with the schema's `default` of every property left out filled in (a deep copy of
    it), recursively into objects; and the dotted paths filled. `arguments` is not changed."""
    filled: list[str] = []
    out = _fill(schema, arguments, schema, (), filled)
    return out, tuple(filled)


def _resolve(schema: Any, root: Any) -> Any:
    """`schema` with a local `$ref` (`#/$defs/Name`, any JSON pointer into the same schema) followed."""
    for _ in range(_MAX_REFS):
        if not isinstance(schema, Mapping):
            return schema
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        target: Any = root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return None
        schema = target
    return None


def _properties(schema: Any, root: Any, depth: int = 0) -> list[tuple[str, Any]]:
    """(name, subschema) of every property `schema` declares, its own and its `allOf` branches' (all apply)."""
    schema = _resolve(schema, root)
    if not isinstance(schema, Mapping) or depth > _MAX_REFS:
        return []
    found: list[tuple[str, Any]] = []
    props = schema.get("properties")
    if isinstance(props, Mapping):
        found.extend((name, sub) for name, sub in props.items() if isinstance(name, str))
    branches = schema.get("allOf")
    if isinstance(branches, list):
        for branch in branches:
            found.extend(_properties(branch, root, depth + 1))
    return found


def _default_of(sub: Any, root: Any) -> tuple[bool, Any]:
    # a `default` beside a `$ref` (how pydantic writes a defaulted model field) wins over the target's
    for candidate in (sub, _resolve(sub, root)):
        if isinstance(candidate, Mapping) and "default" in candidate:
            return True, candidate["default"]
    return False, None


def _fill(schema: Any, value: dict[str, Any], root: Any, path: tuple[str, ...], filled: list[str]) -> dict[str, Any]:
    if len(path) > _MAX_DEPTH:
        return value
    out = dict(value)
    for name, sub in _properties(schema, root):
        if name not in out:
            has, default = _default_of(sub, root)
            if not has:
                continue
            out[name] = copy.deepcopy(default)
            filled.append(".".join((*path, name)))
        if isinstance(out[name], dict):
            out[name] = _fill(sub, out[name], root, (*path, name), filled)
    return out


def check_arguments(entry: CatalogEntry, arguments: Any, max_bytes: int) -> Checked:
    """The arguments as they will run (the schema's defaults filled in) and their canonical bytes, or
    why they are refused."""
    if not isinstance(arguments, dict):
        return Checked({}, b"", Invalid("schema_violation", "arguments must be a JSON object"))
    try:
        arguments, defaulted = with_defaults(entry.upstream_tool.input_schema, arguments)
        canonical = canonical_json(arguments)
    except ConfigError as exc:
        return Checked(
            {}, b"", Invalid("schema_violation", str(exc), "the arguments hold a value JSON cannot carry canonically")
        )
    except RecursionError:
        return Checked({}, b"", Invalid("schema_violation", "the arguments nest too deeply; flatten them"))
    checked = Checked(arguments, canonical, None, defaulted)
    if len(canonical) > max_bytes:
        return replace(
            checked,
            invalid=Invalid(
                "payload_too_large",
                f"arguments are {len(canonical)} bytes; the limit is {max_bytes} (guard.max_argument_bytes)",
            ),
        )
    missing = [arg for arg in entry.schema.constraints if arg not in arguments]
    if missing:
        return replace(
            checked,
            invalid=Invalid(
                "schema_violation",
                f"`{missing[0]}` has a constraint in upstreams.yaml and no default in the tool's "
                "schema, so the upstream would choose its value unseen; pass it explicitly",
            ),
        )
    return replace(checked, invalid=_validate(entry, arguments, defaulted))


def _validate(entry: CatalogEntry, arguments: dict[str, Any], defaulted: tuple[str, ...]) -> Invalid | None:
    validator = entry.validator()
    if validator is None:
        return Invalid("schema_violation", entry.validator_error or "the tool's input schema is invalid")
    try:
        if is_bounded(validator):  # its patterns share one time budget per call
            with pattern_budget():
                error = next(iter(validator.iter_errors(arguments)), None)
        else:
            error = next(iter(validator.iter_errors(arguments)), None)
    except Unresolvable as exc:  # a `$ref` the guard does not fetch (see _patterns.LOCAL_ONLY)
        return Invalid(
            "schema_violation",
            f"the tool's input schema refers to `{str(exc)[:120]}`, "
            "which the guard does not fetch; only references inside the schema resolve",
        )
    except PatternError as exc:
        # a regex that ran out of time (or cannot be used) stops the whole validation: refused
        return Invalid("schema_violation", str(exc)[:300])
    except RecursionError:  # `$ref`s that lead back to themselves (`a` → `b` → `a`), or very deep arguments
        return Invalid(
            "schema_violation",
            "the arguments nest too deeply for the tool's input schema, or "
            "the schema refers to itself without end (a `$ref` loop); flatten the arguments "
            "or fix the schema upstream",
        )
    if error is None:
        return None
    dotted = ".".join(str(p) for p in error.absolute_path)
    where = dotted or "arguments"
    if len(where) > 120:  # the path is made of the caller's own keys: it is not copied whole into the log
        where = where[:120] + "…"
    # jsonschema's message quotes the offending value (`'hunter2' is too short`): the log names the rule
    # it broke instead, which comes from the schema, so a redacted argument stays out of the audit.
    rule = json.dumps(error.validator_value, default=str)
    rule = rule if len(rule) <= 80 else rule[:80] + "…"
    note = ""
    if any(dotted == d or dotted.startswith(d + ".") for d in defaulted):
        note = " (left out, so the tool's schema default applies; pass the argument explicitly)"
    return Invalid(
        "schema_violation",
        f"`{where}`: {error.message[:300]}{note}",
        f"`{where}`: breaks `{error.validator}: {rule}`{note}",
    )


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
        headline=schema.headline,
    )
