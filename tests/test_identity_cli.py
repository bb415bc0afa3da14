"""The identity commands: `guard-mcp login`, the login column of `guard-mcp check`, and `serve --print-token`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from guard_mcp.cli import main
from guard_mcp.cli._check import login_cell

OAUTH = """
upstreams:
  remote:
    url: http://127.0.0.1:1/mcp
    auth: oauth
    timeout: 5s
"""


def _run(tmp_path: Path, config: str, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "upstreams.yaml"
    path.write_text(config)
    result = CliRunner().invoke(
        main, [*args, "--config", str(path), "--state-dir", str(tmp_path / "state")], env={"COLUMNS": "250"}
    )
    return result.exit_code, result.stdout, result.stderr


def test_check_lists_an_upstream_that_was_never_logged_in_and_sends_it_nothing(tmp_path: Path) -> None:
    code, out, _ = _run(tmp_path, OAUTH, "check", "--json", "--timeout", "5")
    [row] = json.loads(out)["upstreams"]
    assert code == 1 and row["state"] == "failed"
    assert row["login"] == {"logged_in": False, "expires_at": None, "refreshable": False, "note": "never logged in"}
    assert "guard-mcp login remote" in row["error"]


def test_check_shows_the_login_column(tmp_path: Path) -> None:
    code, out, _ = _run(tmp_path, OAUTH, "check")
    assert code == 1 and "login" in out and "needed: never logged in" in out


def test_the_login_column_counts_down_on_the_commands_clock() -> None:
    login = {"logged_in": True, "expires_at": 1_800_000_600.0, "refreshable": False, "note": ""}
    assert login_cell(login, now=1_800_000_000.0).plain == "logged in, token expires in 600s, then log in again"
    assert login_cell(login, now=1_800_000_600.0).plain == "logged in, token expired, then log in again"


def test_login_names_what_is_wrong_with_the_upstream_in_one_line(tmp_path: Path) -> None:
    code, _, err = _run(tmp_path, OAUTH, "login", "nosuch")
    assert code == 2 and "no upstream `nosuch`" in err and "`remote`" in err
    code, _, err = _run(tmp_path, "upstreams:\n  plain: {url: 'http://127.0.0.1:1/mcp'}\n", "login", "plain")
    assert code == 2 and "does not sign in with OAuth" in err and "auth: oauth" in err


def test_an_oauth_upstream_cannot_also_carry_an_authorization_header(tmp_path: Path) -> None:
    config = OAUTH + "    headers: {Authorization: 'Bearer static-token-0123456789'}\n"
    code, _, err = _run(tmp_path, config, "check")
    assert code == 2 and "two credentials" in err


def test_print_token_with_an_identity_provider_says_where_callers_sign_in(tmp_path: Path) -> None:
    code, out, err = _run(
        tmp_path, "guard:\n  http:\n    auth: {issuer: 'https://idp.example.com'}\n", "serve", "--print-token"
    )
    assert code == 2 and out == "" and "sign in with `https://idp.example.com`" in err


@pytest.mark.parametrize(
    ("auth", "said"),
    [
        ("{type: oauth, client_metadata_url: 'http://guard.example.com/client.json'}", "must be an https:// URL"),
        ("{type: oauth, client_metadata_url: 'https://guard.example.com'}", "with a path"),
        ("{type: oauth, client_id: guard, client_metadata_url: 'https://guard.example.com/c.json'}", "two clients"),
        ("{type: oauth, client_secret: s3cr3t-value}", "belongs to a `client_id`"),
    ],
)
def test_an_oauth_client_is_named_one_way(tmp_path: Path, auth: str, said: str) -> None:
    code, _, err = _run(tmp_path, OAUTH.replace("auth: oauth", f"auth: {auth}"), "check")
    assert code == 2 and said in err and "upstreams.remote.auth" in err
