"""Regular expressions in input schemas and constraints: matched with a time limit, fail closed, never pinning the loop.

`^(a+)+$` is the classic catastrophic pattern for Python's `re` (minutes on 40 `a`s and a `!`); the
`regex` package the guard matches with sees through that one, but not `^(a|a)+$`, which exercises the time limit.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, reason_of, running_guard, text_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from mcp import Client

from guard_mcp import _patterns
from guard_mcp._config import GuardConfig
from guard_mcp._errors import ConfigError
from guard_mcp._patterns import PatternError, bounded_validator, pattern_budget, schema_problem
from guard_mcp._state import StateDir

CLASSIC = "^(a+)+$"
SLOW = "^(a|a)+$"  # backtracks in `regex` too
HOSTILE = "a" * 40 + "!"
ECHO = types.Tool(
    name="echo",
    description="Echo.",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


def _text_schema(text_schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"text": text_schema}}


HOSTILE_TOOLS = [
    pytest.param(_text_schema({"type": "string", "pattern": CLASSIC}), {"text": HOSTILE}, id="pattern-classic"),
    pytest.param(_text_schema({"type": "string", "pattern": SLOW}), {"text": HOSTILE}, id="pattern"),
    pytest.param(
        {"type": "object", "patternProperties": {CLASSIC: {}}, "additionalProperties": False},
        {HOSTILE: 1},
        id="patternProperties-additionalProperties-classic",
    ),
    pytest.param(
        {"type": "object", "patternProperties": {SLOW: {"type": "string"}}}, {HOSTILE: 1}, id="patternProperties"
    ),
    # additionalProperties first: its lookup of the patternProperties regexes is what runs (and is stopped)
    pytest.param(
        {"type": "object", "additionalProperties": False, "patternProperties": {SLOW: {}}},
        {HOSTILE: 1},
        id="additionalProperties",
    ),
    pytest.param(
        {"type": "object", "unevaluatedProperties": False, "patternProperties": {SLOW: {}}},
        {HOSTILE: 1},
        id="unevaluatedProperties",
    ),
    # a nested `$schema` must not hand the subschema to a stock validator (which matches with `re`)
    pytest.param(
        _text_schema({"$schema": "http://json-schema.org/draft-07/schema#", "pattern": CLASSIC}),
        {"text": HOSTILE},
        id="nested-draft-07-classic",
    ),
    pytest.param(
        _text_schema({"$schema": "https://json-schema.org/draft/2020-12/schema", "pattern": SLOW}),
        {"text": HOSTILE},
        id="nested-2020-12",
    ),
    # "took too long" is not "did not match": `not` and `anyOf` cannot turn it into a pass
    pytest.param(_text_schema({"not": {"pattern": SLOW}}), {"text": HOSTILE}, id="not"),
    pytest.param(_text_schema({"anyOf": [{"pattern": SLOW}, {"type": "string"}]}), {"text": HOSTILE}, id="anyOf"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("schema", "arguments"), HOSTILE_TOOLS)
async def test_a_backtracking_pattern_in_an_upstream_schema_is_refused_without_stalling_other_calls(
    state: StateDir, schema: dict[str, Any], arguments: dict[str, Any]
) -> None:
    up = RecordingUpstream([ECHO, types.Tool(name="lookup", description="Look up.", input_schema=schema)])
    results: dict[str, types.CallToolResult] = {}
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:

                    async def call(name: str, args: dict[str, Any]) -> None:
                        results[name] = await client.call_tool(name, args)

                    tg.start_soon(call, "echo__lookup", arguments)
                    tg.start_soon(call, "echo__echo", {"text": "hi"})
    refused, benign = results["echo__lookup"], results["echo__echo"]
    assert refused.is_error and reason_of(refused) == "schema_violation", text_of(refused)
    assert not benign.is_error, text_of(benign)
    assert [name for name, _, _ in up.calls] == ["echo"]  # the upstream never saw the refused call


@pytest.mark.anyio
async def test_the_denial_says_the_pattern_took_too_long(state: StateDir) -> None:
    up = RecordingUpstream([types.Tool(name="lookup", input_schema=_text_schema({"pattern": SLOW}))])
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            with anyio.fail_after(10):
                result = await client.call_tool("echo__lookup", {"text": HOSTILE})
    assert reason_of(result) == "schema_violation"
    assert "took too long on this value" in text_of(result) and SLOW in text_of(result)
    assert HOSTILE not in text_of(result)  # the value is not echoed back
    assert up.calls == []


@pytest.mark.anyio
async def test_a_backtracking_pattern_in_an_operator_constraint_is_refused(state: StateDir) -> None:
    text = ECHO_CONFIG.replace(
        "sensitivity: public}", "sensitivity: public, constraints: {text: {pattern: '^(a|a)+$'}}}"
    )
    up = RecordingUpstream()
    async with running_guard(config_from(text, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            with anyio.fail_after(10):
                ok = await client.call_tool("echo__echo", {"text": "aaa"})
                refused = await client.call_tool("echo__echo", {"text": HOSTILE})
    assert not ok.is_error, text_of(ok)
    assert reason_of(refused) == "schema_violation" and "took too long" in text_of(refused)
    assert [args for _, args, _ in up.calls] == [{"text": "aaa"}]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "pattern",
    [
        "x{100000000}",  # `regex` expands counted repeats when it compiles: minutes and gigabytes
        "^[[:alpha:]]+$",  # a POSIX class for `regex`, a set of `[:alph` for `re`
        r"^\p{L}+$",  # `regex` only
    ],
)
async def test_a_pattern_the_guard_cannot_use_makes_the_schema_invalid(state: StateDir, pattern: str) -> None:
    up = RecordingUpstream([ECHO, types.Tool(name="lookup", input_schema=_text_schema({"pattern": pattern}))])
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            with anyio.fail_after(20):
                refused = await client.call_tool("echo__lookup", {"text": "x"})
                ok = await client.call_tool("echo__echo", {"text": "hi"})
    assert reason_of(refused) == "schema_violation"
    assert "invalid input schema" in text_of(refused) and "cannot be used" in text_of(refused)
    assert not ok.is_error
    assert [name for name, _, _ in up.calls] == ["echo"]


def test_a_constraint_pattern_the_guard_cannot_use_fails_the_configuration(state: StateDir) -> None:
    text = ECHO_CONFIG.replace(
        "sensitivity: public}", "sensitivity: public, constraints: {text: {pattern: '[[:alpha:]]'}}}"
    )
    with pytest.raises((ConfigError, ValueError), match="cannot be used"):
        config_from(text, state)
    assert isinstance(config_from(ECHO_CONFIG, state), GuardConfig)


def test_the_call_budget_bounds_the_matches_together(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = {"type": "object", "properties": {f"f{i}": {"pattern": SLOW} for i in range(20)}}
    assert schema_problem(schema) is None
    validator = bounded_validator(schema)
    # one match alone may take long here; the budget still stops the call
    monkeypatch.setattr(_patterns, "PATTERN_TIMEOUT", 30.0)
    with pytest.raises(PatternError, match="took too long"), pattern_budget(0.1):
        list(validator.iter_errors({f"f{i}": "a" * 60 + "!" for i in range(20)}))
    with pytest.raises(PatternError), pattern_budget(0.0):  # a spent budget refuses even a quick match
        list(validator.iter_errors({"f0": "a"}))


def test_a_pattern_not_vetted_with_its_schema_is_refused() -> None:
    validator = bounded_validator({"pattern": "^never-vetted-[0-9]+$"})
    with pytest.raises(PatternError, match="not checked"):
        list(validator.iter_errors("never-vetted-1"))


_HIDDEN = "^(h+)+$"  # CLASSIC's twin, used nowhere else: never vetted by another schema in this process


@pytest.mark.parametrize(
    "hidden",
    [
        {"type": "string", "pattern": _HIDDEN},  # under a keyword the metaschema does not know
        {"type": "object", "patternProperties": {_HIDDEN: {}}, "additionalProperties": False},
    ],
)
def test_attack_a_pattern_hidden_where_the_metaschema_does_not_look_and_reached_by_ref_is_not_matched_with_re(
    hidden: dict[str, Any],
) -> None:
    # No pattern the metaschema can see, so no regex to vet; a local `$ref` still reaches this one at call time.
    schema = {"type": "object", "properties": {"text": {"$ref": "#/x-hidden"}}, "x-hidden": hidden}
    validator, problem = _patterns.prepare(schema)
    assert problem is None and validator is not None and _patterns.is_bounded(validator)
    value = "h" * 18 + "!"  # short enough that `re` gives up quickly here; a few more `a`s pin the loop for hours
    with pytest.raises(PatternError, match="not checked"), pattern_budget():
        list(validator.iter_errors({"text": value if "pattern" in hidden else {value: 1}}))


# Ordinary patterns: the same results and messages as the stock validator.


def _errors(validator: Any, instance: Any) -> list[tuple[str, list[Any]]]:
    return sorted((e.message, list(e.absolute_path)) for e in validator.iter_errors(instance))


def _same_as_stock(schema: dict[str, Any], instance: Any) -> None:
    assert schema_problem(schema) is None
    with pattern_budget():
        ours = _errors(bounded_validator(schema), instance)
    assert ours == _errors(Draft202012Validator(schema), instance)


TABLE = [
    ({"type": "string", "pattern": "^ord_[0-9]{4,10}$"}, "ord_12345"),
    ({"type": "string", "pattern": "^ord_[0-9]{4,10}$"}, "ord_12"),
    ({"pattern": "b"}, "abc"),  # search, not fullmatch
    ({"pattern": "^b"}, "abc"),
    ({"pattern": "^\\d+$"}, "\u0663\u0664"),  # Unicode digits, as with `re`
    ({"pattern": "(?i)^abc$"}, "ABC"),
    ({"pattern": "^a"}, 5),  # not a string: ignored
    ({"properties": {"id": {"pattern": "^[a-f0-9]{8}$"}}}, {"id": "deadbeef"}),
    ({"properties": {"id": {"pattern": "^[a-f0-9]{8}$"}}}, {"id": "DEADBEEF"}),
    (
        {"patternProperties": {"^x-": {"type": "string"}, "^n_": {"type": "integer"}}},
        {"x-a": "s", "x-b": 1, "n_c": "t", "other": None},
    ),
    (
        {"properties": {"a": {}}, "patternProperties": {"^x-": {}}, "additionalProperties": False},
        {"a": 1, "x-y": 2, "z": 3, "w": 4},
    ),
    ({"patternProperties": {"^x-": {}}, "additionalProperties": False}, {"x-y": 2, "z": 3}),
    ({"patternProperties": {"^x-": {}}, "additionalProperties": {"type": "integer"}}, {"x-y": "s", "z": "t"}),
    ({"properties": {"a": {}}, "additionalProperties": False}, {"a": 1, "b": 2}),
    ({"patternProperties": {"^x-": {}}, "unevaluatedProperties": False}, {"x-y": 1, "z": 2}),
    ({"allOf": [{"patternProperties": {"^x-": {}}}], "unevaluatedProperties": {"type": "string"}}, {"x-y": 1, "z": 2}),
    (
        {"$defs": {"p": {"patternProperties": {"^x-": {}}}}, "$ref": "#/$defs/p", "unevaluatedProperties": False},
        {"x-y": 1, "z": 2},
    ),
    (
        {"if": {"required": ["k"]}, "then": {"patternProperties": {"^t": {}}}, "unevaluatedProperties": False},
        {"k": 1, "t1": 2},
    ),
    ({"propertyNames": {"pattern": "^[a-z]+$"}}, {"ok": 1, "Not-OK": 2}),
    ({"items": {"pattern": "^[0-9]+$"}}, ["1", "x", "22"]),
    ({"not": {"pattern": "^admin"}}, "admin-panel"),
]


@pytest.mark.parametrize(("schema", "instance"), TABLE)
def test_ordinary_patterns_give_the_same_results_as_the_stock_validator(schema: dict[str, Any], instance: Any) -> None:
    _same_as_stock(schema, instance)


_atom = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", "\\d", "\\w", "(a|b)", "(?:ab)", "\\.", "x"])
_quant = st.sampled_from(["", "", "*", "+", "?", "{1,2}", "{2}"])
_seq = st.lists(st.tuples(_atom, _quant).map("".join), min_size=1, max_size=4).map("".join)
_pattern = st.tuples(
    st.sampled_from(["", "^"]), st.lists(_seq, min_size=1, max_size=2).map("|".join), st.sampled_from(["", "$"])
).map("".join)
_value = st.text(alphabet="ab1x.-", max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=_pattern, values=st.lists(_value, min_size=1, max_size=4))
def test_random_simple_patterns_agree_with_the_stock_validator(pattern: str, values: list[str]) -> None:
    _same_as_stock({"items": {"pattern": pattern}}, values)
    _same_as_stock(
        {"patternProperties": {pattern: {"type": "integer"}}, "additionalProperties": False}, dict.fromkeys(values, "v")
    )
    _same_as_stock({"patternProperties": {pattern: True}, "unevaluatedProperties": False}, dict.fromkeys(values, 1))


@pytest.mark.anyio
async def test_a_schema_that_points_at_a_remote_document_is_not_fetched_and_its_call_is_refused(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    fetched: list[object] = []

    def urlopen(request: object, *args: object, **kwargs: object) -> object:
        fetched.append(request)
        raise OSError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    up = RecordingUpstream(
        [
            types.Tool(
                name="echo",
                description="Echo.",
                input_schema={
                    "type": "object",
                    "properties": {"text": {"$ref": "http://169.254.169.254/latest/schema.json"}},
                },
            )
        ]
    )
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            result = await client.call_tool("echo__echo", {"text": "hi"})
    assert reason_of(result) == "schema_violation" and "does not fetch" in text_of(result)
    assert fetched == [] and up.calls == []


def _nested(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


TREE = {
    "type": "object",
    "properties": {"text": {"$ref": "#/$defs/node"}},
    "$defs": {"node": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#/$defs/node"}}]}},
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("schema", "arguments"),
    [
        # `a` → `b` → `a`: the validator would follow it for ever
        (
            {
                "type": "object",
                "properties": {"text": {"$ref": "#/$defs/a"}},
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
            },
            {"text": 1},
        ),
        # a recursive schema is fine, but not as deep as the arguments go (as deep as the SDK's client sends)
        (TREE, {"text": _nested(250)}),
    ],
    ids=["ref-loop", "deep-arguments"],
)
async def test_attack_a_ref_loop_or_arguments_nested_without_end_are_refused_as_schema_violation(
    state: StateDir, schema: dict[str, Any], arguments: dict[str, Any]
) -> None:
    up = RecordingUpstream([types.Tool(name="echo", description="Echo.", input_schema=schema)])
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            result = await client.call_tool("echo__echo", arguments)
            assert reason_of(result) == "schema_violation" and "nest too deeply" in text_of(result)
            assert up.calls == []
            if schema is TREE:  # the recursive schema still checks ordinary arguments, and passes them on
                tree = await client.call_tool("echo__echo", {"text": [["a"], "b"]})
                assert not tree.is_error and len(up.calls) == 1
