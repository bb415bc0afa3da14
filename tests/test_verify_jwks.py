"""Where the verifier gets its keys: a file that follows rotation, and a URL cached with a TTL."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from permit_kit import REFUND, Guard

from guard_mcp._clock import FakeClock
from guard_mcp._jwks import parse_jwks
from guard_mcp.verify import PermitVerifier


@pytest.fixture
def guard(tmp_path: Path, clock: FakeClock) -> Guard:
    return Guard.create(tmp_path / "keys", clock)


def ok(v: PermitVerifier, token: str) -> str | None:
    return v.verify(token, action="refund.create", arguments=dict(REFUND)).reason


# ------------------------------------------------------------------------------------------ file


def test_a_jwks_file_follows_rotation(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    guard.keys.write_public_jwks(path)
    v = guard.verifier(jwks=path)
    before = guard.mint()
    assert ok(v, before.token) is None
    guard.keys.rotate(300)
    after = guard.mint()
    assert ok(v, after.token) == "unknown_key"  # not published yet
    guard.keys.write_public_jwks(path)
    assert ok(v, after.token) is None
    assert ok(v, guard.mint().token) is None


def test_a_permit_signed_before_rotation_still_verifies_after_it(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    old = guard.mint()
    guard.keys.rotate(300)
    guard.keys.write_public_jwks(path)
    assert ok(guard.verifier(jwks=path), old.token) is None


def test_a_missing_or_corrupt_jwks_file_fails_closed(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    v = guard.verifier(jwks=path)
    assert ok(v, guard.mint().token) == "unknown_key"
    path.write_text("{not json")
    assert ok(v, guard.mint().token) == "unknown_key"
    guard.keys.write_public_jwks(path)
    assert ok(v, guard.mint().token) is None
    path.unlink()
    assert ok(v, guard.mint().token) == "unknown_key"


def test_the_published_file_is_public_and_holds_no_private_key(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "pub" / "jwks.json"
    guard.keys.write_public_jwks(path)
    assert path.stat().st_mode & 0o777 == 0o644
    (jwk,) = json.loads(path.read_text())["keys"]
    assert "d" not in jwk
    assert jwk["kid"] == guard.keys.current().kid


def test_a_kid_listed_twice_is_ambiguous_and_dropped(guard: Guard) -> None:
    (jwk,) = guard.keys.jwks()["keys"]
    other = Guard.create(guard.keys.root.parent / "other", guard.clock).keys.jwks()["keys"][0]
    doubled = {"keys": [jwk, {**other, "kid": jwk["kid"]}]}
    assert parse_jwks(doubled) == {}
    assert ok(guard.verifier(jwks=doubled), guard.mint().token) == "unknown_key"


@pytest.mark.parametrize(
    "change",
    [
        {"crv": "P-384"},
        {"kty": "RSA"},
        {"alg": "HS256"},
        {"use": "enc"},
        {"x": "AAAA"},
        {"d": "secret"},
        {"y": "A" * 43},
    ],
)
def test_unusable_jwks_entries_are_skipped(guard: Guard, change: dict[str, str]) -> None:
    (jwk,) = guard.keys.jwks()["keys"]
    assert ok(guard.verifier(jwks={"keys": [{**jwk, **change}]}), guard.mint().token) == "unknown_key"


# ------------------------------------------------------------------------------------------- url


class _JwksEndpoint:
    """A local HTTP server whose JWKS (or failure) the test controls."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = {"keys": []}
        self.hits = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.hits += 1
                if endpoint.body is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                data = json.dumps(endpoint.body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[_JwksEndpoint]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    e = _JwksEndpoint()
    yield e
    e.close()


def url_verifier(guard: Guard, url: str, ttl: float = 300) -> PermitVerifier:
    return PermitVerifier(
        url, issuer="guard-mcp", audience="shop", environment=guard.environment, clock=guard.clock, jwks_ttl=ttl
    )


def test_a_url_jwks_is_cached_for_its_ttl(guard: Guard, clock: FakeClock, endpoint: _JwksEndpoint) -> None:
    endpoint.body = guard.keys.jwks()
    v = url_verifier(guard, endpoint.url)
    for _ in range(5):
        assert ok(v, guard.mint().token) is None
    assert endpoint.hits == 1
    clock.advance(151)  # past half the TTL: refreshed
    assert ok(v, guard.mint().token) is None
    assert endpoint.hits == 2


def test_cached_keys_outlive_an_outage_until_the_ttl_then_fail_closed(
    guard: Guard, clock: FakeClock, endpoint: _JwksEndpoint
) -> None:
    endpoint.body = guard.keys.jwks()
    v = url_verifier(guard, endpoint.url)
    assert ok(v, guard.mint().token) is None
    endpoint.body = None  # the endpoint goes down
    clock.advance(200)
    assert ok(v, guard.mint().token) is None  # refresh failed, cache still within its TTL
    assert endpoint.hits == 2
    clock.advance(100)
    assert ok(v, guard.mint().token) == "unknown_key"  # TTL over: no keys at all
    endpoint.body = guard.keys.jwks()  # back up
    clock.advance(5)
    assert ok(v, guard.mint().token) is None


def test_an_unreachable_url_fails_closed(guard: Guard, endpoint: _JwksEndpoint) -> None:
    url = endpoint.url
    endpoint.close()
    endpoint.close = lambda: None  # type: ignore[method-assign]
    assert ok(url_verifier(guard, url), guard.mint().token) == "unknown_key"


def test_a_rotated_key_is_fetched_early(guard: Guard, clock: FakeClock, endpoint: _JwksEndpoint) -> None:
    endpoint.body = guard.keys.jwks()
    v = url_verifier(guard, endpoint.url)
    assert ok(v, guard.mint().token) is None
    guard.keys.rotate(300)
    endpoint.body = guard.keys.jwks()
    assert ok(v, guard.mint().token) is None  # unseen kid: one early refresh
    assert endpoint.hits == 2


def test_unknown_kids_cannot_hammer_the_endpoint(guard: Guard, endpoint: _JwksEndpoint) -> None:
    endpoint.body = guard.keys.jwks()
    v = url_verifier(guard, endpoint.url)
    assert ok(v, guard.mint().token) is None
    stranger = Guard.create(guard.keys.root.parent / "stranger", guard.clock)
    for _ in range(20):
        assert ok(v, stranger.mint().token) == "unknown_key"
    assert endpoint.hits == 2


def test_an_oversized_or_invalid_jwks_response_is_not_used(guard: Guard, endpoint: _JwksEndpoint) -> None:
    endpoint.body = {"keys": guard.keys.jwks()["keys"], "pad": "x" * (1 << 20)}
    assert ok(url_verifier(guard, endpoint.url), guard.mint().token) == "unknown_key"
    endpoint.body = {"no": "keys"}
    assert ok(url_verifier(guard, endpoint.url), guard.mint().token) == "unknown_key"


# ------------------------------------------------------------------------------ who may write it

NOBODY = 65534
as_root = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0, reason="giving a file to another user (uid 65534) needs root"
)


