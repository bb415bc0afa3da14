"""Static secrets named by reference in upstreams.yaml: a file of the user's own, an environment
variable, the OS keyring; a secret written out loads with a warning; no value read is ever repeated."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import pytest
from click.testing import CliRunner
from guard_kit import running_guard
from identity_kit import free_port, serve_app
from keyring.backends import fail
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from guard_mcp._config import GuardConfig, load_config
from guard_mcp._errors import ConfigError
from guard_mcp._secrets import names_a_secret
from guard_mcp._state import StateDir
from guard_mcp.cli import main

CANARY = "canary-static-secret-7f3a9c2e51d04b68"
KEYRING_CANARY = "canary-keyring-secret-0b9e4d7c2a6f1835"


class MemoryKeyring(keyring.backend.KeyringBackend):
    """An OS keyring held in memory, behind the `keyring` library's own API."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # keyring leaves it untyped
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.items.pop((service, username), None)


@pytest.fixture
def os_keyring() -> Iterator[MemoryKeyring]:
    before = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    try:
        yield ring
    finally:
        keyring.set_keyring(before)


def secret_file(tmp_path: Path, content: str = CANARY + "\n", mode: int = 0o600, name: str = "tracker.token") -> Path:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> GuardConfig:
    path = tmp_path / "upstreams.yaml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    message = str(caught.value)
    assert "\n" not in message and CANARY not in message and KEYRING_CANARY not in message
    return message


HEADER = """
upstreams:
  tracker:
    url: http://127.0.0.1:1/mcp
    headers:
      Authorization: {REF}
"""


def test_a_header_reads_its_secret_from_a_file_beside_the_config_with_a_prefix(tmp_path: Path) -> None:
    secret_file(tmp_path)
    config = load(tmp_path, HEADER.replace("{REF}", '{file: tracker.token, prefix: "Bearer "}'))
    assert config.upstreams["tracker"].headers == {"Authorization": f"Bearer {CANARY}"}  # type: ignore[union-attr]
    assert config.warnings == ()


@pytest.mark.parametrize(("mode", "said"), [(0o644, "mode 0644"), (0o620, "mode 0620"), (0o604, "mode 0604")])
def test_attack_a_secret_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int, said: str) -> None:
    path = secret_file(tmp_path, mode=mode)
    message = refused(tmp_path, HEADER.replace("{REF}", "{file: tracker.token}"))
    assert "upstreams.yaml:6" in message and "`upstreams.tracker.headers.Authorization`" in message
    assert said in message and f"chmod 600 {path}" in message


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        (f"{CANARY}\nX-Injected: yes\n", "more than one line"),
    ],
)
def test_a_secret_file_that_does_not_hold_one_value_is_refused_without_quoting_it(
    tmp_path: Path, content: str | None, said: str
) -> None:
    if content is not None:
        secret_file(tmp_path, content)
    message = refused(tmp_path, HEADER.replace("{REF}", "{file: tracker.token}"))
    assert said in message and "tracker.token`" in message


def test_environment_references_name_what_is_missing(tmp_path: Path) -> None:
    text = HEADER.replace("{REF}", '{env: TRACKER_TOKEN, prefix: "Bearer "}')
    config = load(tmp_path, text, {"TRACKER_TOKEN": CANARY})
    assert config.upstreams["tracker"].headers["Authorization"] == f"Bearer {CANARY}"  # type: ignore[union-attr]
    assert "`TRACKER_TOKEN` is not set" in refused(tmp_path, text)
    assert "`TRACKER_TOKEN` is empty" in refused(tmp_path, text, {"TRACKER_TOKEN": ""})


@pytest.mark.parametrize(
    ("ref", "said"),
    [
        ("{file: a, env: B}", "names one place"),
        ("{path: a}", "unknown key `path`"),
        ("{keyring: tracker}", "must be `SERVICE/NAME`"),
    ],
)
def test_a_malformed_reference_says_how_to_write_one(tmp_path: Path, ref: str, said: str) -> None:
    assert said in refused(tmp_path, HEADER.replace("{REF}", ref))


OAUTH = """
upstreams:
  tracker:
    url: http://127.0.0.1:1/mcp
    auth: {type: oauth, client_id: guard, client_secret: {keyring: tracker/guard-client}}
"""


def test_a_client_secret_comes_from_the_os_keyring(tmp_path: Path, os_keyring: MemoryKeyring) -> None:
    os_keyring.set_password("tracker", "guard-client", KEYRING_CANARY)
    config = load(tmp_path, OAUTH)
    auth = config.upstreams["tracker"].auth  # type: ignore[union-attr]
    assert auth is not None and auth.client_secret == KEYRING_CANARY


