"""The guard's key store (rotation, JWKS publication, environments) and the `keys` / `permits` commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from permit_kit import ENV, ISSUER, REFUND, Guard, bundle, decision, permit_header, resign, sign_es256

from guard_mcp._clock import FakeClock, SystemClock
from guard_mcp._errors import PermitError
from guard_mcp._keys import PUBLISH_MARGIN, KeyStore
from guard_mcp._permits import PermitIssuer
from guard_mcp.cli import main
from guard_mcp.verify import PermitVerifier

# ------------------------------------------------------------------------------------- key store


def test_the_first_key_is_private_and_bound_to_its_environment(tmp_path: Path, clock: FakeClock) -> None:
    store = KeyStore(tmp_path, clock, environment=ENV)
    kid = store.ensure()
    assert (tmp_path / f"permit-{kid}.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keyring.json").stat().st_mode & 0o777 == 0o600
    assert store.ensure() == kid
    (jwk,) = store.jwks()["keys"]
    assert {k: jwk[k] for k in ("kid", "use", "alg", "kty", "crv", "guard_env")} == {
        "kid": kid,
        "use": "sig",
        "alg": "ES256",
        "kty": "EC",
        "crv": "P-256",
        "guard_env": ENV,
    }
    assert "d" not in jwk


def test_a_key_made_without_an_environment_is_claimed_by_the_first_guard(tmp_path: Path, clock: FakeClock) -> None:
    kid = KeyStore(tmp_path, clock).ensure()
    assert "guard_env" not in KeyStore(tmp_path, clock).jwks()["keys"][0]
    assert KeyStore(tmp_path, clock, environment="staging").ensure() == kid
    assert KeyStore(tmp_path, clock).jwks()["keys"][0]["guard_env"] == "staging"


def test_a_key_of_another_environment_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    KeyStore(tmp_path, clock, environment="sandbox").ensure()
    with pytest.raises(PermitError, match="belongs to environment `sandbox`"):
        KeyStore(tmp_path, clock, environment="production").ensure()


def test_a_rotated_key_stays_published_until_its_last_permit_expired(tmp_path: Path, clock: FakeClock) -> None:
    store = KeyStore(tmp_path, clock, environment=ENV)
    old = store.ensure()
    new, retired = store.rotate(600)
    assert retired == old
    assert store.current().kid == new
    assert [k["kid"] for k in store.jwks()["keys"]] == [new, old]
    clock.advance(600 + PUBLISH_MARGIN)
    assert old in store.public_keys()
    clock.advance(1)
    assert [k["kid"] for k in store.jwks()["keys"]] == [new]
    assert set(store.public_keys()) == {new}
    # old signatures (audit checkpoints) stay checkable
    assert set(store.public_keys(include_retired=True)) == {new, old}


def test_a_rotated_key_keeps_its_environment(tmp_path: Path, clock: FakeClock) -> None:
    KeyStore(tmp_path, clock, environment="staging").ensure()
    new, _ = KeyStore(tmp_path, clock).rotate(300)
    assert KeyStore(tmp_path, clock).current().environment == "staging"
    assert KeyStore(tmp_path, clock).current().kid == new


def test_rotation_publishes_the_new_key_before_it_signs(tmp_path: Path, clock: FakeClock) -> None:
    store = KeyStore(tmp_path / "keys", clock, environment=ENV)
    store.ensure()
    seen: list[tuple[str, list[str]]] = []
    real_write = store.write_public_jwks

    def spy(path: Path, environment: str | None = None) -> None:
        real_write(path, environment)
        published = [k["kid"] for k in json.loads(path.read_text())["keys"]]
        seen.append((KeyStore(tmp_path / "keys", clock).current().kid, published))

    store.write_public_jwks = spy  # type: ignore[method-assign]
    new, _ = store.rotate(300, publish_to=tmp_path / "jwks.json")
    assert seen, "rotation did not publish"
    for signing, published in seen:
        assert signing in published
    assert new in seen[-1][1]


def test_the_keyring_is_re_read_only_when_it_changes(tmp_path: Path, clock: FakeClock) -> None:
    store = KeyStore(tmp_path, clock, environment=ENV)
    first = store.ensure()
    reads = 0
    real = Path.read_text

    def counting(self: Path, *args: Any, **kwargs: Any) -> str:
        nonlocal reads
        if self.name == "keyring.json":
            reads += 1
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_text", counting)
        for _ in range(20):
            assert store.current().kid == first
        assert reads <= 1
        second, _ = KeyStore(tmp_path, clock).rotate(300)
        assert store.current().kid == second


def test_a_corrupt_keyring_is_an_error_not_a_new_key(tmp_path: Path, clock: FakeClock) -> None:
    store = KeyStore(tmp_path, clock, environment=ENV)
    store.ensure()
    (tmp_path / "keyring.json").write_text("{broken")
    with pytest.raises(PermitError, match="keyring"):
        store.current()


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    config = tmp_path / "upstreams.yaml"
    config.write_text(f"guard:\n  environment: {ENV}\n  permits: {{issuer: {ISSUER}}}\nupstreams: {{}}\n")
    state = tmp_path / "state"

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, [*args, "--config", str(config), "--state-dir", str(state)], input=input)

    run.state = state  # type: ignore[attr-defined]
    return run


def test_keys_init_makes_one_private_key_and_publishes_it(cli: Any) -> None:
    first = cli("keys", "init", "--json")
    assert first.exit_code == 0, first.output
    made = json.loads(first.output)
    assert made["created"] is True
    key_file = cli.state / "keys" / f"permit-{made['kid']}.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    published = json.loads((cli.state / "jwks.json").read_text())
    assert [k["kid"] for k in published["keys"]] == [made["kid"]]
    again = json.loads(cli("keys", "init", "--json").output)
    assert (again["kid"], again["created"]) == (made["kid"], False)


def test_keys_init_policy_signer(cli: Any, tmp_path: Path) -> None:
    result = cli("keys", "init", "--policy-signer")
    assert result.exit_code == 0, result.output
    private = cli.state / "keys" / "policy-signer.pem"
    public = cli.state / "keys" / "policy-signer.pub.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    pub = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(pub, ec.EllipticCurvePublicKey)
    assert key.public_key().public_numbers() == pub.public_numbers()
    # never silently replaced
    refused = cli("keys", "init", "--policy-signer")
    assert refused.exit_code == 2
    assert "--force" in refused.output
    assert private.read_bytes() == key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out = tmp_path / "signer"
    assert cli("keys", "init", "--policy-signer", "--out", str(out)).exit_code == 0
    assert (out / "policy-signer.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "policy-signer.pub.pem").exists()


def test_keys_rotate_and_jwks(cli: Any) -> None:
    first = json.loads(cli("keys", "init", "--json").output)["kid"]
    rotated = cli("keys", "rotate", "--json")
    assert rotated.exit_code == 0, rotated.output
    info = json.loads(rotated.output)
    assert info["retired"] == first
    printed = json.loads(cli("keys", "jwks").output)
    assert [k["kid"] for k in printed["keys"]] == [info["kid"], first]
    assert json.loads((cli.state / "jwks.json").read_text()) == printed


def _mint(cli: Any, **changes: Any) -> str:
    store = KeyStore(cli.state / "keys", environment=ENV)
    issuer = PermitIssuer(store, issuer=ISSUER, environment=ENV, clock=SystemClock())
    token = issuer.mint(bundle(), decision(), approver="bob@example.com").token
    if changes:
        guard = Guard(store, issuer, FakeClock(), ENV)
        token = resign(guard, token, **changes)
    return token


def test_permits_inspect_a_valid_permit(cli: Any) -> None:
    cli("keys", "init")
    token = _mint(cli)
    result = cli("permits", "inspect", token)
    assert result.exit_code == 0, result.output
    assert "refund.create" in result.output and "bob@example.com" in result.output
    assert "valid" in result.output
    as_json = json.loads(cli("permits", "inspect", token, "--json").output)
    assert as_json["valid"] is True and as_json["claims"]["aud"] == "shop"
    assert cli("permits", "inspect", "-", input=token + "\n").exit_code == 0


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda cli, t: t + "x", "malformed"),
        (
            lambda cli, t: _mint(cli, iat=int(time.time()) - 600, nbf=int(time.time()) - 600, exp=int(time.time()) - 1),
            "expired",
        ),
        (lambda cli, t: _mint(cli, iss="someone-else"), "wrong_issuer"),
        (lambda cli, t: _mint(cli, env="sandbox"), "wrong_environment"),
    ],
)
def test_permits_inspect_names_why_a_permit_is_invalid(cli: Any, tamper: Any, reason: str) -> None:
    cli("keys", "init")
    token = tamper(cli, _mint(cli))
    result = cli("permits", "inspect", token, "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["reason"] == reason


def test_permits_inspect_a_forgery(cli: Any) -> None:
    cli("keys", "init")
    claims = json.loads(cli("permits", "inspect", _mint(cli), "--json").output)["claims"]
    kid = json.loads(cli("keys", "jwks").output)["keys"][0]["kid"]
    forged = sign_es256(permit_header(kid), claims, ec.generate_private_key(ec.SECP256R1()))
    result = cli("permits", "inspect", forged)
    assert result.exit_code == 1
    assert "bad_signature" in result.output


def test_permits_inspect_does_not_render_markup_from_the_token(cli: Any) -> None:
    cli("keys", "init")
    token = _mint(cli, sub="[bold red]admin[/]")
    result = cli("permits", "inspect", token)
    assert "[bold red]admin[/]" in result.output


def test_permits_inspect_shows_a_date_no_calendar_holds_without_a_traceback(cli: Any) -> None:
    cli("keys", "init")
    token = _mint(cli, exp=10**30)
    result = cli("permits", "inspect", token)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a verdict, not an OverflowError
    assert "not a date" in result.output and "malformed" in result.output


def test_a_verifier_built_on_the_published_file_accepts_cli_rotations(cli: Any) -> None:
    cli("keys", "init")
    v = PermitVerifier(cli.state / "jwks.json", issuer=ISSUER, audience="shop", environment=ENV)
    assert v.verify(_mint(cli), action="refund.create", arguments=REFUND).valid
    cli("keys", "rotate")
    assert v.verify(_mint(cli), action="refund.create", arguments=REFUND).valid


def test_two_writers_saving_one_secret_file_at_once_never_collide(tmp_path: Path) -> None:
    import threading

    from guard_mcp._state import write_private

    target = tmp_path / "keyring.json"
    errors: list[BaseException] = []
    payloads = [bytes([65 + i]) * 4096 for i in range(2)]

    def save(data: bytes) -> None:
        try:
            for _ in range(300):
                write_private(target, data)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]  # no temporary left behind


def test_concurrent_rotations_lose_no_key(tmp_path: Path) -> None:
    import threading

    KeyStore(tmp_path, environment=ENV).ensure()
    made: list[str] = []
    start = threading.Barrier(6)

    def rotate() -> None:
        start.wait()
        new, _ = KeyStore(tmp_path, environment=ENV).rotate(300)
        made.append(new)

    workers = [threading.Thread(target=rotate) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ring = json.loads((tmp_path / "keyring.json").read_text())
    assert len(made) == 6 and set(made) <= set(ring["keys"])  # each "new signing key" is in the ring
    assert ring["current"] in made


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda r: r.update(current="gm-000000000000"), "is not in it"),
        (lambda r: r["keys"].update({"../../etc/passwd": {}}), "is not a key"),
        (lambda r: next(iter(r["keys"].values())).update(publish_until="soon"), "not a number"),
        (lambda r: next(iter(r["keys"].values())).update(created=float("nan")), "not a number"),
    ],
)
def test_a_damaged_keyring_is_one_clear_error_not_an_empty_jwks(tmp_path: Path, change: Any, says: str) -> None:
    KeyStore(tmp_path, environment=ENV).ensure()
    ring = json.loads((tmp_path / "keyring.json").read_text())
    change(ring)
    (tmp_path / "keyring.json").write_text(json.dumps(ring))
    with pytest.raises(PermitError, match=f"damaged .*{says}.*restore it from backup"):
        KeyStore(tmp_path, environment=ENV).jwks()


def test_a_signing_key_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, environment=ENV)
    kid = store.ensure()
    pem = tmp_path / f"permit-{kid}.pem"
    pem.unlink()
    pem.mkdir()  # not a file any more
    with pytest.raises(PermitError, match="cannot read signing key"):
        KeyStore(tmp_path, environment=ENV).current()


def test_keys_list_says_which_key_signs_and_until_when_a_retired_one_is_published(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = KeyStore(tmp_path, clock, environment=ENV)
    old = store.ensure()
    new, _ = store.rotate(600)
    listed = store.describe()
    assert [(k["kid"], k["state"]) for k in listed] == [(new, "signing"), (old, "published")]
    assert listed[1]["publish_until"] == int(clock.now()) + 600 + PUBLISH_MARGIN and listed[0]["environment"] == ENV
    clock.advance(600 + PUBLISH_MARGIN + 1)
    assert [k["state"] for k in store.describe()] == ["signing", "retired"]


def test_keys_list_on_the_command_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for args in (["keys", "init"], ["keys", "rotate"]):
        assert CliRunner().invoke(main, [*args, "--state-dir", str(state)]).exit_code == 0
    shown = CliRunner().invoke(main, ["keys", "list", "--state-dir", str(state), "--json"], catch_exceptions=False)
    assert [k["state"] for k in json.loads(shown.stdout)] == ["signing", "published"]
    plain = CliRunner().invoke(main, ["keys", "list", "--state-dir", str(state)], catch_exceptions=False)
    header, *rows = plain.stdout.splitlines()
    assert header.split("\t") == ["kid", "state", "created", "published until", "environment"]
    assert [r.split("\t")[1] for r in rows] == ["signing", "published"] and rows[1].split("\t")[3].endswith("UTC")
