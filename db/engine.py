"""Engines for SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg), set up the same way
for the API, the worker, migrations and tests.

SQLite: every connection gets WAL, ``busy_timeout``, ``foreign_keys=ON`` and the
configured ``synchronous``.  pysqlite's own implicit BEGIN is switched off and we
emit ``BEGIN IMMEDIATE`` for every transaction on the default engine, so a writer
takes the write lock up front and waits in ``busy_timeout`` instead of failing at
once with "database is locked" when a deferred read upgrades to a write.  Engines
derived with ``reader(engine)`` begin with a plain deferred BEGIN (WAL readers never
block and are never blocked).

Write transactions go through ``transactor(engine)``: a transaction is a plain
function of a synchronous ``Connection``, run whole.  On PostgreSQL that is
``AsyncConnection.run_sync`` (asyncpg underneath).  On SQLite it is one dedicated
writer thread per engine holding a pysqlite connection, so a transaction costs one
hop between the event loop and a thread instead of one per statement and cursor call
(aiosqlite's), and the writes of one process never wait on each other's busy timeout.
A transaction that has started runs to its end even if its caller is cancelled.
There, statements marked with ``hot()`` (the queue's per-transition statements) are
compiled once by SQLAlchemy from the models and then run on the DBAPI cursor, with
SQLAlchemy's own type processors for parameters and results: the statement text and
types still come from the models, only the per-execution bookkeeping is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections import namedtuple
from collections.abc import Callable, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

R = TypeVar("R")
_log = logging.getLogger("tingji.db")

BUSY_TIMEOUT_MS = 15_000
_READONLY = "tingji_readonly"


def async_url(url: str) -> str:
    """``sqlite:///x`` -> aiosqlite, ``postgresql://`` -> asyncpg; explicit drivers kept."""
    u = make_url(url)
    if u.drivername == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database:
        return None
    return Path(u.database)


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 5,
                **kwargs: Any) -> AsyncEngine:
    target = async_url(url)
    path = sqlite_path(target)
    if path is None:
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", pool_size)
        kwargs.setdefault("pool_pre_ping", True)
        return create_async_engine(target, **kwargs)

    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(target, **kwargs)
    sync = sqlite_synchronous.upper()
    _configure_sqlite(engine.sync_engine, sync)
    _SQLITE[engine.sync_engine] = (path, sync)
    return engine