def test_a_keyring_entry_that_is_missing_says_how_to_store_it(tmp_path: Path, os_keyring: MemoryKeyring) -> None:
    message = refused(tmp_path, OAUTH)
    assert "`upstreams.tracker.auth.client_secret`" in message
    assert "holds no `guard-client` for service `tracker`" in message and "keyring set tracker guard-client" in message


def test_no_os_keyring_at_all_is_one_line_naming_the_alternatives(tmp_path: Path) -> None:
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]  # keyring leaves it untyped
    try:
        message = refused(tmp_path, OAUTH)
    finally:
        keyring.set_keyring(before)
    assert "no OS keyring is available to read `tracker/guard-client`" in message and "{file: PATH}" in message


def test_urls_that_hold_credentials_come_by_reference_too(tmp_path: Path) -> None:
    secret_file(tmp_path, "slack://T000/B000/" + CANARY + "\n", name="slack.url")
    config = load(
        tmp_path,
        "guard:\n  store: {env: GUARD_STORE}\n  notify:\n    targets:\n      team: {apprise: {file: slack.url}}\n",
        {"GUARD_STORE": f"postgresql://guard:{CANARY}@db.internal/guard"},
    )
    assert config.guard.store == f"postgresql://guard:{CANARY}@db.internal/guard"
    assert config.guard.notify.targets["team"].apprise == f"slack://T000/B000/{CANARY}"
    message = refused(tmp_path, "guard:\n  store: {env: GUARD_STORE}\n", {"GUARD_STORE": f"mysql://{CANARY}@db/x"})
    assert "`guard.store` must be a `postgresql://" in message  # checked like a value written out, not quoted


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("Proxy-Authorization", True),
        ("X-Api-Key", True),
        ("X-Auth-Token", True),
        ("OPENAI_API_KEY", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("PGPASSWORD", True),
        ("Cookie", True),
        ("GITHUB_PAT_TOKEN", True),
        ("Accept", False),
        ("LOG_LEVEL", False),
        ("AUTH_MODE", False),
        ("KEYBOARD_LAYOUT", False),
        ("SESSION_TIMEOUT", False),
        ("TOKENIZER_WORKERS", False),
    ],
)
def test_which_names_hold_a_credential(name: str, secret: bool) -> None:
    assert names_a_secret(name) is secret


class BrokenKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError(f"org.freedesktop.DBus.Error.ServiceUnknown while reading {KEYRING_CANARY}")


def test_a_keyring_that_fails_is_one_line_that_does_not_repeat_its_error(tmp_path: Path) -> None:
    before = keyring.get_keyring()
    keyring.set_keyring(BrokenKeyring())
    try:
        message = refused(tmp_path, OAUTH)
    finally:
        keyring.set_keyring(before)
    assert "`tracker/guard-client`" in message and "DBus" not in message


INLINE = """
guard:
  http: {token: inline-http-token-0123456789}
upstreams:
  tracker:
    url: http://127.0.0.1:1/mcp
    headers: {X-Api-Key: KEYVALUE, Accept: application/json, Authorization: "Bearer ${TRACKER_TOKEN}"}
  files:
    command: files-server
    env: {GITHUB_TOKEN: KEYVALUE, LOG_LEVEL: debug}
"""


def test_a_secret_written_out_loads_with_a_warning_that_does_not_repeat_it(tmp_path: Path) -> None:
    config = load(tmp_path, INLINE.replace("KEYVALUE", CANARY), {"TRACKER_TOKEN": "t" * 20})
    warned = [w.split(": ", 1)[1].split(" ", 1)[0] for w in config.warnings]
    assert warned == [
        "`guard.http.token`",
        "`upstreams.tracker.headers.X-Api-Key`",
        "`upstreams.files.env.GITHUB_TOKEN`",
    ]
    assert config.warnings[1].startswith(f"{tmp_path / 'upstreams.yaml'}:7:") and "{file: PATH}" in config.warnings[1]
    assert not any(CANARY in w for w in config.warnings)


