"""Compiling policy sources: what a reviewer writes, and every mistake that must not compile."""

from __future__ import annotations

import pytest
from _policy_kit import shop_source

from guard_mcp._errors import PolicyError
from guard_mcp._policy import bundle_bytes, compile_policy


def _one_rule(rule: str) -> str:
    return f"policy: p\nversion: 1\nrules:\n{rule}"


def _error(source: str) -> str:
    with pytest.raises(PolicyError) as info:
        compile_policy(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shop_policy_compiles_to_the_documented_shape() -> None:
    bundle = compile_policy(shop_source(3))
    assert (bundle["policy"], bundle["version"], bundle["format"]) == ("shop", 3, 1)
    assert bundle["default"] == {
        "effect": "deny",
        "reason": "no_rule_matched",
        "approvers": None,
        "approval_ttl": None,
        "permit_ttl": 300,
        "step_up": False,
    }
    medium = bundle["rules"][2]
    assert medium["match"] == {"action": ["refund.create"]}
    assert medium["when"] == {"arg": ["amount"], "op": "le", "value": 100 * 10}
    assert medium["then"]["approvers"] == "support_leads"
    assert medium["then"]["approval_ttl"] == 7200


def test_canonical_bytes_do_not_depend_on_key_order_in_the_source() -> None:
    a = "policy: p\nversion: 1\nrules:\n- {id: r, match: {action: a.b, tool: t}, effect: allow}\n"
    b = "version: 1\npolicy: p\nrules:\n- {effect: allow, match: {tool: t, action: a.b}, id: r}\n"
    assert bundle_bytes(compile_policy(a)) == bundle_bytes(compile_policy(b))


def test_combinators_and_dotted_paths_compile() -> None:
    bundle = compile_policy(
        _one_rule("""
- id: r
  when:
    all:
      - {arg: customer.tier, in: [gold, silver]}
      - not: {arg: note, prefix: "test-"}
      - any: [{arg: amount, lt: 5}, {arg: flag, exists: true}]
  effect: allow
""")
    )
    when = bundle["rules"][0]["when"]
    assert when["all"][0] == {"arg": ["customer", "tier"], "op": "in", "value": ["gold", "silver"]}
    assert when["all"][1] == {"not": {"arg": ["note"], "op": "prefix", "value": "test-"}}


def test_an_unknown_operator_is_refused_naming_the_rule() -> None:
    msg = _error(_one_rule("- {id: r1, when: {arg: amount, between: [1, 2]}, effect: allow}"))
    assert "rule `r1`" in msg and "unknown operator `between`" in msg


def test_a_rule_without_an_id_is_refused() -> None:
    msg = _error(_one_rule("- {match: {action: a.b}, effect: allow}"))
    assert "rule #1 has no `id`" in msg


def test_duplicate_rule_ids_are_refused() -> None:
    msg = _error(_one_rule("- {id: same, effect: allow}\n- {id: same, effect: deny}"))
    assert "rule id `same` is used twice" in msg


@pytest.mark.parametrize("op", ["regex", "matches", "pattern"])
def test_a_regex_operator_is_refused(op: str) -> None:
    msg = _error(_one_rule(f"- {{id: r, when: {{arg: email, {op}: '.*@corp'}}, effect: allow}}"))
    assert "rule `r`" in msg and "regular expressions are not allowed" in msg


@pytest.mark.parametrize("pattern", [r"refund\..*", "^refund", "refund.(create|update)", "ref[a-z]nd"])
def test_a_regex_in_a_name_match_is_refused(pattern: str) -> None:
    msg = _error(_one_rule(f"- {{id: r, match: {{action: '{pattern}'}}, effect: allow}}"))
    assert "looks like a regular expression" in msg and "`*` globs" in msg


def test_a_type_mismatch_is_refused() -> None:
    msg = _error(_one_rule('- {id: refund-small, when: {arg: amount, le: "ten"}, effect: allow}'))
    assert "rule `refund-small`" in msg and "`le` needs a number" in msg and "`ten`" in msg


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ("- {id: r, when: {arg: a, in: [1, x]}, effect: allow}", "mixes"),
        ("- {id: r, when: {arg: a, in: []}, effect: allow}", "non-empty list"),
        ("- {id: r, when: {arg: a, prefix: 5}, effect: allow}", "`prefix` on `a` needs a string"),
        ("- {id: r, when: {arg: a, exists: yes-please}, effect: allow}", "true or false"),
        ("- {id: r, when: {arg: a, le: .nan}, effect: allow}", "finite"),
        ("- {id: r, when: {arg: a, le: 1, ge: 0}, effect: allow}", "exactly one operator"),
        ("- {id: r, when: {all: []}, effect: allow}", "non-empty list"),
        ("- {id: r, when: {amount: 5}, effect: allow}", "names no `arg`"),
        ("- {id: r, effect: permit}", "allow, deny or approve"),
        ("- {id: r, effect: allow, step_up: true}", "`step_up` applies to `effect: approve` only"),
        ("- {id: r, effect: deny, approvers: x}", "`approvers` applies"),
        ("- {id: r, effect: deny, permit_ttl: 60}", "a denied call gets no permit"),
        ("- {id: r, effect: approve, approval_ttl: soon}", "`approval_ttl`"),
        ("- {id: r, effect: allow, permit_ttl: 2h}", "longer than an hour"),
        ("- {id: r, effect: deny, reason: Too Big}", "snake_case"),
        ("- {id: r, match: {category: money}, effect: allow}", "`match.category`"),
        ("- {id: r, match: {score: {min: 0, max: 101}}, effect: allow}", "0 to 100"),
        ("- {id: r, match: {verb: x}, effect: allow}", "unknown key `match.verb`"),
        ("- {id: r, effect: allow, unless: x}", "unknown key `unless`"),
    ],
)
def test_bad_rules_are_refused_with_the_rule_id(rule: str, needle: str) -> None:
    msg = _error(_one_rule(rule))
    assert "rule `r`" in msg
    assert needle in msg


def test_nesting_is_bounded() -> None:
    cond = "{arg: a, eq: 1}"
    for _ in range(20):
        cond = f"{{not: {cond}}}"
    assert "nest deeper" in _error(_one_rule(f"- {{id: r, when: {cond}, effect: allow}}"))


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("policy: Shop Policy\nversion: 1\n", "`policy` must be a lower-case name"),
        ("policy: p\nversion: 0\n", "`version` must be a whole number"),
        ("policy: p\nversion: true\n", "`version` must be a whole number"),
        ("policy: p\nversion: 1\nrules: {}\n", "`rules` must be a list"),
        ("policy: p\nversion: 1\ndefault: maybe\n", "`default`"),
        ("policy: p\nversion: 1\nextra: 1\n", "unknown key `extra`"),
        ("policy: [p\n", "invalid YAML"),
    ],
)
def test_bad_policy_headers_are_refused(source: str, needle: str) -> None:
    assert needle in _error(source)


def test_the_default_can_be_stated() -> None:
    bundle = compile_policy("policy: p\nversion: 1\ndefault: {effect: approve, approvers: ops}\ntier_defaults: true\n")
    assert bundle["default"]["effect"] == "approve"
    assert bundle["default"]["reason"] == "no_rule_matched"
    assert bundle["tier_defaults"] is True
