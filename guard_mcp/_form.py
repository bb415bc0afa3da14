"""What an upstream may put in front of the user: a relayed prompt's message and its form.

Both are hostile text from the upstream. The message is stripped like a tool description (no
invisible or reordering characters, a length cap) and opens with the upstream's name, so it cannot
pass for the guard's own approval prompt. The form is rebuilt from the keywords MCP form mode
defines (a flat object of strings, numbers, booleans and enums) and nothing else reaches the
client; a nested or oversized form is refused whole rather than trimmed into a different question.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from guard_mcp._catalog import clean_text

__all__ = ["MAX_FORM_BYTES", "MAX_MESSAGE", "Form", "check_form", "relayed_message"]

MAX_MESSAGE = 2000
MAX_FORM_BYTES = 16 * 1024
MAX_FIELDS = 32
MAX_OPTIONS = 100
MAX_TITLE = 200
MAX_DESCRIPTION = 1000
MAX_VALUE = 256  # an enum value or const: it travels back to the upstream, so it is refused, never cut
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_FORMATS = frozenset({"email", "uri", "date", "date-time"})
_BLANK_LINES = re.compile(r"\n\s*\n(?:\s*\n)+")


class _Refused(Exception):
    """A form the guard will not show; the message is the guard's own words (safe to audit)."""


@dataclass(frozen=True)
class Form:
    """A form as the client will see it: rebuilt, its text cleaned, its field names checked."""

    schema: dict[str, Any]
    fields: tuple[str, ...]


def relayed_message(upstream: str, message: str) -> str:
    """The upstream's question under its name. Upstream names are config-checked identifiers."""
    text = _BLANK_LINES.sub("\n\n", clean_text(message, MAX_MESSAGE)).strip()
    return f"`{upstream}` asks: {text}"


def check_form(schema: Any) -> Form | str:
    """The form to show, or why it is refused (a short phrase in the guard's words)."""
    try:
        size = len(json.dumps(schema, ensure_ascii=False))
    except (TypeError, ValueError):
        return "the form is not JSON"
    if size > MAX_FORM_BYTES:
        return f"the form is {size} bytes; the limit is {MAX_FORM_BYTES}"
    try:
        return _form(schema)
    except _Refused as exc:
        return str(exc)


def _form(schema: Any) -> Form:
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise _Refused("the form is not an object")
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise _Refused("the form's properties are not a mapping")
    if len(properties) > MAX_FIELDS:
        raise _Refused(f"the form has {len(properties)} fields; the limit is {MAX_FIELDS}")
    fields: dict[str, Any] = {}
    for name, prop in properties.items():
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise _Refused("a field name is not a plain identifier")
        if not isinstance(prop, Mapping):
            raise _Refused(f"field `{name}` is not a schema")
        fields[name] = _field(name, prop)
    out: dict[str, Any] = {"type": "object", "properties": fields}
    required = schema.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _Refused("the form's required list is not a list of names")
        out["required"] = [r for r in dict.fromkeys(required) if r in fields]
    _text(out, schema, "title", MAX_TITLE)
    _text(out, schema, "description", MAX_DESCRIPTION)
    return Form(out, tuple(fields))


def _field(name: str, prop: Mapping[str, Any]) -> dict[str, Any]:
    kind = prop.get("type")
    if kind == "string":
        out = _string(name, prop)
    elif kind in ("number", "integer"):
        out = {"type": kind}
        for key in ("minimum", "maximum", "default"):
            _copy(out, prop, key, _is_number, name)
    elif kind == "boolean":
        out = {"type": "boolean"}
        _copy(out, prop, "default", lambda v: isinstance(v, bool), name)
    elif kind == "array":
        out = _multi_select(name, prop)
    else:  # objects, arrays of anything but choices, `$ref`s, type lists: not a flat form
        raise _Refused(f"field `{name}` is not a string, number, boolean or list of choices")
    _text(out, prop, "title", MAX_TITLE)
    _text(out, prop, "description", MAX_DESCRIPTION)
    return out


def _string(name: str, prop: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if "enum" in prop:
        out["enum"] = _values(name, prop["enum"])
        if "enumNames" in prop:
            labels = prop["enumNames"]
            if not isinstance(labels, list) or len(labels) != len(out["enum"]):
                raise _Refused(f"field `{name}` has enumNames that do not match its choices")
            out["enumNames"] = [_label(name, label) for label in labels]
    elif "oneOf" in prop:
        out["oneOf"] = _titled(name, prop["oneOf"], "oneOf")
    else:
        for key in ("minLength", "maxLength"):
            _copy(out, prop, key, _is_count, name)
        fmt = prop.get("format")
        if fmt in _FORMATS:
            out["format"] = fmt
    default = prop.get("default")
    if default is not None:
        if not isinstance(default, str):
            raise _Refused(f"field `{name}` has a default that is not a string")
        out["default"] = clean_text(default, MAX_DESCRIPTION)
    return out


def _multi_select(name: str, prop: Mapping[str, Any]) -> dict[str, Any]:
    items = prop.get("items")
    if not isinstance(items, Mapping):
        raise _Refused(f"field `{name}` is a list without choices")
    if items.get("type") == "string" and "enum" in items:
        choices: dict[str, Any] = {"type": "string", "enum": _values(name, items["enum"])}
    elif "anyOf" in items:
        choices = {"anyOf": _titled(name, items["anyOf"], "anyOf")}
    else:
        raise _Refused(f"field `{name}` is a list without choices")
    out: dict[str, Any] = {"type": "array", "items": choices}
    for key in ("minItems", "maxItems"):
        _copy(out, prop, key, _is_count, name)
    default = prop.get("default")
    if default is not None:
        allowed = choices.get("enum") or [c["const"] for c in choices["anyOf"]]
        if not isinstance(default, list) or not all(d in allowed for d in default):
            raise _Refused(f"field `{name}` has a default that is not among its choices")
        out["default"] = list(default)
    return out


def _values(name: str, values: Any) -> list[str]:
    if not isinstance(values, list) or not values or len(values) > MAX_OPTIONS:
        raise _Refused(f"field `{name}` needs 1 to {MAX_OPTIONS} choices")
    for v in values:
        if not isinstance(v, str) or len(v) > MAX_VALUE or clean_text(v, MAX_VALUE) != v:
            raise _Refused(f"field `{name}` has a choice that is not short plain text")
    return list(values)


def _titled(name: str, options: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(options, list) or not all(isinstance(o, Mapping) for o in options):
        raise _Refused(f"field `{name}` has {key} entries that are not choices")
    values = _values(name, [o.get("const") for o in options])
    return [{"const": v, "title": _label(name, o.get("title", v))} for v, o in zip(values, options, strict=True)]


def _label(name: str, text: Any) -> str:
    if not isinstance(text, str):
        raise _Refused(f"field `{name}` has a choice label that is not text")
    return clean_text(text, MAX_TITLE)


def _text(out: dict[str, Any], source: Mapping[str, Any], key: str, limit: int) -> None:
    value = source.get(key)
    if isinstance(value, str):
        out[key] = clean_text(value, limit)


def _copy(out: dict[str, Any], source: Mapping[str, Any], key: str, ok: Callable[[Any], bool], name: str) -> None:
    if key in source:
        if not ok(source[key]):
            raise _Refused(f"field `{name}` has a `{key}` of the wrong type")
        out[key] = source[key]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
