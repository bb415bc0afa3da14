"""Which forms an upstream may put in front of the user, and how they are rebuilt (guard_mcp/_form.py)."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from mcp.server.elicitation import render_elicitation_schema
from pydantic import BaseModel

from guard_mcp._form import MAX_FORM_BYTES, Form, check_form, relayed_message

# One field of every kind MCP form mode defines (spec 2025-11-25, PrimitiveSchemaDefinition).
EVERY_KIND: dict[str, Any] = {
    "type": "object",
    "title": "Order",
    "properties": {
        "email": {"type": "string", "format": "email", "minLength": 3, "maxLength": 80, "default": "a@b.c"},
        "qty": {"type": "integer", "minimum": 1, "maximum": 9, "default": 1},
        "price": {"type": "number", "minimum": 0.5},
        "gift": {"type": "boolean", "default": False, "description": "Wrap it"},
        "size": {"type": "string", "enum": ["S", "M"], "default": "M"},
        "legacy": {"type": "string", "enum": ["a", "b"], "enumNames": ["Option A", "Option B"]},
        "colour": {"type": "string", "oneOf": [{"const": "r", "title": "Red"}, {"const": "g", "title": "Green"}]},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}, "minItems": 1, "default": ["x"]},
        "extras": {"type": "array", "items": {"anyOf": [{"const": "w", "title": "Warranty"}]}, "maxItems": 1},
    },
    "required": ["email", "size"],
}


def test_every_kind_of_field_the_spec_defines_passes_unchanged() -> None:
    form = check_form(EVERY_KIND)
    assert isinstance(form, Form)
    assert form.schema == EVERY_KIND
    assert form.fields == tuple(EVERY_KIND["properties"])


def test_a_form_an_sdk_server_renders_from_a_model_passes() -> None:
    class Order(BaseModel):
        size: Literal["S", "M", "L"]
        quantity: int = 1
        note: str | None = None

    form = check_form(render_elicitation_schema(Order))
    assert isinstance(form, Form) and form.fields == ("size", "quantity", "note")


def test_only_keywords_of_form_mode_reach_the_client_and_their_text_is_cleaned() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": {"$ref": "#/definitions/anything"},
        "x-render-html": "<script>",
        "properties": {
            "size": {"type": "string", "title": "Size\u202e\u200b", "pattern": ".*", "format": "color", "x-extra": 1}
        },
        "required": ["size", "size", "ghost"],
    }
    form = check_form(schema)
    assert isinstance(form, Form)
    assert form.schema == {
        "type": "object",
        "properties": {"size": {"type": "string", "title": "Size"}},
        "required": ["size"],
    }


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        pytest.param([], "not an object", id="not-a-mapping"),
        pytest.param({"type": "array"}, "not an object", id="top-level-array"),
        pytest.param({"type": "object", "properties": []}, "not a mapping", id="properties-list"),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}},
            "field `a`",
            id="nested-object",
        ),
        pytest.param({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "field `a`", id="ref"),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": ["string", "null"]}}}, "field `a`", id="type-list"
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}},
            "without choices",
            id="free-list",
        ),
        pytest.param({"type": "object", "properties": {"a": True}}, "not a schema", id="boolean-schema"),
        pytest.param(
            {"type": "object", "properties": {"a b\u202e": {"type": "string"}}},
            "not a plain identifier",
            id="hostile-name",
        ),
        pytest.param(
            {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(33)}},
            "33 fields",
            id="too-many-fields",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "enum": [f"v{i}" for i in range(101)]}}},
            "1 to 100 choices",
            id="too-many-choices",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "enum": ["ok\u202e"]}}},
            "short plain text",
            id="hidden-characters-in-a-choice",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "enum": ["x"], "enumNames": []}}},
            "enumNames",
            id="enum-names-mismatch",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "integer", "maximum": "9"}}}, "`maximum`", id="bad-bound"
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "number", "minimum": float("nan")}}}, "`minimum`", id="nan"
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "boolean", "default": "yes"}}},
            "`default`",
            id="bad-default",
        ),
        pytest.param(
            {
                "type": "object",
                "properties": {"a": {"type": "array", "items": {"type": "string", "enum": ["x"]}, "default": ["y"]}},
            },
            "not among its choices",
            id="default-not-a-choice",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "description": "d" * MAX_FORM_BYTES}}},
            "bytes; the limit",
            id="oversized",
        ),
    ],
)
def test_forms_that_are_not_flat_small_and_plain_are_refused(schema: Any, why: str) -> None:
    refused = check_form(schema)
    assert isinstance(refused, str) and why in refused
    assert "\u202e" not in refused and "\n" not in refused


def test_the_message_is_labelled_stripped_and_capped() -> None:
    assert relayed_message("shop", "  \u2066Which size?\u2069\n\n\n\nThanks ") == "`shop` asks: Which size?\n\nThanks"
    long = relayed_message("shop", "y" * 10_000)
    assert long.startswith("`shop` asks: yyy") and long.endswith(" [… truncated by guard-mcp]")
    assert len(long) < 2100


def test_attack_tag_characters_in_labels_are_removed_and_in_choices_refuse_the_form() -> None:
    tags = "\U000e0049\U000e0067\U000e006e\U000e006f\U000e0072\U000e0065"  # "Ignore", invisible
    form = check_form(
        {
            "type": "object",
            "title": f"Order{tags}",
            "properties": {
                "colour": {"type": "string", "oneOf": [{"const": "r", "title": f"Red\ufe0f{tags}"}]},
                "legacy": {"type": "string", "enum": ["a"], "enumNames": [f"A{tags}"], "default": f"a{tags}"},
            },
        }
    )
    assert isinstance(form, Form)
    assert form.schema["title"] == "Order"
    assert form.schema["properties"]["colour"]["oneOf"] == [{"const": "r", "title": "Red"}]
    assert (
        form.schema["properties"]["legacy"]["enumNames"] == ["A"]
        and form.schema["properties"]["legacy"]["default"] == "a"
    )
    refused = check_form({"type": "object", "properties": {"c": {"type": "string", "enum": [f"ok{tags}"]}}})
    assert isinstance(refused, str) and "not short plain text" in refused
