"""A throwaway PostgreSQL server for tests: Debian's binaries (``make install`` brings the
``postgresql`` package), ``initdb`` into a temporary directory and ``pg_ctl start`` on a free port
of 127.0.0.1, as the ``postgres`` user when the tests run as root (PostgreSQL refuses root).
Each test gets a database of its own (``PostgresServer.database``)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from services.cluster import free_port

SUPERUSER = "postgres"


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: Debian's newest under /usr/lib/postgresql, else the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def unavailable() -> str | None:
    """Why no test server can be started here, or None when one can."""
    if postgres_bin() is None:
        return "PostgreSQL's initdb and pg_ctl are not installed (make install brings Debian's postgresql package)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL cannot be started as another user"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return f"running as root and there is no {SUPERUSER!r} user to run PostgreSQL as"
    return None


def serving_or_skipped() -> Iterator[PostgresServer]:
    """The body of a fixture that yields a test server: started, and stopped afterwards; the test
    is skipped, with the reason, where none can run here."""
    import pytest

    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


class PostgresServer:
    """``with PostgresServer() as server:`` a running server; ``server.database()`` a new database's URL."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fmprog-postgres-"))
        self.data = self.dir / "data"
        self.host = "127.0.0.1"

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin / command[0]), *command[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120, cwd=self.dir)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, SUPERUSER)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync")
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "start", "-D", str(self.data), "-w", "-t", "60", "-o", options, "-l", str(self.dir / "log"))

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host={self.host} port={self.port} user={SUPERUSER} dbname=postgres") as db:
            db.autocommit = True
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
