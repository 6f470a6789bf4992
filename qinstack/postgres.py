"""A local PostgreSQL for `make stack` (compose runs the postgres image instead): its cluster in
QIN_STACK_DIR/postgres, one database per service."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from qinstack.health import postgres_ready, wait_until
from qinstack.process import Stop
from qinstack.settings import DATABASES, Settings, StackError


def postgres_bindir() -> Path:
    """Where the PostgreSQL server's programs are: POSTGRES_BIN, PATH, or Debian's /usr/lib/postgresql."""
    if os.environ.get("POSTGRES_BIN"):
        return Path(os.environ["POSTGRES_BIN"])
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    raise StackError(
        "PostgreSQL's server (postgres, initdb) was not found on PATH nor in /usr/lib/postgresql: install it "
        "(Debian: apt-get install postgresql; `make stack` does this as root) or set POSTGRES_BIN"
    )


def _as_postgres() -> dict[str, object]:
    """Popen arguments that run PostgreSQL's programs as the `postgres` user when we are root (initdb and
    postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError("running as root, but there is no `postgres` user to run PostgreSQL as") from exc
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _initdb(bindir: Path, data: Path, s: Settings) -> None:
    """A new cluster in `data`, made in `<data>.partial` and renamed: an initdb that fails half-way leaves
    nothing that the next start would take for a cluster."""
    who = _as_postgres()
    final, data = data, data.with_name(data.name + ".partial")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    with tempfile.NamedTemporaryFile("w", prefix="qin-pg-", delete=False) as f:
        f.write(s.pg_password + "\n")
    try:
        if who:
            for path in (data, Path(f.name)):
                os.chown(path, int(who["user"]), int(who["group"]))  # type: ignore[call-overload]
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", s.pg_user, f"--pwfile={f.name}", "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"],
            check=True,
            stdout=subprocess.DEVNULL,
            **who,  # type: ignore[call-overload]
        )  # fmt: skip
        os.replace(data, final)
    finally:
        os.unlink(f.name)


def create_databases(s: Settings) -> None:
    """One database per service (DATABASES), owned by POSTGRES_USER; those that exist are kept."""
    import psycopg2

    conn = psycopg2.connect(
        host=s.pg_host, port=s.pg_port, user=s.pg_user, password=s.pg_password, dbname="postgres"
    )
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction (nor in psycopg2's `with conn`)
    try:
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}" OWNER "{s.pg_user}"')
    finally:
        conn.close()


def run_postgres(s: Settings) -> int:
    """The postgres service: the cluster (made on the first start, the superuser POSTGRES_USER with
    POSTGRES_PASSWORD), TCP on STACK_BIND:POSTGRES_PORT only, and its databases."""
    s.require("postgres", "POSTGRES_PASSWORD")
    bindir = postgres_bindir()
    data = s.state_dir / "postgres"
    if not (data / "PG_VERSION").exists():
        print(f"postgres: a new cluster in {data}", flush=True)
        _initdb(bindir, data, s)
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(s.pg_port),
         "-c", f"listen_addresses={s.bind}", "-c", "unix_socket_directories="],
        **_as_postgres(),  # type: ignore[call-overload]
    )  # fmt: skip
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to disconnect).
    Stop(on_stop=lambda: proc.send_signal(signal.SIGINT), on_second=proc.kill)
    try:
        wait_until("PostgreSQL", lambda: postgres_ready(s), timeout=60, alive=lambda: proc.poll() is None)
        create_databases(s)
        print(f"postgres: ready on {s.pg_host}:{s.pg_port}, databases {', '.join(DATABASES)}", flush=True)
    except BaseException:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    return proc.wait()
