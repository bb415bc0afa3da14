"""Proposed action schemas for tools nobody has described yet (`guard-mcp import`).

A proposal is read off what the upstream says about a tool: its name, its annotations
(`readOnlyHint`, `destructiveHint`, `idempotentHint`) and its input schema. The MCP spec calls
annotations untrusted, and a name is only a word, so neither decides anything here: every field
carries the reason it was chosen, the whole proposal is written with `proposed: true`, and the guard
serves the tool as `unknown` until a person accepts it (`guard-mcp tools review`). Where the hints
disagree, the riskier reading wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from guard_mcp._catalog import one_line
from guard_mcp._models import BlastRadius, Category, Reversibility, Sensitivity

__all__ = ["Proposal", "action_name", "propose"]

# Words of a tool's name that suggest what it does, riskiest first. Any word of the name counts, not
# only the first: `list_roles` is proposed as `permission`, and a person lowers it if it only reads.
_WORDS: tuple[tuple[Category, frozenset[str]], ...] = (
    (
        Category.PERMISSION,
        frozenset(
            {
                "grant",
                "revoke",
                "role",
                "roles",
                "permission",
                "permissions",
                "invite",
                "share",
                "chmod",
                "chown",
                "acl",
                "admin",
            }
        ),
    ),
    (
        Category.FINANCIAL,
        frozenset(
            {
                "pay",
                "payment",
                "payout",
                "refund",
                "charge",
                "invoice",
                "transfer",
                "purchase",
                "buy",
                "checkout",
                "billing",
                "subscription",
            }
        ),
    ),
    (
        Category.DESTRUCTIVE,
        frozenset(
            {
                "delete",
                "remove",
                "drop",
                "destroy",
                "purge",
                "truncate",
                "wipe",
                "rm",
                "kill",
                "erase",
                "reset",
                "terminate",
                "overwrite",
            }
        ),
    ),
    (
        Category.COMMUNICATE,
        frozenset(
            {
                "send",
                "email",
                "mail",
                "message",
                "notify",
                "reply",
                "publish",
                "post",
                "tweet",
                "comment",
                "sms",
                "chat",
                "broadcast",
            }
        ),
    ),
    (
        Category.WRITE,
        frozenset(
            {
                "write",
                "create",
                "update",
                "edit",
                "set",
                "add",
                "put",
                "move",
                "rename",
                "copy",
                "upload",
                "save",
                "insert",
                "patch",
                "append",
                "mkdir",
                "make",
                "run",
                "exec",
                "execute",
                "toggle",
                "start",
                "stop",
                "deploy",
                "merge",
                "push",
                "commit",
                "close",
                "open",
                "gzip",
                "compress",
                "trigger",
                "simulate",
            }
        ),
    ),
    (
        Category.READ,
        frozenset(
            {
                "get",
                "read",
                "list",
                "search",
                "find",
                "fetch",
                "query",
                "view",
                "show",
                "describe",
                "lookup",
                "look",
                "inspect",
                "stat",
                "info",
                "count",
                "tree",
                "echo",
                "download",
                "browse",
                "check",
                "status",
            }
        ),
    ),
)
_RISK_ORDER = [
    Category.READ,
    Category.WRITE,
    Category.COMMUNICATE,
    Category.DESTRUCTIVE,
    Category.FINANCIAL,
    Category.PERMISSION,
]
_REVERSIBILITY = {
    Category.READ: (Reversibility.FULL, "a read changes nothing"),
    Category.WRITE: (Reversibility.PARTIAL, "a write can often be undone, not always"),
    Category.COMMUNICATE: (Reversibility.NONE, "a message sent cannot be unsent"),
    Category.DESTRUCTIVE: (Reversibility.NONE, "what is deleted or overwritten is gone"),
    Category.FINANCIAL: (Reversibility.NONE, "money moved is not moved back by the tool"),
    Category.PERMISSION: (Reversibility.PARTIAL, "access granted can be revoked, what was done with it not"),
    Category.UNKNOWN: (Reversibility.NONE, "nothing says what it does"),
}
# Argument names that usually say what a call acts on, best first.
_RESOURCE_NAMES = (
    "path",
    "paths",
    "file",
    "filename",
    "file_path",
    "filepath",
    "uri",
    "url",
    "to",
    "recipient",
    "email",
    "customer_id",
    "user_id",
    "user",
    "account",
    "repo",
    "repository",
    "id",
    "key",
    "name",
    "source",
    "destination",
    "target",
    "resource",
    "resourceId",
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


@dataclass(frozen=True)
class Proposal:
    """One tool's proposed action schema: each field with the reason it was chosen."""

    tool: str
    fields: dict[str, str]
    why: dict[str, str]
    summary: str = ""  # the upstream's description, one short line
    notes: list[str] = field(default_factory=list)


