"""A throwaway PostgreSQL server for the tests: one cluster per test session, one database per test.

The cluster lives in a temporary directory, is started with Debian's `initdb`/`pg_ctl` as the
unprivileged `postgres` user when the tests run as root (the server refuses to run as root), listens
on a free loopback port only, and is stopped when the session ends. Without the binaries (or without
psycopg) the PostgreSQL tests are skipped, saying what to install; CI installs both, so they run there.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PgCluster", "own_pg_cluster", "pg_binaries", "pg_cluster", "pg_url"]

_SKIP = (
    "PostgreSQL tests need the server binaries (`apt-get install -y postgresql`) and psycopg "
    "(`pip install -e '.[dev]'`): {}"
)


def pg_binaries() -> Path | None:
    """The newest installed server's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """A running server; `database()` makes a fresh empty database and answers its URL."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin = bin_dir
        self.data = root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._as: list[str] = []
        self.data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
            os.chown(self.data, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.data / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"`{' '.join(args[:2])}` failed: {done.stderr.strip()} {done.stdout.strip()} {tail}")

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
        )
        self.start_server()

    def stop_server(self) -> None:
        """Stop the server as an operator would (`pg_ctl stop -m fast`: clients are disconnected)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start_server(self) -> None:
        # fsync off: a test server's data dies with the session anyway, and the tests measure no durability.
        options = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.data / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def _cluster() -> Iterator[PgCluster]:
    bin_dir = pg_binaries()
    if bin_dir is None:
        pytest.skip(_SKIP.format("no /usr/lib/postgresql/*/bin/initdb"))
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        pytest.skip(_SKIP.format(exc))
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        pytest.skip(_SKIP.format("running as root needs `runuser` and the `postgres` user the package creates"))
    root = Path(tempfile.mkdtemp(prefix="guard-pg-"))
    cluster = PgCluster(bin_dir, root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    with _cluster() as cluster:
        yield cluster


@pytest.fixture
def own_pg_cluster() -> Iterator[PgCluster]:
    """A server of the test's own, for a test that stops and restarts it under a running guard."""
    with _cluster() as cluster:
        yield cluster


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A new, empty database on the session's server."""
    return pg_cluster.database()
