"""Where a verifier finds the guard's public keys: a JWKS dict, a file, or an http(s) URL.

Every source answers one question, `key(kid, environment)`, and answers None whenever it cannot
vouch for a key: an unknown kid, a key published for another environment, a JWKS it could not
read, or a remote JWKS it has not been able to refresh within its TTL. The verifier turns None
into `unknown_key`, so every failure here fails closed.

A JWKS file is the upstream's trust anchor: whoever can write it can publish a key of their own and
mint permits. It is read only when its owner is the expected user (the verifying process's, unless
the caller names another) or root, and no one else can write it. A file source says in `problem`,
one line, why it has no keys; it is logged once each time it changes.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._jwk import ENV_MEMBER, public_key_from_jwk

__all__ = ["FileJwks", "JwksSource", "StaticJwks", "UrlJwks", "open_jwks", "parse_jwks"]

MAX_JWKS_BYTES = 1 << 20
_RETRY_AFTER_FAILURE = 5.0  # seconds between fetch attempts while the endpoint is failing
_UNKNOWN_KID_REFRESH = 30.0  # at most one early refetch per this many seconds for an unseen kid
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted there must not hang the read

log = logging.getLogger("guard_mcp.verify")

# kid -> (key, environment the publisher bound it to)
KeyTable = dict[str, tuple[ec.EllipticCurvePublicKey, str | None]]


class _Clock(Protocol):
    def now(self) -> float: ...


class JwksSource(Protocol):
    # Why the source has no keys right now, in one line, when it knows; None otherwise.
    problem: str | None

    def key(self, kid: str, environment: str) -> ec.EllipticCurvePublicKey | None: ...


def parse_jwks(data: Any) -> KeyTable:
    """The usable keys of a JWKS document. Unusable entries are skipped; a kid listed twice is
    ambiguous and dropped altogether."""
    table: KeyTable = {}
    dropped: set[str] = set()
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        return table
    for jwk in keys:
        key = public_key_from_jwk(jwk)
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        env = jwk.get(ENV_MEMBER) if isinstance(jwk, dict) else None
        if key is None or not isinstance(kid, str) or not kid or not (env is None or isinstance(env, str)):
            continue
        if kid in table or kid in dropped:
            table.pop(kid, None)
            dropped.add(kid)
            continue
        table[kid] = (key, env)
    return table


def _lookup(table: KeyTable | None, kid: str, environment: str) -> ec.EllipticCurvePublicKey | None:
    entry = table.get(kid) if table else None
    # A key without an environment binding is not trusted for any environment.
    if entry is None or entry[1] != environment:
        return None
    return entry[0]


class StaticJwks:
    problem: str | None = None

    def __init__(self, data: dict[str, Any]) -> None:
        self._table = parse_jwks(data)

    def key(self, kid: str, environment: str) -> ec.EllipticCurvePublicKey | None:
        return _lookup(self._table, kid, environment)


class FileJwks:
    """A JWKS file, re-read whenever it changes (the guard rewrites it when it rotates its key).

    `expected_owner` is the uid that must own it (root may too); default: this process's user.
    """

    def __init__(self, path: str | os.PathLike[str], *, expected_owner: int | None = None) -> None:
        self.path = Path(path)
        self.expected_owner = expected_owner
        self.problem: str | None = None
        self._stamp: tuple[int, ...] | None = None
        self._table: KeyTable | None = None
        self._lock = threading.Lock()

    def key(self, kid: str, environment: str) -> ec.EllipticCurvePublicKey | None:
        try:
            st = self.path.stat()
        except OSError as exc:
            with self._lock:
                self._set_problem(
                    f"cannot read JWKS `{self.path}`: {exc.strerror}; point the verifier at the "
                    "guard's published jwks.json"
                )
                self._stamp, self._table = None, None
            return None
        # ctime, mode and owner too: a chmod or chown changes whom the file can be trusted from.
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid)
        with self._lock:
            if stamp != self._stamp:
                self._table = self._read()
                self._stamp = stamp
            table = self._table
        return _lookup(table, kid, environment)

    def _set_problem(self, problem: str | None) -> None:
        if problem is not None and problem != self.problem:
            log.warning("%s", problem)
        self.problem = problem

    def _read(self) -> KeyTable | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | _NONBLOCK)
        except OSError as exc:
            self._set_problem(
                f"cannot read JWKS `{self.path}`: {exc.strerror}; point the verifier at the guard's published jwks.json"
            )
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                # The checks look at the file that is read, not at whatever the path named a moment before.
                problem = self._untrusted(os.fstat(f.fileno()))
                raw = f.read(MAX_JWKS_BYTES + 1) if problem is None else b""
        except OSError as exc:
            problem = f"cannot read JWKS `{self.path}`: {exc.strerror}; check its permissions"
        if problem is None and len(raw) > MAX_JWKS_BYTES:
            problem = f"JWKS `{self.path}` is over {MAX_JWKS_BYTES} bytes; point the verifier at the guard's jwks.json"
        table = None
        if problem is None:
            try:
                table = parse_jwks(json.loads(raw))
            except (ValueError, RecursionError):
                problem = f"JWKS `{self.path}` is not JSON; point the verifier at the guard's published jwks.json"
        self._set_problem(problem)
        return table

    def _untrusted(self, st: os.stat_result) -> str | None:
        if not stat.S_ISREG(st.st_mode):
            return f"JWKS `{self.path}` is not a regular file; point the verifier at the guard's jwks.json"
        if os.name != "posix":  # no owners or modes to check
            return None
        expected = os.geteuid() if self.expected_owner is None else self.expected_owner
        if st.st_uid not in (expected, 0):
            return (
                f"JWKS `{self.path}` belongs to uid {st.st_uid}, not to uid {expected} or root: its owner could "
                "publish a key of their own; have the guard's user own it, or pass that user's uid as "
                "`expected_owner`"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (
                f"JWKS `{self.path}` is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"anyone could have put a key of their own in it; run `chmod go-w {self.path}` and restart "
                "the guard, which rewrites it"
            )
        return None


class UrlJwks:
    """A remote JWKS, cached for `ttl` seconds.

    A refresh is attempted from half the TTL on. While refreshes fail, the cached keys keep
    verifying until the TTL has run out; after that there are no keys and every permit is
    `unknown_key` until a fetch succeeds again.
    """

    problem: str | None = None

    def __init__(self, url: str, *, ttl: float, clock: _Clock, timeout: float = 5.0) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"JWKS url `{url}` must start with https:// or http://")
        self.url = url
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._table: KeyTable | None = None
        self._fetched_at = 0.0
        self._next_attempt = 0.0
        self._last_early = float("-inf")
        self._lock = threading.Lock()

    def key(self, kid: str, environment: str) -> ec.EllipticCurvePublicKey | None:
        now = self._clock.now()
        with self._lock:
            if self._table is None or now >= self._fetched_at + self.ttl / 2:
                self._refresh(now)
            elif kid not in self._table and now - self._last_early >= _UNKNOWN_KID_REFRESH:
                # A kid we have not seen may be a freshly rotated key: look once, then wait.
                self._last_early = now
                self._refresh(now, force=True)
            if self._table is not None and now >= self._fetched_at + self.ttl:
                self._table = None  # stale beyond the TTL: fail closed
            table = self._table
        return _lookup(table, kid, environment)

    def _refresh(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._next_attempt:
            return
        data = self._fetch()
        if data is None:
            self._next_attempt = now + _RETRY_AFTER_FAILURE
            return
        self._table = parse_jwks(data)
        self._fetched_at = now
        self._next_attempt = now

    def _fetch(self) -> Any:
        import urllib.error  # here: only a remote JWKS is fetched, and `import guard_mcp.verify` stays light
        import urllib.request

        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                if response.status != 200:
                    return None
                raw = response.read(MAX_JWKS_BYTES + 1)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        if len(raw) > MAX_JWKS_BYTES:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("keys"), list) else None


def open_jwks(
    jwks: str | os.PathLike[str] | dict[str, Any], *, ttl: float, clock: _Clock, expected_owner: int | None = None
) -> JwksSource:
    if not isinstance(jwks, dict) and not os.fspath(jwks).startswith(("https://", "http://")):
        return FileJwks(jwks, expected_owner=expected_owner)
    if expected_owner is not None:
        raise ValueError("`expected_owner` applies to a JWKS file only; drop it or pass the file's path")
    return StaticJwks(jwks) if isinstance(jwks, dict) else UrlJwks(os.fspath(jwks), ttl=ttl, clock=clock)