def test_a_password_written_into_a_url_warns_too(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""
guard:
  store: postgresql://guard:{CANARY}@db.internal/guard
  notify:
    targets:
      mail: {{apprise: "mailtos://ops:{CANARY}@mail.example.com"}}
      chat: {{apprise: "ntfys://ntfy.example.com/approvals"}}
""",
    )
    assert [w.split(": ", 1)[1].split(" ", 1)[0] for w in config.warnings] == [
        "`guard.store`",
        "`guard.notify.targets.mail.apprise`",
    ]
    assert not any(CANARY in w for w in config.warnings)


def test_check_and_serve_print_the_warning(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.yaml"
    path.write_text("guard:\n  http: {token: inline-http-token-0123456789}\nupstreams: {}\n")
    args = ["--config", str(path), "--state-dir", str(tmp_path / "state")]
    checked = CliRunner().invoke(main, ["check", "--json", *args], env={"COLUMNS": "250"})
    report = json.loads(checked.stdout)
    assert report["ok"] is True and any("`guard.http.token` is written out" in w for w in report["warnings"])
    token = CliRunner().invoke(main, ["serve", "--print-token", *args])
    assert token.exit_code == 0 and "`guard.http.token` is written out" in token.stderr


@contextlib.asynccontextmanager
async def careless_upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP upstream that repeats the credentials it is sent, in a result and in an error."""
    seen: list[dict[str, str]] = []
    server = MCPServer("careless")

    @server.tool()
    def whoami() -> str:
        """Repeats the request's credentials."""
        headers = seen[-1]
        return f"you sent {headers.get('authorization')} and {headers.get('x-api-key')}"

    @server.tool()
    def fail_loudly() -> str:
        """Refuses, quoting the credentials."""
        headers = seen[-1]
        raise ToolError(f"bad credentials: {headers.get('authorization')} / {headers.get('x-api-key')}")

    app = server.streamable_http_app()

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    port = free_port()
    async with serve_app(recording, port=port, lifespan="on"):
        yield f"http://127.0.0.1:{port}/mcp", seen


@pytest.mark.anyio
async def test_attack_secrets_read_by_reference_reach_the_upstream_and_never_the_client_logs_or_audit(
    tmp_path: Path, state: StateDir, os_keyring: MemoryKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file(tmp_path)
    os_keyring.set_password("tracker", "api", KEYRING_CANARY)
    async with careless_upstream() as (url, seen):
        config = load(
            tmp_path,
            f"""
upstreams:
  tracker:
    url: {url}
    headers:
      Authorization: {{file: tracker.token, prefix: "Bearer "}}
      X-Api-Key: {{keyring: tracker/api}}
    tools:
      whoami: {{category: read, reversibility: full, blast_radius: single, sensitivity: public}}
      fail_loudly: {{category: read, reversibility: full, blast_radius: single, sensitivity: public}}
""",
        )
        async with running_guard(config, state) as guard, Client(guard.server) as client:
            outputs = [
                (await client.call_tool(t, {})).model_dump_json() for t in ("tracker__whoami", "tracker__fail_loudly")
            ]
    assert seen[-1]["authorization"] == f"Bearer {CANARY}" and seen[-1]["x-api-key"] == KEYRING_CANARY
    assert "you sent *** and ***" in outputs[0] and "bad credentials" in outputs[1]
    with sqlite3.connect(state.database) as conn:
        audit = "\n".join(d for (d,) in conn.execute("SELECT data FROM audit_events"))
    logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mcp.server"))
    for canary in (CANARY, KEYRING_CANARY):
        assert canary not in "\n".join(outputs) and canary not in audit and canary not in logs


def test_a_fifo_or_a_directory_is_no_secret_file_and_loading_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "tracker.token", 0o600)
    assert "is not a regular file" in refused(tmp_path, HEADER.replace("{REF}", "{file: tracker.token}"))
    (tmp_path / "dir.token").mkdir(mode=0o700)
    assert "dir.token" in refused(tmp_path, HEADER.replace("{REF}", "{file: dir.token}"))


@pytest.mark.subprocess
def test_a_secret_stored_with_the_keyring_command_reaches_the_guard(tmp_path: Path) -> None:
    """The user's way, in processes of their own: `keyring set`, then the guard reads it (keyrings.alt's
    file keyring standing in for the desktop's, through the same `keyring` library and its CLI)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
    }
    path = tmp_path / "upstreams.yaml"
    path.write_text("guard:\n  http: {token: {keyring: guard-mcp/http}}\nupstreams: {}\n")
    serve = [
        sys.executable,
        "-m",
        "guard_mcp.cli",
        "serve",
        "--print-token",
        "--config",
        str(path),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    missing = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=60)
    stored = subprocess.run(
        [sys.executable, "-m", "keyring", "set", "guard-mcp", "http"],
        input=KEYRING_CANARY,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    served = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stdout == ""
    [line] = missing.stderr.strip().splitlines()
    assert "`guard.http.token`" in line and "keyring set guard-mcp http" in line
    assert stored.returncode == 0, stored.stderr
    assert served.returncode == 0 and served.stdout.strip() == KEYRING_CANARY and "written out" not in served.stderr
