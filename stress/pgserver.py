"""A private PostgreSQL server for the fault scenarios and their tests: started on a
spare port in a temporary directory, restarted and stopped at will, removed afterwards.

Never the shared server: the restart scenario restarts its server, which no other user
of the machine may notice. ``initdb`` refuses to run as root, so as root the server's
commands run as the ``postgres`` user (``runuser``), in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa

#: The database the server is created with for kanban_orm to use.
DATABASE = "kanban"
RUN_AS = "postgres"


class Unavailable(Exception):
    """No PostgreSQL server binaries (or no user to run them as) on this machine."""


def bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian's layout), or PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise Unavailable("no initdb: PostgreSQL's server binaries are not installed")
    return Path(initdb).parent


def spare_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class PrivateServer:
    """``with PrivateServer() as server:`` a fresh cluster listening on ``listen`` (TCP,
    a spare port unless given) with a database :data:`DATABASE`; ``server.url``."""

    def __init__(
        self, *, listen: str = "127.0.0.1", port: int | None = None, trust: tuple[str, ...] = ()
    ) -> None:
        self.listen = listen
        #: Networks (CIDR) whose clients are trusted too, besides the loopback.
        self.trust = trust
        self.port = port or spare_port(self._host())
        self.bin = bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="kanban_pg_"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.url = f"postgresql+psycopg://postgres@{self._host()}:{self.port}/{DATABASE}"

    def _host(self) -> str:
        first = self.listen.split(",")[0].strip()
        return "127.0.0.1" if first in ("*", "0.0.0.0") else first

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> PrivateServer:
        if os.geteuid() == 0:
            try:
                shutil.chown(self.dir, RUN_AS, RUN_AS)
            except (LookupError, PermissionError) as error:
                raise Unavailable(f"cannot hand {self.dir} to {RUN_AS}: {error}") from None
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        if self.trust:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in self.trust)
        self._ctl("start")
        admin = sa.create_engine(
            self.url.rsplit("/", 1)[0] + "/postgres",
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
        finally:
            admin.dispose()
        return self

    def _ctl(self, action: str, mode: str = "fast") -> None:
        options = (
            f"-p {self.port} -c listen_addresses='{self.listen}' "
            f"-c unix_socket_directories='{self.dir}' -c fsync=off -c max_connections=200"
        )
        argv = ["pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"]
        if action in ("start", "restart"):
            argv += ["-o", options]
        if action in ("stop", "restart"):
            argv += ["-m", mode]
        self._run(*argv)

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast``: every session is terminated, the server is down
        for a moment, then accepts connections again."""
        self._ctl("restart", mode)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", mode)

    def start_again(self) -> None:
        self._ctl("start")

    def close(self) -> None:
        """Stop the server (if up) and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
