"""The closed sets `Reason` and `EventType` (guard_mcp/_codes.py): every member documented, nothing
else written, and every member written somewhere.

Each failure says what to add where: a reason code is a member of `Reason` and a row of the table
in docs/reasons.md; an event type is a member of `EventType` and a row of the table under "The
events" in docs/audit.md.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path

import pytest
from guard_kit import text_of

from guard_mcp._audit import EventIn
from guard_mcp._codes import EventType, Reason
from guard_mcp._results import DECISION_META, deny_result

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "guard_mcp"
REASONS_DOC = ROOT / "docs" / "reasons.md"
AUDIT_DOC = ROOT / "docs" / "audit.md"


# -- the documentation ---------------------------------------------------------------------------


def table_codes(text: str, heading: str | None = None) -> set[str]:
    """The backticked codes in the first column of the first table (after `heading`, if given)."""
    lines = text.splitlines()
    if heading is not None:
        lines = lines[lines.index(heading) + 1 :]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    codes: set[str] = set()
    for line in lines[start + 2 :]:  # past the header and the `|---|` row
        if not line.startswith("|"):
            break
        codes.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return codes


def undocumented(enum: type[StrEnum], documented: set[str], where: str) -> list[str]:
    return [
        f"`{m.value}` ({enum.__name__}.{m.name}) has no row in {where}: add one saying when it is written"
        for m in enum
        if m.value not in documented
    ]


def unknown(enum: type[StrEnum], documented: set[str], where: str) -> list[str]:
    values = {m.value for m in enum}
    return [
        f"`{code}` is documented in {where} but is not a member of `{enum.__name__}` in "
        f'guard_mcp/_codes.py: add `{code.upper().replace(".", "_")} = "{code}"` there, or drop the row'
        for code in sorted(documented - values)
    ]


def documented_reasons() -> set[str]:
    return table_codes(REASONS_DOC.read_text())


def documented_event_types() -> set[str]:
    return table_codes(AUDIT_DOC.read_text(), "## The events")


def test_every_reason_code_is_documented() -> None:
    problems = undocumented(Reason, documented_reasons(), "the table in docs/reasons.md")
    problems += unknown(Reason, documented_reasons(), "docs/reasons.md")
    assert not problems, "\n".join(problems)


def test_every_event_type_is_documented() -> None:
    where = 'the table under "The events" in docs/audit.md'
    problems = undocumented(EventType, documented_event_types(), where)
    problems += unknown(EventType, documented_event_types(), where)
    assert not problems, "\n".join(problems)


def test_a_member_added_without_documentation_is_named_with_where_to_document_it() -> None:
    grown = StrEnum("Reason", {**{m.name: m.value for m in Reason}, "NEW_CODE": "new_code"})  # type: ignore[misc]
    assert undocumented(grown, documented_reasons(), "docs/reasons.md") == [
        "`new_code` (Reason.NEW_CODE) has no row in docs/reasons.md: add one saying when it is written"
    ]
    assert unknown(Reason, documented_reasons() | {"old_code"}, "docs/reasons.md") == [
        "`old_code` is documented in docs/reasons.md but is not a member of `Reason` in guard_mcp/_codes.py: "
        'add `OLD_CODE = "old_code"` there, or drop the row'
    ]


# -- refused where they are written --------------------------------------------------------------


def test_deny_result_takes_a_reason_or_its_string_and_answers_the_plain_string() -> None:
    for given in (Reason.LIMIT_EXCEEDED, "limit_exceeded"):
        result = deny_result(given, "over the limit", request_id="r1")
        meta = result.meta[DECISION_META]  # type: ignore[index]
        assert meta == {"effect": "deny", "reason": "limit_exceeded", "request_id": "r1"}
        assert type(meta["reason"]) is str
        assert text_of(result) == "denied by guard-mcp: limit_exceeded: over the limit (request r1)"


def test_deny_result_refuses_a_code_that_is_not_a_reason_and_says_where_to_add_it() -> None:
    with pytest.raises(
        ValueError,
        match=r"`made_up` is not a guard reason code: add `MADE_UP = \"made_up\"` to "
        r"`Reason` in guard_mcp/_codes.py and a row for `made_up` to the table "
        r"in docs/reasons.md",
    ):
        deny_result("made_up", "no such reason")


def test_a_denial_the_policy_decided_carries_the_policys_own_code() -> None:
    result = deny_result(
        "amount_exceeds_policy_limit", "over 100", request_id="r1", rule_id="refund-large", policy="shop@3"
    )
    assert result.meta[DECISION_META] == {  # type: ignore[index]
        "effect": "deny",
        "reason": "amount_exceeds_policy_limit",
        "request_id": "r1",
        "rule_id": "refund-large",
        "policy": "shop@3",
    }


def test_event_in_takes_an_event_type_or_its_string_and_keeps_the_plain_string() -> None:
    for given in (EventType.CALL_RECEIVED, "call.received"):
        event = EventIn(given, "r1")
        assert event.type == "call.received" and type(event.type) is str


def test_event_in_refuses_a_type_that_is_not_an_event_type_and_says_where_to_add_it() -> None:
    with pytest.raises(
        ValueError,
        match=r"`call.forwarded` is not an audit event type: add `CALL_FORWARDED = "
        r"\"call.forwarded\"` to `EventType` in guard_mcp/_codes.py and a row for "
        r"`call.forwarded` to the table under \"The events\" in docs/audit.md",
    ):
        EventIn("call.forwarded", "r1")


# -- what the source writes ----------------------------------------------------------------------

# Calls whose argument at `position` is an event type; `transform` maps a literal to the type.
EVENT_SINKS: dict[str, tuple[int, ...]] = {
    "EventIn": (0,),
    "_event": (0,),  # Pipeline._event
    "_ev": (0,),  # Pause._ev
    "event": (0, 2),  # Console.event(kind, ...); EventEncoder.event(seq, ts, type, ...)
    "record": (1,),  # cli._record.record(env, kind, ...)
    "_on_event": (0,),  # UpstreamManager → the server
    "_emit": (0,),  # PolicyEngine → the server, which turns `policy_loaded` into `policy.loaded`
}
# Calls whose first argument is a reason code.
REASON_SINKS = ("deny_result", "Invalid", "LimitDenial", "RequestStateError")
# Modules whose `"reason"` keys hold something else: the upstream verifier's own closed set
# (verify.REASONS), and the demo harness, which answers approvals with a human's free text.
NOT_REASON_KEYS = ("verify.py", "demo/")


@functools.cache
def modules() -> tuple[tuple[str, ast.Module], ...]:
    return tuple(
        (path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), filename=str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    )


def constants(node: ast.AST, names: dict[str, str]) -> list[str]:
    """The string literals `node` can evaluate to (a literal, either side of `a if c else b`, the
    literal sides of `x or "y"`, a module-level string constant); [] when it is computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return constants(node.body, names) + constants(node.orelse, names)
    if isinstance(node, ast.BoolOp):
        return [c for value in node.values for c in constants(value, names)]
    if isinstance(node, ast.Name) and node.id in names:
        return [names[node.id]]
    return []


