"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl on a private port and socket dir.

Uses Debian's packages (`apt-get install postgresql`). As root, the server runs as the
`postgres` user (initdb refuses root). Nothing is shared with a system cluster.

    python tests/pg_cluster.py run -- CMD ARGS...   # start, run CMD with ETR_HUB_TEST_DATABASE_URL, stop
    python tests/pg_cluster.py check                # exit 0 if a cluster can be started here, else say why
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SUPERUSER = "etr"
# Speed over durability: the cluster lives for one test run. A clean `pg_ctl restart` still
# checkpoints, so a restart loses nothing that was committed.
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here (the message says why)."""


def bindir() -> Path | None:
    """The newest Debian PostgreSQL bin dir (initdb is not on PATH there), else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    return Path(exe).resolve().parent if exe else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path | None = None):
        bins = bindir()
        if bins is None:
            raise Unavailable("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bin = bins
        self.run_as = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no 'postgres' user to run the server as") from None
            self.run_as = "postgres"
        self.root = Path(root or tempfile.mkdtemp(prefix="etr-pg-"))
        if self.run_as:
            shutil.chown(self.root, user=self.run_as)
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = _free_port()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        # Output to a file, not a pipe: the postmaster inherits it and would hold a pipe open.
        with tempfile.TemporaryFile("w+") as out:
            res = subprocess.run(
                [str(a) for a in args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=timeout,
                user=self.run_as,
                cwd=self.root,
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            )
            out.seek(0)
            said = out.read().strip()
        if res.returncode != 0:
            log = self.log.read_text()[-1500:] if self.log.exists() else ""
            raise Unavailable(f"{Path(args[0]).name} failed: {said[-800:]} {log}")

    def init(self) -> Cluster:
        self.sockets.mkdir()
        if self.run_as:
            shutil.chown(self.sockets, user=self.run_as)
        self._run(
            self.bin / "initdb",
            "-D",
            self.data,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        return self

    @property
    def _options(self) -> str:
        return f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c TimeZone=UTC {FAST}"

    def start(self) -> Cluster:
        self._run(self.bin / "pg_ctl", "start", "-w", "-t", "30", "-D", self.data, "-l", self.log, "-o", self._options)
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin / "pg_ctl", "stop", "-w", "-t", "30", "-m", mode, "-D", self.data)

    def restart(self, mode: str = "fast") -> None:
        self._run(
            self.bin / "pg_ctl",
            "restart",
            "-w",
            "-t",
            "30",
            "-m",
            mode,
            "-D",
            self.data,
            "-l",
            self.log,
            "-o",
            self._options,
        )

    def destroy(self) -> None:
        with contextlib.suppress(Exception):  # already stopped, or never started
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def new_schema(base_url: str) -> tuple[str, str]:
    """Create a fresh schema; return (its name, a URL whose connections use only it)."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_conninfo(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base_url else "?"
    return schema, f"{base_url}{sep}options=-csearch_path%3D{schema}"


def drop_schema(base_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(_conninfo(base_url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts = {
        "host": u.host,
        "port": u.port,
        "user": u.username,
        "password": u.password,
        "dbname": u.database,
        **u.query,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v not in (None, ""))


def start_cluster() -> Cluster:
    c = Cluster()
    try:
        return c.init().start()
    except BaseException:
        c.destroy()
        raise


def wait_ready(url: str, timeout: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(_conninfo(url), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        try:
            start_cluster().destroy()
        except Unavailable as e:
            print(f"PostgreSQL unavailable: {e}", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["run"] and "--" in argv:
        cmd = argv[argv.index("--") + 1 :]
        cluster = start_cluster()
        print(f"throwaway PostgreSQL on 127.0.0.1:{cluster.port} ({cluster.root})", file=sys.stderr)
        try:
            return subprocess.call(cmd, env={**os.environ, "ETR_HUB_TEST_DATABASE_URL": cluster.url})
        finally:
            cluster.destroy()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
