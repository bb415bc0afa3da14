"""`under`: a path test that normalises before it compares, decided in the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _policy_kit import Signer, action, config_for, make_signer, write_bundle
from click.testing import CliRunner

from guard_mcp._errors import PolicyError
from guard_mcp._models import Category, Effect
from guard_mcp._policy import PolicyEngine, compile_policy
from guard_mcp._state import StateDir
from guard_mcp.cli import main

FILES = """
policy: files
version: 1
default: allow
rules:
  - id: protected
    match: {tool: write_file}
    when: {arg: path, under: /root/sub}
    effect: deny
    reason: protected_path
  - id: allowed-dir
    match: {tool: read_file}
    when: {arg: path, under: /srv/data/}
    effect: allow
  - id: rest
    match: {tool: read_file}
    effect: deny
    reason: outside
"""


@pytest.fixture
def engine(tmp_path: Path, state: StateDir) -> PolicyEngine:
    signer: Signer = make_signer(tmp_path / "keys")
    path = tmp_path / "files.bundle.json"
    write_bundle(path, FILES, signer)
    engine = PolicyEngine.from_config(config_for(path, signer.public_pem), state)
    assert engine.status == "loaded", engine.describe()
    return engine


def decide(engine: PolicyEngine, tool: str, path: object) -> tuple[Effect, str]:
    _, d = engine.decide(action("fs.x", {"path": path}, category=Category.WRITE, upstream="fs", tool=tool))
    return d.effect, d.reason


@pytest.mark.parametrize(
    "path",
    ["/root/x/../sub/plans.md", "/root/sub", "//root/sub/a", "/root/./sub//b", "/../root/sub/c", "/root/sub/../sub/d"],
)
def test_attack_a_path_that_escapes_its_text_still_hits_the_deny_rule(engine: PolicyEngine, path: str) -> None:
    assert decide(engine, "write_file", path) == (Effect.DENY, "protected_path")


@pytest.mark.parametrize("path", ["/root/subway/x", "/root/sub/../other", "/root", "/elsewhere"])
def test_a_path_outside_is_not_under(engine: PolicyEngine, path: str) -> None:
    assert decide(engine, "write_file", path)[0] is Effect.ALLOW


@pytest.mark.parametrize(
    "path", ["/srv/data/../etc/passwd", "/srv/database", "srv/data/x", "data/x", 7, None, "/srv/data\x00/x"]
)
def test_attack_an_allow_under_a_directory_refuses_escapes_relative_paths_and_other_types(
    engine: PolicyEngine, path: object
) -> None:
    assert decide(engine, "read_file", path) == (Effect.DENY, "outside")


def test_an_allow_under_a_directory_allows_inside(engine: PolicyEngine) -> None:
    assert decide(engine, "read_file", "/srv/data/a/../b.txt")[0] is Effect.ALLOW
    assert decide(engine, "read_file", "/srv/data")[0] is Effect.ALLOW


def test_prefix_keeps_comparing_text() -> None:
    bundle = compile_policy(
        "policy: p\nversion: 1\nrules:\n  - {id: r, when: {arg: p, prefix: /root/sub}, effect: deny}\n"
    )
    assert bundle["rules"][0]["when"] == {"arg": ["p"], "op": "prefix", "value": "/root/sub"}


def test_the_compiler_normalises_the_operand_and_refuses_what_is_not_a_directory_path() -> None:
    def when(operand: str) -> object:
        src = f"policy: p\nversion: 1\nrules:\n  - {{id: r, when: {{arg: p, under: {json.dumps(operand)}}}, effect: deny}}\n"
        return compile_policy(src)["rules"][0]["when"]

    assert when("/srv/data/") == {"arg": ["p"], "op": "under", "value": "/srv/data"}
    assert when("//srv/./data") == {"arg": ["p"], "op": "under", "value": "/srv/data"}
    for bad, needle in (("srv/data", "absolute path"), ("/srv/../etc", "without `..`"), ("", "absolute path")):
        with pytest.raises(PolicyError, match="`under`") as exc:
            when(bad)
        assert needle in str(exc.value)
    with pytest.raises(PolicyError, match="needs a directory path"):
        compile_policy("policy: p\nversion: 1\nrules:\n  - {id: r, when: {arg: p, under: 5}, effect: deny}\n")


def test_explain_names_the_value_and_the_operand_of_the_failing_test(tmp_path: Path) -> None:
    source = tmp_path / "p.policy.yaml"
    source.write_text("""