def action_name(upstream: str, tool: str) -> str:
    """`upstream.tool` in the dotted lower-case words an action name must be."""

    def part(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "tool"

    return f"{part(upstream)}.{part(tool)}"


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def _riskier(a: Category, b: Category) -> Category:
    return a if _RISK_ORDER.index(a) >= _RISK_ORDER.index(b) else b


def _category(tool: types.Tool) -> tuple[Category, str]:
    words = _words(tool.name)
    named: Category | None = None
    named_word = ""
    for category, vocabulary in _WORDS:  # riskiest first: the first hit is the riskiest
        hit = next((w for w in words if w in vocabulary), None)
        if hit is not None:
            named, named_word = category, hit
            break
    hints = tool.annotations
    hinted: Category | None = None
    hint_text = ""
    if hints is not None:
        if hints.destructive_hint and not hints.read_only_hint:
            hinted, hint_text = Category.DESTRUCTIVE, "the upstream says destructive (destructiveHint)"
        elif hints.read_only_hint:
            hinted, hint_text = Category.READ, "the upstream says read-only (readOnlyHint)"
        elif hints.read_only_hint is False and hints.destructive_hint is None:
            # the spec's default for a tool that is not read-only: it may be destructive
            hinted, hint_text = (
                Category.DESTRUCTIVE,
                "the upstream says it is not read-only and not that it is harmless",
            )
        elif hints.read_only_hint is False:
            hinted, hint_text = (
                Category.WRITE,
                "the upstream says it writes but does not destroy (destructiveHint: false)",
            )
    name_text = f"the name has `{named_word}`" if named is not None else ""
    if named is None and hinted is None:
        return Category.UNKNOWN, "nothing in the name or the annotations says what it does; choose one"
    if named is None or hinted is None:
        chosen = named or hinted
        assert chosen is not None
        return chosen, name_text or hint_text
    if named == hinted:
        return named, f"{name_text}; {hint_text}"
    chosen = _riskier(named, hinted)
    return chosen, f"{name_text}, {hint_text}: the riskier reading"


def _resource(schema: dict[str, Any]) -> tuple[str | None, bool, str]:
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return None, False, "it takes no arguments"
    required = [p for p in schema.get("required") or [] if isinstance(p, str) and p in props]
    lowered = {p.lower(): p for p in props}
    for wanted in _RESOURCE_NAMES:
        name = lowered.get(wanted.lower())
        if name is not None:
            kind = props[name].get("type") if isinstance(props[name], dict) else None
            return name, kind == "array", f"the input schema's `{name}` argument names what the call acts on"
    ids = [p for p in props if p.lower().endswith(("_id", "id")) and len(p) > 2]
    if ids:
        return ids[0], False, f"`{ids[0]}` looks like the identifier the call acts on"
    if required:
        return None, False, "no argument clearly names what it acts on; set one if an argument does"
    return None, False, "no argument clearly names what it acts on"


# Resource arguments that name a recipient: "Send email to {to}".
_RECIPIENTS = frozenset({"to", "recipient", "email"})
_ARGUMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def _headline(name: str, resource: str | None) -> tuple[str, str]:
    """An approval's headline from the tool's name and the argument it acts on: `write_file` with `path`
    reads "Write file {path}". Only the name's letters and digits are used, so nothing the upstream
    chose can break the template."""
    words = _words(name) or ["call", "tool"]
    text = " ".join(words).capitalize()
    if resource is None or not _ARGUMENT.fullmatch(resource):
        return text, "the tool's name; write it as you would say it (`{argument}` shows an argument's value)"
    joined = f"{text} to {{{resource}}}" if resource.lower() in _RECIPIENTS else f"{text} {{{resource}}}"
    return joined, f"the tool's name and `{resource}`; write it as you would say it (`{{argument}}` shows a value)"


def propose(upstream: str, tool: types.Tool) -> Proposal:
    category, why_category = _category(tool)
    reversibility, why_reversibility = _REVERSIBILITY[category]
    if category == Category.WRITE and tool.annotations is not None and tool.annotations.idempotent_hint:
        why_reversibility += " (the upstream says repeating it changes nothing more: idempotentHint)"
    resource, many, why_resource = _resource(dict(tool.input_schema or {}))
    if many:
        blast, why_blast = BlastRadius.MANY, f"`{resource}` is a list: one call acts on several things"
    elif resource is not None:
        blast, why_blast = BlastRadius.SINGLE, f"one `{resource}` per call"
    elif category == Category.READ:
        blast, why_blast = BlastRadius.SINGLE, "a guess: a read with no named target"
    else:
        blast, why_blast = BlastRadius.MANY, "a guess: nothing names what it acts on"
    if category in (Category.FINANCIAL, Category.PERMISSION):
        sensitivity, why_sensitivity = Sensitivity.CONFIDENTIAL, f"{category.value} data is rarely public"
    elif category == Category.COMMUNICATE:
        sensitivity, why_sensitivity = Sensitivity.CONFIDENTIAL, "a message carries what it says to someone else"
    else:
        sensitivity = Sensitivity.INTERNAL
        why_sensitivity = (
            "a guess: nothing says how private the data is; raise it for personal data, credentials or money"
        )
    fields = {
        "action": action_name(upstream, tool.name),
        "category": category.value,
        "reversibility": reversibility.value,
        "blast_radius": blast.value,
        "sensitivity": sensitivity.value,
    }
    why = {
        "action": "from the upstream's and the tool's names; permits are bound to it",
        "category": why_category,
        "reversibility": why_reversibility,
        "blast_radius": why_blast,
        "sensitivity": why_sensitivity,
    }
    if resource is not None:
        fields["resource"] = resource
        why["resource"] = why_resource
    fields["headline"], why["headline"] = _headline(tool.name, None if many else resource)
    summary = one_line(tool.description or tool.title or "", 100)
    return Proposal(tool=tool.name, fields=fields, why=why, summary=summary)
