"""Real database servers for the tests: PostgreSQL and MariaDB started on temporary data directories, on 127.0.0.1
and free ports, each with a database ``mindspider`` and a user ``crawler`` who logs in with a password.

Both refuse to run as root: their data directories belong to their own system users (``postgres``, ``mysql``), and
the servers run as those users (``runuser`` for PostgreSQL; ``mariadbd --user=mysql`` drops to it itself). Without
the server's programs a test skips saying why, except under ``CI``, where a database test that finds no server fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

DATABASE, USER, PASSWORD = "mindspider", "crawler", "crawler-s3cret-pw"
READER, READER_PASSWORD = "reader", "reader-s3cret-pw"  # may read the crawl tables, may not create a table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing(reason: str) -> None:
    """No server here: a failure under CI (which installs them), else a skip that says what to install."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(f"{reason}: apt install postgresql mariadb-server to run the database tests")


def own_directory(user: str) -> Path:
    """A new directory that ``user`` owns, under the system's temporary folder (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=f"weibo-sentiment-{user}-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o755)
    return path


def as_user(user: str, args: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *args] if os.geteuid() == 0 else args


@dataclass
class Server:
    """A running server: ``url(...)`` names its database; ``stop``/``start`` take it away and bring it back."""

    dialect: str  # postgresql, mariadb
    port: int
    directory: Path
    process: Optional[subprocess.Popen] = None  # MariaDB's (PostgreSQL's runs under pg_ctl)
    bin_dir: Optional[Path] = None

    def url(self, user: str = USER, password: Optional[str] = PASSWORD, database: str = DATABASE) -> str:
        driver = "postgresql+psycopg" if self.dialect == "postgresql" else "mysql+pymysql"
        secret = f":{password}" if password else ""
        return f"{driver}://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """A new empty database that ``crawler`` owns and ``reader`` may read; its URL (with the password)."""
        if self.dialect == "postgresql":
            self.admin("postgres", f"CREATE DATABASE {name} OWNER {USER}")
            self.admin(name, f"ALTER DEFAULT PRIVILEGES FOR USER {USER} IN SCHEMA public GRANT SELECT ON TABLES TO "
                             f"{READER}")  # fmt: skip
        else:
            self.admin("", f"CREATE DATABASE {name} CHARACTER SET utf8mb4; GRANT ALL ON {name}.* TO "
                           f"'{USER}'@'127.0.0.1'; GRANT SELECT ON {name}.* TO '{READER}'@'127.0.0.1';")  # fmt: skip
        return self.url(database=name)

    def admin(self, database: str, sql: str) -> None:
        """Run ``sql`` as the server's superuser, over its own socket."""
        if self.dialect == "postgresql":
            command = as_user("postgres", [str(self.bin_dir / "psql"), "-h", str(self.directory), "-p", str(self.port),
                                           "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql])
        else:
            client = shutil.which("mariadb") or shutil.which("mysql")
            command = [client, "--no-defaults", f"--socket={self.directory / 'mysqld.sock'}", "-u", "root", "-e", sql]
        subprocess.run(command, check=True, capture_output=True)

    def stop(self) -> None:
        if self.dialect == "postgresql":
            subprocess.run(as_user("postgres", [str(self.bin_dir / "pg_ctl"), "-D", str(self.directory / "data"),
                                                "-m", "immediate", "-w", "stop"]), capture_output=True)  # fmt: skip
        elif self.process is not None:
            self.process.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process = None

    def start(self) -> None:
        if self.dialect == "postgresql":
            _start_postgresql(self)
        else:
            _start_mariadb(self)


# ---- PostgreSQL ------------------------------------------------------------------------------------------------
def _postgresql_bin() -> Optional[Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _start_postgresql(server: Server) -> None:
    options = f"-p {server.port} -k {server.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    result = subprocess.run(as_user("postgres", [str(server.bin_dir / "pg_ctl"), "-D", str(server.directory / "data"),
                                                 "-l", str(server.directory / "server.log"), "-o", options, "-w",
                                                 "-t", "60", "start"]), capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        log = (server.directory / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{log}")


def start_postgresql() -> Server:
    bin_dir = _postgresql_bin()
    if bin_dir is None:
        missing("no PostgreSQL server (initdb) on this machine")
    directory = own_directory("postgres")
    secret = directory / "superuser-password"
    secret.write_text("postgres-s3cret-pw\n")
    if os.geteuid() == 0:
        os.chown(secret, pwd.getpwnam("postgres").pw_uid, -1)
    # Password logins over TCP (what the tests use), trust over the server's own socket (set-up below).
    subprocess.run(as_user("postgres", [str(bin_dir / "initdb"), "-D", str(directory / "data"), "-U", "postgres",
                                        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={secret}",
                                        "-E", "UTF8", "--locale=C.UTF-8"]),
                   check=True, capture_output=True)  # fmt: skip
    server = Server("postgresql", free_port(), directory, bin_dir=bin_dir)
    server.start()
    removed_when_this_process_ends(server)
    statements = [f"CREATE USER {USER} PASSWORD '{PASSWORD}'", f"CREATE DATABASE {DATABASE} OWNER {USER}",
                  f"CREATE USER {READER} PASSWORD '{READER_PASSWORD}'"]  # one at a time: CREATE DATABASE runs alone
    for sql in statements:
        server.admin("postgres", sql)
    # The reader may connect and read, not create (PostgreSQL 15 lets no one but the owner create in public).
    server.admin(DATABASE, f"ALTER DEFAULT PRIVILEGES FOR USER {USER} IN SCHEMA public GRANT SELECT ON TABLES TO "
                           f"{READER}")  # fmt: skip
    return server


# ---- MariaDB ----------------------------------------------------------------------------------------------------
def _start_mariadb(server: Server) -> None:
    log = open(server.directory / "server.log", "ab")
    server.process = subprocess.Popen(
        [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", "--user=mysql",
         f"--datadir={server.directory / 'data'}", f"--socket={server.directory / 'mysqld.sock'}",
         f"--port={server.port}", "--bind-address=127.0.0.1", f"--pid-file={server.directory / 'mysqld.pid'}",
         "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M", "--skip-log-bin",
         "--innodb-flush-log-at-trx-commit=2", "--character-set-server=utf8mb4"],
        stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("MariaDB did not start: " + (server.directory / "server.log").read_text(errors="replace")[-2000:])
        with suppress(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError("MariaDB did not start within 60 s")


def start_mariadb() -> Server:
    install = shutil.which("mariadb-install-db")
    if install is None or not (shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists()):
        missing("no MariaDB server (mariadb-install-db, mariadbd) on this machine")
    directory = own_directory("mysql")
    subprocess.run([install, "--no-defaults", "--user=mysql", f"--datadir={directory / 'data'}",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True)  # fmt: skip
    server = Server("mariadb", free_port(), directory)
    server.start()
    removed_when_this_process_ends(server)
    sql = (f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4; "
           f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
           f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1'; "
           f"CREATE USER '{READER}'@'127.0.0.1' IDENTIFIED BY '{READER_PASSWORD}'; "
           f"GRANT SELECT ON {DATABASE}.* TO '{READER}'@'127.0.0.1';")
    server.admin("", sql)
    return server


def remove(server: Server) -> None:
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


def removed_when_this_process_ends(server: Server) -> None:
    """A watcher in a session of its own that stops the server and removes its directory once this process is gone,
    however it ends (a test run killed with SIGKILL has no teardown): no server is left behind."""
    if server.dialect == "postgresql":
        stop = " ".join(as_user("postgres", [str(server.bin_dir / "pg_ctl"), "-D", str(server.directory / "data"),
                                             "-m", "immediate", "-w", "stop"]))  # fmt: skip
    else:
        pid_file = server.directory / "mysqld.pid"  # the server's pid changes when a test restarts it
        stop = f"kill $(cat {pid_file}); sleep 5; kill -9 $(cat {pid_file})"
    script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; "
              f"rm -rf {server.directory}")
    # Not marked as a process of this test session (conftest.SESSION_MARK): it is meant to outlive the session.
    env = {name: value for name, value in os.environ.items() if name != "WEIBO_SENTIMENT_TEST_SESSION"}
    subprocess.Popen(["bash", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
