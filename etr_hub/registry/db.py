"""Engine, connection pragmas and migrations for the registry database.

SQLite by default (`$ETR_HUB_HOME/registry.db`), or PostgreSQL through an SQLAlchemy URL in
`ETR_HUB_DATABASE_URL` (e.g. `postgresql+psycopg://…`); other databases are refused. On SQLite every write
transaction starts with BEGIN IMMEDIATE: a deferred transaction that later upgrades to a
writer can fail with "database is locked" without waiting, IMMEDIATE waits on busy_timeout.
"""

from __future__ import annotations

import functools
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from etr_hub.errors import RegistryError

BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
WRITE_LOCK_KEY = 7201604  # pg_advisory_xact_lock key for registry writes
MIGRATE_LOCK_KEY = 7201603
MIGRATIONS = Path(__file__).parent / "migrations"
URL_FORMS = (
    "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB, or unset it for $ETR_HUB_HOME/registry.db"
)


def check_url(url: str) -> None:
    """Refuse what is not an SQLite or PostgreSQL URL, in one line (never echoing a password)."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        shown = f" '{url}'" if "@" not in url else ""
        raise RegistryError(f"ETR_HUB_DATABASE_URL{shown} is not a database URL", URL_FORMS) from None
    if backend not in ("sqlite", "postgresql"):
        raise RegistryError(
            f"ETR_HUB_DATABASE_URL names a '{backend}' database; the registry runs on SQLite or PostgreSQL only",
            URL_FORMS,
        )


def corrupt_sqlite(url: str, exc: Exception) -> RegistryError | None:
    """The one-line error for an SQLite file that is not (or no longer) a database; None for other errors."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlite_errorname", None) not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return None
    return RegistryError(
        f"registry database {make_url(url).database} is not a valid SQLite database ({orig})",
        "restore it from a backup or move it away and run `etr-hub init`",
    )


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def _postgres_begin(conn) -> None:
    # Writers take one transaction-scoped advisory lock, so PostgreSQL serialises registry
    # writes as SQLite's BEGIN IMMEDIATE does: "one enabled version per name" and the
    # read-then-insert upserts stay correct under concurrent `expert add`.
    if conn.get_execution_options().get("write"):
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")


@functools.lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    check_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    elif url.startswith("postgresql"):
        # pre-ping: a pooled connection that died with a server restart is replaced, not used;
        # UTC sessions: `timestamp` columns hold UTC whatever the server's TimeZone is.
        own = make_url(url).query.get("options")  # keep the URL's own (a tuple when given twice)
        options = " ".join(filter(None, [*([own] if isinstance(own, str) else own or ()), "-c TimeZone=UTC"]))
        try:
            engine = create_engine(
                url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S, "options": options}
            )
        except ModuleNotFoundError as exc:
            raise RegistryError(
                f"ETR_HUB_DATABASE_URL names PostgreSQL but its driver is missing ({exc.name})",
                "pip install 'etr-hub[postgres]' (and use a postgresql+psycopg:// URL)",
            ) from None
        event.listen(engine, "begin", _postgres_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def head_revision() -> str:
    versions = sorted(p.stem.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*.py"))
    return versions[-1]


def current_revision_on(conn) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return current_revision_on(conn)


def migrate(engine: Engine) -> str:
    """Bring the schema to head (idempotent, safe when several processes race)."""
    head = head_revision()
    if current_revision(engine) == head:
        return head
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # One write transaction around the whole upgrade: a racing process waits, then sees head.
    with engine.execution_options(write=True).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY})"))  # serialize racing upgrades
        if current_revision_on(conn) == head:
            return head
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head


def unreachable(url: str, e: Exception) -> RegistryError:
    reason = " ".join(str(getattr(e, "orig", None) or e).split())  # the driver's words, on one line
    return RegistryError(
        f"the registry database at {safe_url(url)} failed: {reason}",
        "check ETR_HUB_DATABASE_URL / ETR_HUB_HOME and that the database server is running, then retry",
    )


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"