def _configure_sqlite(engine: Engine, sync: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (see _on_begin); pysqlite must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {sync}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.connection.driver_connection.in_transaction:
            return  # the SQLite writer began it (SqliteWriter._run)
        if conn.get_execution_options().get(_READONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, but transactions begin deferred (for read-only work)."""
    return engine.execution_options(**{_READONLY: True})



# The SQLite file and ``synchronous`` of each engine made here, and its writer thread.
_SQLITE: weakref.WeakKeyDictionary[Engine, tuple[Path, str]] = weakref.WeakKeyDictionary()
_WRITERS: weakref.WeakKeyDictionary[Engine, SqliteWriter] = weakref.WeakKeyDictionary()


class Transactor:
    """Runs write transactions, each a function of a synchronous ``Connection``, through
    the async engine (``run_sync``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def __call__(self, fn: Callable[..., R], *args: Any) -> R:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn, *args)


# Statements run straight on the SQLite cursor by the writer (see ``hot``), with their
# compiled plans per set of parameter names.
_HOT: dict[Any, dict[tuple[str, ...] | None, _Plan]] = {}
HOT_PATH = {"on": True}  # bench/queue.py turns it off to measure what it pays


def hot(stmt: Any) -> Any:
    """Mark a long-lived statement (no expanding ``IN``, no Python-side defaults left to
    fill) to be run by the SQLite writer on the DBAPI cursor.  Returns it."""
    _HOT.setdefault(stmt, {})
    return stmt


class _Rows(list[Any]):
    """The part of SQLAlchemy's ``Result`` the queue uses."""

    def first(self) -> Any:
        return self[0] if self else None

    def all(self) -> list[Any]:
        return list(self)

    def one(self) -> Any:
        if len(self) != 1:
            raise (exc.NoResultFound if not self else exc.MultipleResultsFound)(
                f"expected one row, got {len(self)}")
        return self[0]

    def scalar_one(self) -> Any:
        return self.one()[0]


class _Plan:
    """One hot statement compiled for SQLite: its SQL text, the order of its parameters
    with their bind processors, and its result columns with their result processors."""

    def __init__(self, stmt: Any, dialect: Any, keys: tuple[str, ...] | None) -> None:
        self.compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        self.sql = self.compiled.string
        self.names = list(self.compiled.positiontup or ())
        # values fixed in the statement (literals SQLAlchemy made into parameters)
        self.fixed = {n: self.compiled.binds[n].effective_value for n in self.names}
        self.binds = [self._proc(self.compiled.binds[n].type, dialect, "bind")
                      for n in self.names]
        cols = list(getattr(stmt, "selected_columns", None)
                    or getattr(stmt, "exported_columns", None) or ())
        self.results = [self._proc(c.type, dialect, "result") for c in cols]
        base = namedtuple("Row", [c.name for c in cols], rename=True) if cols else None  # noqa: PYI024
        self.row = type("Row", (base,), {"__slots__": (), "_mapping": property(
            lambda r: r._asdict())}) if base else None

    @staticmethod
    def _proc(type_: Any, dialect: Any, kind: str) -> Callable[[Any], Any] | None:
        impl = type_.dialect_impl(dialect)
        return (impl.bind_processor(dialect) if kind == "bind"
                else impl.result_processor(dialect, None))

    def args(self, params: dict[str, Any] | None) -> tuple[Any, ...]:
        given = params or {}
        out = []
        for n, p in zip(self.names, self.binds, strict=True):
            v = given[n] if n in given else self.fixed[n]
            out.append(p(v) if p else v)
        return tuple(out)

    def rows(self, raw: Sequence[Sequence[Any]]) -> _Rows:
        assert self.row is not None
        return _Rows(self.row(*(p(v) if p else v for v, p in zip(r, self.results, strict=True)))
                     for r in raw)


class _WriterConnection:
    """What a transaction function gets from the SQLite writer: a SQLAlchemy
    ``Connection`` whose hot statements skip SQLAlchemy's execution machinery."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect
        self._cursor = conn.connection.driver_connection.cursor()

    def execute(self, stmt: Any, params: Any = None) -> Any:
        plans = _HOT.get(stmt) if HOT_PATH["on"] else None
        if plans is None:
            return self._conn.execute(stmt, params)
        many = isinstance(params, list)
        keys = tuple(params[0]) if many and params else None
        plan = plans.get(keys)
        if plan is None:
            plan = plans[keys] = _Plan(stmt, self.dialect, keys)
        try:
            if many:
                self._cursor.executemany(plan.sql, [plan.args(p) for p in params])
                return _Rows()
            self._cursor.execute(plan.sql, plan.args(params))
            return plan.rows(self._cursor.fetchall()) if plan.row else _Rows()
        except self.dialect.loaded_dbapi.Error as e:
            raise exc.DBAPIError.instance(plan.sql, params, e,
                                          self.dialect.loaded_dbapi.Error) from e


class SqliteWriter:
    """One thread, one pysqlite connection: a process's writes to one SQLite file, in
    order.  Same pragmas and ``BEGIN IMMEDIATE`` as the async engine it serves."""

    def __init__(self, path: Path, sync: str) -> None:
        self._sync = create_engine(f"sqlite:///{path}", pool_size=1, max_overflow=0,
                                   connect_args={"check_same_thread": False})
        _configure_sqlite(self._sync, sync)
        # (fn, args, loop, future) to run in order; a plain queue and one
        # call_soon_threadsafe per transaction: an executor's future chaining costs a
        # tenth of a short transaction
        self._jobs: SimpleQueue[tuple[Any, ...]] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="tingji-sqlite-writer",
                                        daemon=True)
        self._thread.start()
        self._conn: Connection | None = None  # held open, used only on the thread

    def _serve(self) -> None:
        while True:
            fn, args, loop, fut = self._jobs.get()
            if fut is not None and fut.cancelled():
                continue  # its caller gave up before it started
            try:
                out, err = fn(*args), None
            except BaseException as exc:  # noqa: BLE001  (handed to the caller)
                out, err = None, exc
            if fut is not None:
                try:
                    loop.call_soon_threadsafe(_settle, fut, out, err)
                except RuntimeError:  # the caller's event loop is closed
                    pass

    def _run(self, fn: Callable[..., R], args: tuple[Any, ...]) -> R:
        # BEGIN IMMEDIATE and COMMIT go straight to the driver; a statement that is not
        # hot makes SQLAlchemy join the open transaction (see _on_begin).
        if self._conn is None:
            self._conn = self._sync.connect()
        conn = self._conn
        try:
            driver = conn.connection.driver_connection
        except BaseException:
            self._drop(conn)
            raise
        driver.execute("BEGIN IMMEDIATE")
        try:
            out = fn(_WriterConnection(conn), *args)
            if conn.in_transaction():
                conn.commit()
            else:
                driver.commit()
            return out
        except BaseException:
            try:  # an inactive transaction SQLAlchemy still holds (a failed statement)
                if conn.get_transaction() is not None or conn.invalidated:
                    conn.rollback()
                if driver.in_transaction:
                    driver.rollback()
            except Exception:  # noqa: BLE001  (the error being raised says more)
                pass
            if conn.invalidated or driver.in_transaction:
                # a connection a full disk or an I/O error broke (its COMMIT failed):
                # the next transaction opens a fresh one, not failing on this for good
                self._drop(conn)
            raise

    def _drop(self, conn: Connection) -> None:
        self._conn = None
        with contextlib.suppress(Exception):
            conn.close()

    async def __call__(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._jobs.put((self._run, (fn, args), loop, fut))
        return await fut

    def close(self, *_: Any) -> None:
        """Close the connection once the transactions handed over are done (a later
        transaction opens a new one)."""
        self._jobs.put((self._dispose, (), None, None))

    def _dispose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._sync.dispose()


def _settle(fut: asyncio.Future[Any], out: Any, err: BaseException | None) -> None:
    if fut.cancelled():
        return  # the transaction finished all the same; its caller went away
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(out)


class Patient:
    """A transactor whose transactions wait out a database outage (``db.errors.
    unavailable``: PostgreSQL restarting, SQLite locked by another program past its busy
    timeout, a full disk) for up to ``patience_s``, trying again with a growing pause.
    A transaction that failed was rolled back whole, so running it again is safe."""

    def __init__(self, tx: Callable[..., Any], patience_s: float) -> None:
        self.tx, self.patience_s = tx, patience_s

    async def __call__(self, fn: Callable[..., R], *args: Any) -> R:
        from db.errors import unavailable

        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.patience_s, 0.25
        while True:
            try:
                return await self.tx(fn, *args)  # type: ignore[no-any-return]
            except Exception as exc:
                left = deadline - loop.time()
                if left <= 0 or not unavailable(exc):
                    raise
                _log.warning("database unavailable (%s: %s); trying again in %.1f s",
                             type(exc).__name__, str(exc).splitlines()[0][:200],
                             min(pause, left))
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, 5.0)


def transactor(engine: AsyncEngine) -> Transactor | SqliteWriter:
    """How write transactions run on ``engine``: its SQLite writer thread (made on first
    use, closed with the engine) or ``run_sync``."""
    where = _SQLITE.get(engine.sync_engine)
    if where is None:
        return Transactor(engine)
    writer = _WRITERS.get(engine.sync_engine)
    if writer is None:
        writer = _WRITERS[engine.sync_engine] = SqliteWriter(*where)
        event.listen(engine.sync_engine, "engine_disposed", writer.close)
    return writer
