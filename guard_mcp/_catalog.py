"""The catalog of tools the guard exposes: upstream tools, namespaced, with action schemas attached.

A tool is listed only while its definition matches its pin; a changed definition is withheld
until a person accepts it. Descriptions reach the client with control characters removed and a
length cap, followed by one line that says what the action is and how risky; titles as one short line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from jsonschema.protocols import Validator

from guard_mcp._config import GuardConfig
from guard_mcp._models import ActionSchema, Risk
from guard_mcp._naming import namespace_tools
from guard_mcp._patterns import prepare
from guard_mcp._pins import PinStore, definition_hash, tool_definition

__all__ = ["META_PREFIX", "Catalog", "CatalogEntry", "clean_text", "cut_out", "one_line"]

META_PREFIX = "dev.guard-mcp/"
MAX_DESCRIPTION = 8192
MAX_TITLE = 128
# C0 controls but tab and newline, DEL, the C1 controls (8-bit CSI, NEL, …), zero-width characters, bidi
# marks, embeddings, overrides and isolates, line and paragraph separators, word joiners and invisible
# operators, the BOM.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


@dataclass
class CatalogEntry:
    name: str
    upstream: str
    original: str
    upstream_tool: types.Tool
    schema: ActionSchema
    risk: Risk
    digest: str
    withheld: bool
    exposed: types.Tool
    _validator: Validator | None = field(default=None, repr=False)
    _validator_error: str | None = field(default=None, repr=False)

    def validator(self) -> Validator | None:
        """The input schema merged with the operator's constraints, compiled once. Its patterns are
        vetted in a child process the first time (see `_patterns`): may take a moment, off the event loop
        where it can (`prepared`)."""
        if self._validator is None and self._validator_error is None:
            schema = dict(self.upstream_tool.input_schema or {"type": "object"})
            if self.schema.constraints:
                props = dict(schema.get("properties") or {})
                for arg, extra in self.schema.constraints.items():
                    base = props.get(arg, {})
                    props[arg] = {"allOf": [base, extra]} if base else extra
                schema["properties"] = props
            validator, problem = prepare(schema)
            if validator is not None:
                self._validator = validator
            else:
                self._validator_error = f"tool `{self.name}` has an invalid input schema: {problem}"
        return self._validator

    @property
    def prepared(self) -> bool:
        """Whether `validator()` has been built (or found impossible) already."""
        return self._validator is not None or self._validator_error is not None

    @property
    def validator_error(self) -> str | None:
        return self._validator_error


def clean_text(text: str | None, limit: int) -> str:
    """Upstream text as a client may show it: invisible and reordering characters removed, at most
    `limit` characters of it kept, and a cut says so."""
    text = _CONTROL.sub("", text or "")
    if len(text) > limit:
        text = text[:limit] + " [… truncated by guard-mcp]"
    return text


# Between two characters of a value, what an echo may have changed: whitespace (`one_line` collapses it,
# an upstream may reflow it) and the invisible characters `one_line` drops. Possessive: the next
# character is neither, so the gap never has to give back what it took.
_GAP = rf"(?:\s|{_CONTROL.pattern})*+"


def _visible(value: str) -> str:
    return "".join(_CONTROL.sub("", value).split())


def cut_out(text: str, values: Iterable[str], mark: str, *, shortest: int) -> str:
    """`text` with each of `values` replaced by `mark`, also where its whitespace was changed, added or
    removed. Longest first, so a value inside another one does not leave the rest of the longer one
    behind. A value counts from `shortest` characters, spaces aside; shorter ones are cut only as
    they are (they would cut words apart)."""
    cores = {v: _visible(v) for v in values}
    for value, core in sorted(cores.items(), key=lambda vc: (len(vc[1]), len(vc[0])), reverse=True):
        if len(core) >= shortest:
            text = re.sub(_GAP.join(map(re.escape, core)), lambda _: mark, text)
        elif len(value) >= shortest:
            text = text.replace(value, mark)
    return text


def one_line(text: str, limit: int) -> str:
    """Upstream text as one short line: invisible and reordering characters removed, line breaks and
    runs of spaces made one space, cut at `limit` with an ellipsis."""
    text = " ".join(_CONTROL.sub("", text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _clean_title(text: str | None) -> str | None:
    return None if text is None else one_line(text, MAX_TITLE)


def _summary(schema: ActionSchema, risk: Risk) -> str:
    declared = "" if schema.declared else " (no action schema configured)"
    return (
        f"[guard-mcp] {schema.action} · {schema.category.value} · {risk.tier.value} risk ({risk.score}) · "
        f"reversibility {schema.reversibility.value} · reach {schema.blast_radius.value}{declared}"
    )


class Catalog:
    def __init__(
        self, config: GuardConfig, pins: PinStore, score: Callable[[ActionSchema], Risk], now: Callable[[], float]
    ) -> None:
        self._config = config
        self._pins = pins
        self._score = score
        self._now = now
        self._by_upstream: dict[str, dict[str, CatalogEntry]] = {}
        self._by_name: dict[str, CatalogEntry] = {}

    def update(self, upstream: str, tools: list[types.Tool]) -> list[dict[str, Any]]:
        """Replace one upstream's tools. Returns audit payloads for definitions that changed."""
        changes: list[dict[str, Any]] = []
        names = namespace_tools(upstream, [t.name for t in tools])
        by_original = {t.name: t for t in tools}
        entries: dict[str, CatalogEntry] = {}
        for exposed_name, original in names.items():
            tool = by_original[original]
            definition = tool_definition(tool)
            digest = definition_hash(definition)
            usable, changed = self._pins.observe(upstream, original, definition, self._now())
            if changed:
                changes.append({"upstream": upstream, "tool": original, "exposed": exposed_name, "hash": digest})
            schema = self._config.action_schema(upstream, original)
            risk = self._score(schema)
            entries[exposed_name] = CatalogEntry(
                name=exposed_name,
                upstream=upstream,
                original=original,
                upstream_tool=tool,
                schema=schema,
                risk=risk,
                digest=digest,
                withheld=not usable,
                exposed=self._expose(exposed_name, tool, schema, risk),
            )
        self._by_upstream[upstream] = entries
        self._reindex()
        return changes

    def remove(self, upstream: str) -> None:
        self._by_upstream.pop(upstream, None)
        self._reindex()

    def _reindex(self) -> None:
        self._by_name = {n: e for entries in self._by_upstream.values() for n, e in entries.items()}

    def _expose(self, name: str, tool: types.Tool, schema: ActionSchema, risk: Risk) -> types.Tool:
        upstream_meta = {k: v for k, v in (tool.meta or {}).items() if not k.startswith(META_PREFIX)}
        meta = {
            **upstream_meta,
            META_PREFIX + "action": {
                **schema.model_dump(mode="json", exclude={"constraints", "redact"}),
                "risk": {"score": risk.score, "tier": risk.tier.value},
            },
        }
        description = clean_text(tool.description, MAX_DESCRIPTION)
        summary = _summary(schema, risk)
        annotations = tool.annotations
        if annotations is not None and annotations.title is not None:
            annotations = annotations.model_copy(update={"title": _clean_title(annotations.title)})
        return tool.model_copy(
            update={
                "name": name,
                "title": _clean_title(tool.title),
                "description": f"{description}\n\n{summary}" if description else summary,
                "annotations": annotations,
                "meta": meta,
            }
        )

    def recheck_withheld(self) -> bool:
        """Release tools whose pending definition has been accepted since (possibly by another process)."""
        changed = False
        for entry in self._by_name.values():
            if entry.withheld and self._pins.is_usable(entry.upstream, entry.original, entry.digest):
                entry.withheld = False
                changed = True
        return changed

    def lookup(self, name: str) -> CatalogEntry | None:
        return self._by_name.get(name)

    def listed(self) -> list[types.Tool]:
        return [e.exposed for e in self._by_name.values() if not e.withheld]

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._by_name.values(), key=lambda e: e.name)
