"""The catalog of tools the guard exposes: upstream tools, namespaced, with action schemas attached.

A tool is listed only while its definition matches its pin; a changed definition, or a tool an
upstream adds after its first listing, is withheld until a person accepts it. Every string the
guard forwards from an upstream goes through `clean_text` (one set of invisible characters, one
length cap): descriptions, titles, the prose inside input and output schemas, relayed questions.
A string the guard cannot change without changing what it means (a property name, an enum value,
a default, a pattern, a `_meta` key, an icon) and that hides such characters gets the tool
refused instead. The annotations a client sees are derived from the operator's action schema,
never copied from the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
import regex
from jsonschema.protocols import Validator

from guard_mcp._config import GuardConfig
from guard_mcp._models import ActionSchema, Category, Reversibility, Risk
from guard_mcp._naming import SEPARATOR, namespace_tools
from guard_mcp._patterns import prepare
from guard_mcp._pins import PinStore

__all__ = [
    "META_PREFIX",
    "Catalog",
    "CatalogEntry",
    "clean_schema",
    "clean_text",
    "cut_out",
    "derived_annotations",
    "hidden_at",
    "is_clean",
    "one_line",
]

META_PREFIX = "dev.guard-mcp/"
MAX_DESCRIPTION = 8192
MAX_TITLE = 128
MAX_SCHEMA_DEPTH = 64  # deeper than any real schema; past it the tool is refused rather than walked
# What a client shows as nothing, or uses to reorder or hide what follows: every Default_Ignorable_Code_Point
# (zero-width characters, joiners, the bidi marks, embeddings, overrides and isolates, variation selectors,
# the Hangul fillers, the Unicode TAG block U+E0000-E007F that spells hidden ASCII, and the ranges Unicode
# reserves as ignorable), every format character (Cf: the interlinear annotation marks among them), the C0
# and C1 controls but tab and newline (ESC, 8-bit CSI and NEL rewrite a terminal line; CR returns over
# it), lone surrogates, and the line and paragraph separators. The sets come from the `regex` module's
# Unicode tables, not a hand-kept list: a new Unicode version extends them.
_CONTROL = regex.compile(
    r"[[\p{Default_Ignorable_Code_Point}\p{Bidi_Control}\p{Cf}\p{Cc}\p{Cs}\p{Zl}\p{Zp}\U000E0000-\U000E007F]--[\t\n]]",
    regex.V1,
)
# JSON Schema keywords whose value is prose for a person or a model: cleaned like a description.
_SCHEMA_PROSE = {
    "description": MAX_DESCRIPTION,
    "markdownDescription": MAX_DESCRIPTION,
    "$comment": MAX_DESCRIPTION,
    "title": MAX_TITLE,
}
# Keywords whose value is a schema, a list of schemas, or a map of names (of arguments, of definitions) to
# schemas: walked. Every other keyword (`enum`, `const`, `default`, `pattern`, `required`, `format`, `$ref`,
# a vendor's `x-…`) decides what a valid call is, or means what the guard does not know: passed on as it is.
_SCHEMA_ONE = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "contentSchema",
    }
)
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


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
    new: bool = False  # withheld because it appeared after its upstream's first listing
    refused: str | None = None  # why the guard will not serve this definition at all (hidden text)
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
    def unavailable(self) -> tuple[str, str] | None:
        """(reason code, message) when a call of this tool is refused before its arguments are looked at."""
        if self.refused is not None:
            return "tool_refused", (
                f"tool `{self.name}` is not served: its definition has {self.refused}; the upstream has to remove them"
            )
        if self.withheld:
            what = "appeared after its upstream's first listing" if self.new else "changed its definition"
            return "tool_withheld", f"tool `{self.name}` {what} and is withheld until accepted (`guard-mcp tools diff`)"
        return None

    @property
    def prepared(self) -> bool:
        """Whether `validator()` has been built (or found impossible) already."""
        return self._validator is not None or self._validator_error is not None

    @property
    def validator_error(self) -> str | None:
        return self._validator_error


def clean_text(text: str | None, limit: int) -> str:
    """Upstream text as a client may show it: invisible and reordering characters removed, at most
    `limit` characters of it kept, and a cut says so. The one cleaning every upstream string goes
    through before the guard forwards it (`clean_schema` applies it inside schemas)."""
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


def is_clean(text: str) -> bool:
    """Whether `text` holds none of the characters `clean_text` removes."""
    return _CONTROL.search(text) is None


def clean_schema(schema: Any, depth: int = 0) -> Any:
    """A JSON Schema with its prose (`title`, `description`, `$comment`, string `examples`) cleaned, and
    everything else left exactly as it was: property names, `enum`, `const`, `default`, `pattern`,
    `required`, keywords the guard does not know. Cleaning those would serve a different tool than the
    one validated and pinned; `hidden_at` finds what they still hide, and the catalog refuses such a tool.
    Past `MAX_SCHEMA_DEPTH` the rest is returned as it is (and `hidden_at` refuses the tool)."""
    if depth > MAX_SCHEMA_DEPTH or not isinstance(schema, Mapping):
        return schema
    out: dict[Any, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_PROSE and isinstance(value, str):
            out[key] = clean_text(value, _SCHEMA_PROSE[key])
        elif key == "examples" and isinstance(value, list):
            # instances shown as examples: they validate nothing, and a model copies what it reads there
            out[key] = [clean_text(v, MAX_DESCRIPTION) if isinstance(v, str) else v for v in value]
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [clean_schema(item, depth + 1) for item in value]
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            # the names are the arguments (or what `$ref`s point at): kept; a property called `description`
            # holds a schema here, cleaned like any other
            out[key] = {name: clean_schema(sub, depth + 1) for name, sub in value.items()}
        elif key in _SCHEMA_ONE:
            out[key] = clean_schema(value, depth + 1)
        else:
            out[key] = value
    return out


def hidden_at(value: Any, limit: int = MAX_SCHEMA_DEPTH * 2) -> str | None:
    """The JSON path of the first key or string in `value` that holds an invisible character (or that
    nests past `limit`), shown in ASCII and short; None when there is none."""
    for path, problem in _walk_hidden(value, (), limit):
        shown = "".join(f"[{json.dumps(p)}]" if isinstance(p, str) else f"[{p}]" for p in path) or "(top)"
        shown = shown if len(shown) <= 120 else shown[:120] + "…"
        return f"{problem} at `{shown}`"
    return None


def _walk_hidden(value: Any, path: tuple[Any, ...], limit: int) -> Iterator[tuple[tuple[Any, ...], str]]:
    if len(path) > limit:
        yield path, "nested too deeply"
    elif isinstance(value, str):
        if not is_clean(value):
            yield path, "invisible characters"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and not is_clean(key):
                yield (*path, key), "invisible characters in a key"
            yield from _walk_hidden(item, (*path, key), limit)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_hidden(item, (*path, i), limit)


def _clean_values(value: Any, depth: int = 0) -> Any:
    """Every string value in `value` cleaned but not cut (the tool's `_meta`: data for the client, which a
    cut would corrupt), keys kept."""
    if depth > MAX_SCHEMA_DEPTH:
        return value
    if isinstance(value, str):
        return clean_text(value, len(value))
    if isinstance(value, Mapping):
        return {k: _clean_values(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_values(v, depth + 1) for v in value]
    return value


def derived_annotations(schema: ActionSchema, title: str | None) -> types.ToolAnnotations:
    """The hints a client acts on (some skip their own confirmation for a read-only tool), from what the
    operator declared rather than what the upstream says of itself: read-only only for category `read`;
    destructive unless the action is a fully reversible write; idempotence and an open or closed world
    are not claimed (the spec's defaults, not idempotent and open world, are the cautious ones)."""
    if schema.declared and schema.category is Category.READ:
        return types.ToolAnnotations(title=title, read_only_hint=True)
    additive = schema.declared and schema.category is Category.WRITE and schema.reversibility is Reversibility.FULL
    return types.ToolAnnotations(title=title, read_only_hint=False, destructive_hint=not additive)


def cut_out(text: str, values: Iterable[str], mark: str, *, shortest: int) -> str:
    """`text` with each of `values` replaced by `mark`, also where its whitespace was changed, added or
    removed. Longest first, so a value inside another one does not leave the rest of the longer one
    behind. A value counts from `shortest` characters, spaces aside; shorter ones are cut only as
    they are (they would cut words apart)."""
    cores = {v: _visible(v) for v in values}
    for value, core in sorted(cores.items(), key=lambda vc: (len(vc[1]), len(vc[0])), reverse=True):
        if len(core) >= shortest:
            text = regex.sub(_GAP.join(map(regex.escape, core)), lambda _: mark, text, flags=regex.V1)
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
        self._refusals: set[tuple[str, str, str]] = set()  # (upstream, tool, digest) audited as refused

    def update(self, upstream: str, tools: list[types.Tool]) -> list[dict[str, Any]]:
        """Replace one upstream's tools. Returns one audit payload (`event` names its type) for each
        definition that changed or appeared since the upstream's first listing, not recorded before
        (`tool.pin_changed`), and for each definition refused for hidden text (`tool.refused`, once)."""
        changes: list[dict[str, Any]] = []
        names = namespace_tools(upstream, [t.name for t in tools])
        by_original = {t.name: t for t in tools}
        config = self._config.upstreams.get(upstream)
        withhold_new = config is None or config.new_tools == "withhold"
        seen = self._pins.observe_listing(upstream, by_original, self._now(), withhold_new=withhold_new)
        entries: dict[str, CatalogEntry] = {}
        for exposed_name, original in names.items():
            tool = by_original[original]
            observed = seen[original]
            digest = observed.digest
            if observed.changed:
                changes.append(
                    {
                        "event": "tool.pin_changed",
                        "upstream": upstream,
                        "tool": original,
                        "exposed": exposed_name,
                        "hash": digest,
                        **({"new": True} if observed.new else {}),
                    }
                )
            schema = self._config.action_schema(upstream, original)
            if not is_clean(schema.action):
                # an action named after the upstream's own tool name (none configured) would carry what that
                # name hides into the policy, the permit and the summary line: named after the exposed name
                schema = schema.model_copy(
                    update={"action": f"{upstream}.{exposed_name[len(upstream) + len(SEPARATOR) :]}"}
                )
            risk = self._score(schema)
            exposed = self._expose(exposed_name, tool, schema, risk)
            refused = hidden_at(exposed.model_dump(mode="json", by_alias=True, exclude_none=True))
            if refused is not None and (upstream, original, digest) not in self._refusals:
                self._refusals.add((upstream, original, digest))
                changes.append(
                    {
                        "event": "tool.refused",
                        "upstream": upstream,
                        "tool": original,
                        "exposed": exposed_name,
                        "hash": digest,
                        "reason": "hidden_text",
                        "detail": refused,
                    }
                )
            entries[exposed_name] = CatalogEntry(
                name=exposed_name,
                upstream=upstream,
                original=original,
                upstream_tool=tool,
                schema=schema,
                risk=risk,
                digest=digest,
                withheld=not observed.usable,
                exposed=exposed,
                new=observed.new,
                refused=refused,
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
            **_clean_values(upstream_meta),
            META_PREFIX + "action": {
                **schema.model_dump(mode="json", exclude={"constraints", "redact"}),
                "risk": {"score": risk.score, "tier": risk.tier.value},
            },
        }
        description = clean_text(tool.description, MAX_DESCRIPTION)
        summary = _summary(schema, risk)
        title = tool.annotations.title if tool.annotations is not None else None
        return tool.model_copy(
            update={
                "name": name,
                "title": _clean_title(tool.title),
                "description": f"{description}\n\n{summary}" if description else summary,
                "input_schema": clean_schema(tool.input_schema),
                "output_schema": None if tool.output_schema is None else clean_schema(tool.output_schema),
                "annotations": derived_annotations(schema, _clean_title(title)),
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
        return [e.exposed for e in self._by_name.values() if e.unavailable is None]

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._by_name.values(), key=lambda e: e.name)