def file_verifier(guard: Guard, path: Path, **kw: Any) -> PermitVerifier:
    return PermitVerifier(
        path, issuer="guard-mcp", audience="shop", environment=guard.environment, clock=guard.clock, **kw
    )


def refusal(v: PermitVerifier, token: str) -> tuple[str | None, str]:
    result = v.verify(token, action="refund.create", arguments=dict(REFUND))
    return result.reason, result.detail or ""


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_jwks_file_others_can_write_is_not_trusted(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    guard.keys.write_public_jwks(path)
    v = file_verifier(guard, path)
    assert ok(v, guard.mint().token) is None
    os.chmod(path, 0o666)  # another local user can now publish their own key and mint permits
    intruder = Guard.create(tmp_path / "intruder", guard.clock)
    path.write_text(json.dumps(intruder.keys.jwks()))
    reason, detail = refusal(v, intruder.mint().token)
    assert reason == "unknown_key"
    assert f"JWKS `{path}` is writable by group or others (mode 0666)" in detail and "chmod go-w" in detail
    assert refusal(v, guard.mint().token)[0] == "unknown_key"  # no key at all from an untrusted file
    guard.keys.write_public_jwks(path)  # the guard rewrites it, 0644
    assert ok(v, guard.mint().token) is None and refusal(v, guard.mint().token)[1] == ""


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_chmod_alone_takes_the_trust_away_at_once(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    guard.keys.write_public_jwks(path)
    v = file_verifier(guard, path)
    assert ok(v, guard.mint().token) is None
    os.chmod(path, 0o664)  # content and mtime unchanged
    assert refusal(v, guard.mint().token)[0] == "unknown_key"


@as_root
def test_a_jwks_file_another_user_owns_is_trusted_only_when_they_are_the_expected_owner(
    guard: Guard, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    intruder = Guard.create(tmp_path / "intruder", guard.clock)
    path.write_text(json.dumps(intruder.keys.jwks()))  # another user swapped in their own keys (0644)
    os.chown(path, NOBODY, NOBODY)
    reason, detail = refusal(file_verifier(guard, path), intruder.mint().token)
    assert reason == "unknown_key"
    assert f"JWKS `{path}` belongs to uid 65534, not to uid {os.geteuid()} or root" in detail
    assert "expected_owner" in detail
    # Where the guard runs as uid 65534, the verifier names it, and then only that user (or root) is trusted.
    guard.keys.write_public_jwks(path)
    os.chown(path, NOBODY, NOBODY)
    assert ok(file_verifier(guard, path, expected_owner=NOBODY), guard.mint().token) is None
    os.chown(path, 0, 0)
    assert ok(file_verifier(guard, path, expected_owner=NOBODY), guard.mint().token) is None  # root may, too
    os.chown(path, NOBODY + 1, NOBODY + 1)
    assert refusal(file_verifier(guard, path, expected_owner=NOBODY), guard.mint().token)[0] == "unknown_key"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_jwks_path_that_is_not_a_regular_file_is_refused_without_hanging(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    os.mkfifo(path)  # a read would wait for a writer forever
    reason, detail = refusal(file_verifier(guard, path), guard.mint().token)
    assert reason == "unknown_key" and "is not a regular file" in detail


def test_a_missing_jwks_file_says_so_in_the_detail(guard: Guard, tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    reason, detail = refusal(file_verifier(guard, path), guard.mint().token)
    assert reason == "unknown_key" and f"cannot read JWKS `{path}`" in detail


def test_expected_owner_applies_to_a_jwks_file_only(guard: Guard) -> None:
    for jwks in (guard.keys.jwks(), "https://127.0.0.1:1/jwks.json"):
        with pytest.raises(ValueError, match="expected_owner"):
            PermitVerifier(jwks, issuer="guard-mcp", audience="shop", environment="production", expected_owner=0)