policy: p
version: 1
default: deny
rules:
  - id: small
    match: {tool: refund}
    when: {all: [{arg: amount, le: 100}, {arg: currency, in: [EUR, USD]}]}
    effect: allow
  - id: inside
    match: {tool: refund}
    when: {arg: path, under: /srv/data}
    effect: allow
  - id: has-code
    match: {tool: refund}
    when: {not: {arg: code, exists: false}}
    effect: allow
""")
    args = '{"amount": 500, "currency": "EUR", "path": "/srv/data/../etc"}'
    result = CliRunner().invoke(
        main,
        [
            "policy",
            "explain",
            str(source),
            "--upstream",
            "shop",
            "--tool",
            "refund",
            "--args",
            args,
            "--state-dir",
            str(tmp_path / "state"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    details = json.loads(result.stdout)["details"]
    assert details == {
        "small": "`amount` = 500 is not ≤ 100",
        "inside": '`path` = "/srv/data/../etc" (normalised: "/srv/etc") is not under "/srv/data"',
        "has-code": "not (`code` is missing (the test is `exists: false`))",
    }
    text = CliRunner().invoke(
        main,
        [
            "policy",
            "explain",
            str(source),
            "--upstream",
            "shop",
            "--tool",
            "refund",
            "--args",
            '{"amount": "5"}',
            "--state-dir",
            str(tmp_path / "state"),
        ],
    )
    assert '`amount` = "5" does not fit `≤ 100`' in " ".join(text.stdout.split())


DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"


def test_docs_policy_md_names_every_operator_match_key_and_outcome_key() -> None:
    from guard_mcp._policy._source import _MATCH_KEYS, _OUTCOME_KEYS, OPERATORS

    text = DOC.read_text(encoding="utf-8")
    for name in (*OPERATORS, *_MATCH_KEYS, *_OUTCOME_KEYS, "all", "any", "not"):
        assert f"`{name}`" in text, name


def test_every_example_in_docs_policy_md_compiles() -> None:
    import re

    import yaml

    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    compiled = 0
    for block in blocks:
        doc = yaml.safe_load(block)
        if not isinstance(doc, dict) or "rules" not in doc:
            continue
        doc.setdefault("policy", "example")
        doc.setdefault("version", 1)
        compile_policy(yaml.safe_dump(doc))
        compiled += 1
    assert compiled >= 6


DEMO_POLICIES = Path(__file__).resolve().parent.parent / "guard_mcp" / "demo" / "policies"


def test_policy_verify_is_not_stopped_by_a_variable_unset_in_an_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOME_UPSTREAM_KEY", raising=False)
    config = tmp_path / "upstreams.yaml"
    guard = (
        f"guard:\n  policy: {DEMO_POLICIES / 'shop.bundle.json'}\n"
        f"  trusted_policy_keys: [{DEMO_POLICIES / 'policy-signer.pub.pem'}]\n"
    )
    config.write_text(guard + "upstreams:\n  x:\n    command: x\n    env: {KEY: '${SOME_UPSTREAM_KEY}'}\n")
    state = str(tmp_path / "state")
    result = CliRunner().invoke(main, ["policy", "verify", "--config", str(config), "--state-dir", state])
    assert result.exit_code == 0, result.output
    assert "the guard would load it" in result.stdout
    # one unset in `guard:` still stops it, as it stops the guard
    config.write_text(guard.replace("policy: ", "policy: ${SOME_UPSTREAM_KEY}"))
    refused = CliRunner().invoke(main, ["policy", "verify", "--config", str(config), "--state-dir", state])
    assert refused.exit_code == 2 and "SOME_UPSTREAM_KEY" in refused.stderr
