"""Engine setup (SQLite in WAL mode or PostgreSQL), migrations, and transactions retried on lock."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from alignloop.errors import ConfigError

DEFAULT_DB_URL = "sqlite:///alignloop-annotate.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
READ_ONLY = "alignloop_read_only"  # execution option: a plain deferred BEGIN, no writer lock
DB_FILE_MODE = 0o600  # the database holds password hashes and the signing key
T = TypeVar("T")


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and route them to psycopg 3 (the driver we ship)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not (url.startswith("sqlite") or url.startswith("postgresql+")):
        raise ConfigError(f"--db: unsupported database URL {url.split(':', 1)[0]!r} (use sqlite:/// or postgresql://)")
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL and in-memory databases)."""
    url = normalise_url(url)
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0])


def private_db_file(path: Path) -> None:
    """Create the SQLite file as 0600 before SQLite does (SQLite gives its -wal and -shm files the mode of
    the database file), and take group/other access away from an existing one and its -wal/-shm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, DB_FILE_MODE))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if p.stat().st_mode & 0o077:
                os.chmod(p, DB_FILE_MODE)
        except FileNotFoundError:
            continue
        except PermissionError:  # not ours to change (a shared file): leave it as its owner set it
            continue


def make_engine(url: str = DEFAULT_DB_URL) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            private_db_file(path)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=20,
            max_overflow=20,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let us issue BEGIN ourselves (below), so the driver never opens a deferred transaction.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL: a label whose commit returned survives even an OS crash, not only a killed server.
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # IMMEDIATE takes the write lock up front: a deferred read transaction that later writes
        # fails at once with 'database is locked' in WAL mode, whatever the busy timeout says.
        # Read-only transactions (run_read) never write, so they begin deferred and never wait for a writer.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (no alembic.ini needed in the cwd)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _is_lock_error(err: OperationalError) -> bool:
    text = str(err.orig).lower()
    return "database is locked" in text or "deadlock detected" in text or "could not serialize" in text


_sqlite_locks: dict[str, threading.RLock] = {}
_sqlite_locks_guard = threading.Lock()


def _writer_lock(factory: sessionmaker[Session]) -> threading.RLock | contextlib.nullcontext:
    """SQLite has one writer at a time. Threads of this process queue on a Python lock instead of
    SQLite's busy handler, which sleeps in growing steps and turns contention into long tails.
    (Other processes, such as the CLI, are still covered by the busy timeout.)"""
    url = factory.kw["bind"].url
    if url.get_backend_name() != "sqlite":
        return contextlib.nullcontext()
    with _sqlite_locks_guard:
        return _sqlite_locks.setdefault(str(url), threading.RLock())


def run_tx(factory: sessionmaker[Session], fn: Callable[[Session], T], attempts: int = 8) -> T:
    """Run ``fn`` in one transaction and commit; retry with backoff when the database is locked.

    The busy timeout already waits for SQLite's lock; this retry covers what still slips
    through (and PostgreSQL deadlocks), so annotators never see a lock error."""
    lock = _writer_lock(factory)
    for attempt in range(attempts):
        with lock, factory() as session:
            try:
                result = fn(session)
                session.commit()
                return result
            except OperationalError as err:
                session.rollback()
                if not _is_lock_error(err) or attempt == attempts - 1:
                    raise
        time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def run_read(factory: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
    """Run ``fn`` in a read-only transaction: no writer lock and, on SQLite, a deferred BEGIN, so reads
    (authentication, lookups) never queue behind writers. ``fn`` must not write."""
    with factory() as session:  # closing ends the transaction and detaches the objects read, still loaded
        session.connection(execution_options={READ_ONLY: True})
        return fn(session)
