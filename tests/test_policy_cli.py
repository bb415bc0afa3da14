"""`guard-mcp policy …` end to end through click: compile, sign, verify, test, explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _policy_kit import make_signer, shop_source
from click.testing import CliRunner

from guard_mcp.cli import main

DEMO = Path(__file__).parent.parent / "guard_mcp" / "demo" / "policies"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _run(runner: CliRunner, tmp_path: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(main, [*args, "--state-dir", str(tmp_path / "state")], catch_exceptions=False)
    return result.exit_code, result.output


def _config(tmp_path: Path, bundle: Path, pub: Path) -> Path:
    cfg = tmp_path / "upstreams.yaml"
    cfg.write_text(f"guard:\n  policy: {bundle}\n  trusted_policy_keys: [{pub}]\nupstreams: {{}}\n")
    return cfg


def test_compile_sign_verify_round_trip(runner: CliRunner, tmp_path: Path) -> None:
    src = tmp_path / "shop.policy.yaml"
    src.write_text(shop_source(7))
    signer = make_signer(tmp_path / "keys")
    code, out = _run(runner, tmp_path, "policy", "compile", str(src))
    assert code == 0, out
    bundle = tmp_path / "shop.bundle.json"
    assert bundle.exists()
    code, out = _run(runner, tmp_path, "policy", "sign", str(bundle), "--key", str(signer.private_pem))
    assert code == 0, out
    assert (tmp_path / "shop.bundle.json.sig").exists()
    cfg = _config(tmp_path, bundle, signer.public_pem)
    code, out = _run(runner, tmp_path, "policy", "verify", "--config", str(cfg), "--json")
    assert code == 0, out
    assert json.loads(out)["policy"] == "shop@7"


def test_verify_exits_non_zero_on_a_tampered_bundle(runner: CliRunner, tmp_path: Path) -> None:
    src = tmp_path / "shop.policy.yaml"
    src.write_text(shop_source(1))
    signer = make_signer(tmp_path / "keys")
    bundle = tmp_path / "shop.bundle.json"
    _run(runner, tmp_path, "policy", "compile", str(src), "-o", str(bundle))
    _run(runner, tmp_path, "policy", "sign", str(bundle), "--key", str(signer.private_pem))
    bundle.write_bytes(bundle.read_bytes().replace(b'"allow"', b'"alloW"', 1))
    code, out = _run(
        runner,
        tmp_path,
        "policy",
        "verify",
        str(bundle),
        "--config",
        str(_config(tmp_path, bundle, signer.public_pem)),
        "--json",
    )
    assert code == 1
    assert json.loads(out)["reason"] == "digest_mismatch"


def test_compile_reports_a_bad_policy_in_one_line(runner: CliRunner, tmp_path: Path) -> None:
    src = tmp_path / "bad.policy.yaml"
    src.write_text('policy: p\nversion: 1\nrules:\n- {id: small, when: {arg: amount, le: "ten"}, effect: allow}\n')
    result = runner.invoke(main, ["policy", "compile", str(src), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "rule `small`" in result.output and "`le` needs a number" in result.output
    assert not (tmp_path / "bad.bundle.json").exists()


def test_the_demo_cases_pass_against_the_demo_source_and_bundle(runner: CliRunner, tmp_path: Path) -> None:
    for policy in ("shop.policy.yaml", "shop.bundle.json"):
        code, out = _run(
            runner,
            tmp_path,
            "policy",
            "test",
            str(DEMO / policy),
            str(DEMO / "shop.cases.yaml"),
            "--config",
            str(DEMO.parent / "upstreams.yaml"),
            "--json",
        )
        assert code == 0, out
        report = json.loads(out)
        assert report["failed"] == 0 and report["passed"] >= 10


def test_policy_test_exits_non_zero_on_a_mismatch(runner: CliRunner, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "cases:\n"
        "  - {name: ok, action: refund.create, category: financial, arguments: {amount: 5}, expect: {effect: allow}}\n"
        "  - {name: wrong, action: refund.create, category: financial, arguments: {amount: 5000},"
        " expect: {effect: allow}}\n"
    )
    src = tmp_path / "p.yaml"
    src.write_text(shop_source(1))
    code, out = _run(runner, tmp_path, "policy", "test", str(src), str(cases))
    assert code == 1
    assert "FAIL" in out and "PASS" in out and "1/2 passed" in out


def test_explain_shows_every_rule(runner: CliRunner, tmp_path: Path) -> None:
    src = tmp_path / "p.yaml"
    src.write_text(shop_source(1))
    code, out = _run(
        runner,
        tmp_path,
        "policy",
        "explain",
        str(src),
        "--action",
        "refund.create",
        "--category",
        "financial",
        "--args",
        '{"amount": 500}',
        "--json",
    )
    assert code == 0, out
    decision = json.loads(out)["decision"]
    assert decision["effect"] == "approve"
    assert [(t["rule_id"], t["matched"]) for t in decision["trace"]] == [
        ("reads", False),
        ("refund-small", False),
        ("refund-medium", True),
    ]


def test_the_committed_demo_bundle_is_the_compiled_demo_source() -> None:
    from guard_mcp._policy import bundle_bytes, compile_policy_file

    assert bundle_bytes(compile_policy_file(DEMO / "shop.policy.yaml")) == (DEMO / "shop.bundle.json").read_bytes()


def test_switching_to_a_policy_of_another_name_takes_policy_accept(runner: CliRunner, tmp_path: Path) -> None:
    signer = make_signer(tmp_path / "keys")
    bundles = {}
    for name in ("shop", "lab"):
        src = tmp_path / f"{name}.policy.yaml"
        src.write_text(shop_source(1).replace("policy: shop", f"policy: {name}"))
        assert _run(runner, tmp_path, "policy", "compile", str(src))[0] == 0
        bundles[name] = tmp_path / f"{name}.bundle.json"
        assert _run(runner, tmp_path, "policy", "sign", str(bundles[name]), "--key", str(signer.private_pem))[0] == 0
    cfg = _config(tmp_path, bundles["shop"], signer.public_pem)
    code, out = _run(runner, tmp_path, "policy", "accept", "--config", str(cfg))
    assert code == 0 and "accepted shop@1" in out, out
    code, out = _run(runner, tmp_path, "policy", "verify", str(bundles["lab"]), "--config", str(cfg))
    assert code == 1 and "policy_switched" in out and "`guard-mcp policy accept`" in out
    code, out = _run(runner, tmp_path, "policy", "accept", str(bundles["lab"]), "--config", str(cfg), "--json")
    assert code == 0 and json.loads(out) == {
        "ok": True,
        "bundle": str(bundles["lab"]),
        "policy": "lab@1",
        "was": "shop",
    }
    assert _run(runner, tmp_path, "policy", "verify", str(bundles["lab"]), "--config", str(cfg))[0] == 0


def test_a_cases_file_that_is_not_yaml_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    cases = tmp_path / "c1.yaml"
    cases.write_text("cases: [ {name: a,\n  - broken\n")
    src = tmp_path / "p.yaml"
    src.write_text(shop_source(1))
    code, out = _run(runner, tmp_path, "policy", "test", str(src), str(cases))
    assert code == 2 and "invalid YAML" in out and len(out.strip().splitlines()) == 1, out