def module_constants(tree: ast.Module) -> dict[str, str]:
    return {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }


def called(node: ast.Call) -> str | None:
    return (
        node.func.id
        if isinstance(node.func, ast.Name)
        else node.func.attr
        if isinstance(node.func, ast.Attribute)
        else None
    )


def written_event_types() -> Iterator[tuple[str, int, str]]:
    for name, tree in modules():
        names = module_constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (sink := called(node) or "") in EVENT_SINKS:
                for position in EVENT_SINKS[sink]:
                    if position < len(node.args):
                        for value in constants(node.args[position], names):
                            yield name, node.lineno, value.replace("_", ".", 1) if sink == "_emit" else value
            elif isinstance(node, ast.Dict):  # the catalog's changes: {"event": "tool.pin_changed", ...}
                for key, item in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "event":
                        for literal in constants(item, names):
                            yield name, node.lineno, literal


def written_reasons() -> Iterator[tuple[str, int, str]]:
    for name, tree in modules():
        names = module_constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and called(node) in REASON_SINKS and node.args:
                for value in constants(node.args[0], names):
                    yield name, node.lineno, value
            elif isinstance(node, ast.Dict) and not name.startswith(NOT_REASON_KEYS):
                for key, item in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        for literal in constants(item, names):
                            yield name, node.lineno, literal


def strays(found: Iterable[tuple[str, int, str]], enum: type[StrEnum], what: str, doc: str) -> list[str]:
    values = {m.value for m in enum}
    return [
        f"guard_mcp/{name}:{line} writes {what} `{value}`, which is not a member of `{enum.__name__}`: add "
        f'`{value.upper().replace(".", "_")} = "{value}"` to it in guard_mcp/_codes.py and a row for '
        f"`{value}` to {doc}"
        for name, line, value in found
        if value not in values
    ]


def test_every_event_type_the_source_writes_is_an_event_type() -> None:
    found = list(written_event_types())
    assert len(found) > 40  # the scan sees the call sites (a renamed helper would hide them all)
    problems = strays(found, EventType, "the event type", 'the table under "The events" in docs/audit.md')
    assert not problems, "\n".join(problems)


def test_every_event_type_is_written_somewhere() -> None:
    written = {value for _, _, value in written_event_types()}
    never = [
        f"`{m.value}` (EventType.{m.name}) is never written by guard_mcp: remove it (and its row in "
        f"docs/audit.md), or, if a helper this scan does not know writes it, add that helper to EVENT_SINKS "
        "in tests/test_reasons.py"
        for m in EventType
        if m.value not in written
    ]
    assert not never, "\n".join(never)


def test_every_reason_code_the_source_writes_is_a_reason() -> None:
    found = list(written_reasons())
    assert len(found) > 20
    problems = strays(found, Reason, "the reason code", "the table in docs/reasons.md")
    assert not problems, "\n".join(problems)


def test_every_reason_code_is_used_somewhere() -> None:
    literals = {
        node.value
        for name, tree in modules()
        if name != "_codes.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    never = [
        f"`{m.value}` (Reason.{m.name}) appears nowhere in guard_mcp: remove it and its row in docs/reasons.md"
        for m in Reason
        if m.value not in literals
    ]
    assert not never, "\n".join(never)
