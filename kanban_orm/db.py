"""Engines, sessions, transactions and the one retry layer, the same on every database.

What differs between databases (SQLite's pragmas and ``BEGIN IMMEDIATE``, PostgreSQL's
autocommit single statements, which driver errors mean contention) is asked of the
engine's backend: see :mod:`kanban_orm.backends`.
"""

from __future__ import annotations

import contextvars
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransactionOrigin, sessionmaker

from . import backends, config, files, greenlets
from .backends.base import WRITE_OPTION, DriverThread
from .driver import Tx
from .errors import (
    DatabaseBusy,
    DatabaseError,
    DatabaseReadOnly,
    DatabaseUnavailable,
    InvalidInput,
    KanbanError,
    OwnAttributesType,
)

T = TypeVar("T")

ENV_URL = "KANBAN_DATABASE_URL"
ENV_HOME = "KANBAN_HOME"
ENV_SYNCHRONOUS = config.ENV_SYNCHRONOUS
ENV_BUSY_TIMEOUT = config.ENV_BUSY_TIMEOUT

SQLITE_BUSY_TIMEOUT_MS = config.SQLITE_BUSY_TIMEOUT_MS


@dataclass(frozen=True)
class RetryPolicy:
    """How long a transaction that met a lock or a serialization failure is retried.

    Full-jitter exponential backoff (as in AWS's "Exponential Backoff and Jitter"):
    ``sleep = uniform(0, min(max_delay, base_delay * 2**attempt))``.
    """

    max_attempts: int = 30
    base_delay: float = 0.002
    max_delay: float = 0.25
    max_total_seconds: float = 60.0
    #: How long a call waits for a server that refuses connections, is shutting down or
    #: starting up, or dropped the connection (within ``max_total_seconds``), retrying
    #: with a delay that grows from ``unavailable_base_delay`` to ``unavailable_max_delay``;
    #: then :class:`~kanban_orm.errors.DatabaseUnavailable`. ``max_attempts`` does not
    #: count these tries: a restart takes seconds, not a number of attempts.
    unavailable_seconds: float = 15.0
    unavailable_base_delay: float = 0.05
    unavailable_max_delay: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))

    def unavailable_delay(self, attempt: int) -> float:
        # Equal jitter: at least half the step, so a fleet of workers waiting for a
        # restarting server neither spins nor reconnects in lockstep.
        step = min(self.unavailable_max_delay, self.unavailable_base_delay * 2.0**attempt)
        return step / 2 + random.uniform(0, step / 2)


DEFAULT_RETRY = RetryPolicy()


def default_url() -> str:
    """``KANBAN_DATABASE_URL``, else ``sqlite:///$KANBAN_HOME/kanban.db`` (``~/.kanban``)."""
    url = os.environ.get(ENV_URL)
    if url:
        return url
    return f"sqlite:///{default_home() / 'kanban.db'}"


def default_home() -> Path:
    """``$KANBAN_HOME``, else ``~/.kanban``: the default database's folder."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".kanban").expanduser()


def create_engine(
    url: str | sa.URL | None = None,
    *,
    synchronous: str | None = None,
    busy_timeout_ms: int | None = None,
    retry: RetryPolicy | None = None,
    **kw: Any,
) -> Engine:
    """An Engine for ``url`` (else :func:`default_url`) with the kanban dialect set-up.

    A SQLite file's missing folders are created, each 0700, and the file itself is
    created 0600 when first connected (a leading ``~`` is the home directory); a URL
    that names no driver gets its backend's (``postgresql://`` uses psycopg 3).
    ``synchronous``, ``busy_timeout_ms`` and ``retry`` are as for
    :func:`configure_engine`; other keyword arguments go to :func:`sqlalchemy.create_engine`.
    """
    parsed = engine_url(url)
    parsed = backends.named(parsed.get_backend_name()).url(parsed)
    hint = install_command("postgres") if parsed.get_backend_name() == "postgresql" else ""
    with missing_driver(parsed, hint):
        engine = sa.create_engine(parsed, **kw)
    return configure_engine(
        engine, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, retry=retry
    )


def engine_url(url: str | sa.URL | None) -> sa.URL:
    """``url`` (else :func:`default_url`) checked, a SQLite file's folders made (0700) and
    its leading ``~`` expanded: what an engine of this package connects to, before the
    backend names its driver."""
    parsed = _parsed(url or default_url())
    sqlite_file = _sqlite_file(parsed)
    if sqlite_file is not None:
        files.make_private_dirs(sqlite_file.parent)
        parsed = parsed.set(database=str(sqlite_file))  # "~" expanded, as it was made
    return parsed


@contextmanager
def missing_driver(url: sa.URL, hint: str) -> Iterator[None]:
    """A driver that is not installed, raised as InvalidInput saying what to install."""
    try:
        yield
    except ImportError as error:
        raise InvalidInput(
            f"the driver of {url.drivername} is not installed: {error}"
            + (f"; install it with {hint}" if hint else "")
        ) from None


#: The backends kanban_orm's SQL is written for.
BACKENDS = tuple(backends.BACKENDS)


def install_command(extra: str) -> str:
    """The command that installs ``extra``, from PyPI or from a checkout of the source."""
    return f"pip install 'kanban-orm[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def _parsed(url: str | sa.URL) -> sa.URL:
    try:
        parsed = sa.make_url(url)
    except exc.ArgumentError:
        raise InvalidInput(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "postgres":  # libpq's and most tools' spelling
        driver = parsed.get_driver_name() if "+" in parsed.drivername else ""
        parsed = parsed.set(drivername="postgresql" + (f"+{driver}" if driver else ""))
    if parsed.get_backend_name() not in BACKENDS:
        raise InvalidInput(
            f"kanban_orm runs on {backends.supported()}, not {parsed.get_backend_name()!r}"
        )
    return parsed


def _sqlite_file(parsed: sa.URL) -> Path | None:
    """The file a SQLite URL names (not an in-memory database, not a ``file:`` URI)."""
    return files.sqlite_file(parsed)


def missing_sqlite_file(url: str | sa.URL) -> Path | None:
    """The SQLite file ``url`` names when there is none yet; else None (PostgreSQL too)."""
    path = _sqlite_file(_parsed(url))
    return path if path is not None and not path.exists() else None


_configured: weakref.WeakSet[Engine] = weakref.WeakSet()
#: Two threads configuring one engine at once must not both add its event listeners.
_configuring = threading.Lock()
_retry_policies: weakref.WeakKeyDictionary[Engine, RetryPolicy] = weakref.WeakKeyDictionary()


def configure_engine(
    engine: Engine,
    *,
    synchronous: str | None = None,
    busy_timeout_ms: int | None = None,
    retry: RetryPolicy | None = None,
) -> Engine:
    """Apply the kanban set-up to an Engine (a host application's own, for instance).

    ``retry`` sets how long transitions on this engine retry under contention (default
    :data:`DEFAULT_RETRY`). On SQLite, ``synchronous`` (default ``NORMAL``, or
    ``KANBAN_SQLITE_SYNCHRONOUS``) and ``busy_timeout_ms`` (default 5000, or
    ``KANBAN_SQLITE_BUSY_TIMEOUT_MS``) set the pragmas of every new connection.

    On SQLite this takes over transaction control from the pysqlite driver (so ``BEGIN``
    and ``BEGIN IMMEDIATE`` are ours to emit), as SQLAlchemy's documentation recommends
    for correct SAVEPOINT and locking behaviour. Idempotent: a second call changes
    nothing but the retry policy.
    """
    if retry is not None:
        _retry_policies[engine] = retry
    with _configuring:
        if engine in _configured:
            return engine
        backends.for_dialect(engine.dialect).configure_engine(
            engine, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms
        )
        # Only once set up: an engine whose settings were refused is not marked done.
        _configured.add(engine)
    return engine


# -- sessions ---------------------------------------------------------------------------

_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def cached_engine(url: str | None = None) -> Engine:
    """This process's Engine for ``url`` (else the default URL), created once.

    Keyed by process id too, so a forked child never reuses its parent's connections.
    """
    key = (os.getpid(), str(url or default_url()))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_engine(key[1])
        return engine


def dispose_engines() -> None:
    """Close and forget every Engine :func:`cached_engine` made in this process."""
    with _engines_lock:
        mine = [key for key in _engines if key[0] == os.getpid()]
        for key in mine:
            _engines.pop(key).dispose()


def connect(url: str | None = None, *, keep_connection: bool = False) -> Session:
    """A new Session on this process's cached Engine; ``session.close()`` ends it.

    ``expire_on_commit`` is off, so a Task returned by a transition stays readable after
    the call has committed and after the session is closed. ``keep_connection`` makes it
    a :class:`KeepingSession`, for a worker's own loop.
    """
    return session_factory(cached_engine(url), keep_connection=keep_connection)()


def session_factory(engine: Engine, *, keep_connection: bool = False) -> sessionmaker[Session]:
    """A sessionmaker configured like :func:`connect`, for an Engine of your own
    (:func:`connect` takes a URL). Raises :class:`InvalidInput` for anything else."""
    if not isinstance(engine, sa.Engine):
        raise InvalidInput(
            f"session_factory takes an Engine, not {type(engine).__name__}"
            " (for a URL: kb.connect(url) or kb.session_factory(kb.cached_engine(url)))"
        )
    session_class = KeepingSession if keep_connection else Session
    return sessionmaker(bind=engine, expire_on_commit=False, class_=session_class)


# help() would repeat 1,500 lines of Session's documentation (in help(kanban_orm) too).
class KeepingSession(Session, metaclass=OwnAttributesType):
    """A Session that keeps the pooled connection its first kanban write checked out, for
    every later write, until :meth:`close` or :meth:`reset` (or garbage collection).

    A write otherwise checks a connection out of the Engine's pool and back in, about a
    tenth of a claim_next + complete_task cycle on SQLite: for a worker that claims and
    completes in a loop, keeping one is the cheaper trade. The price is that the
    session holds one connection of the pool for as long as it lives (its own ORM reads
    use another, as any Session's do), so size the pool for the keeping sessions that
    live at once; and a kept connection is not checked out again, so the pool's
    ``pool_recycle``, ``pool_pre_ping`` and checkout events do not see it between writes.

    The connection is kept only while it is idle (no transaction open) and its pool is
    still the engine's (``engine.dispose()`` makes the next write check out a new one).
    A write that finds it in use (the session shared between threads, a nested call)
    checks one out of the pool as usual. One that dropped is replaced; one inherited
    across ``fork()`` is left to the parent: the child neither uses nor closes it.
    """

    _owned: Any = None  # the kept connection, idle or in use by a write
    #: [_owned] while no write is using it, else []: a write takes it with list.pop,
    #: which two threads cannot both win.
    _idle: list[Any] | None = None
    _owned_pool: Any = None
    _owned_pid: int = 0
    _release: weakref.finalize[Any, Any] | None = None

    def take_connection(self, engine: Engine) -> Any:
        """The kept connection for a write on ``engine``, taken out until
        :meth:`give_back`; None if there is none that can serve (or it is in use)."""
        try:
            kept = self._idle.pop() if self._idle else None
        except IndexError:  # another thread took it first
            return None
        if kept is None:
            return None
        if self._owned_pid != os.getpid():
            self._forget(close=False)  # the parent's
            return None
        if self._owned_pool is not engine.pool or not kept.is_valid:
            self._forget(close=True)
            return None
        return kept

    def give_back(self, engine: Engine, pooled: Any) -> bool:
        """After a write: keep ``pooled`` for the next one if it is idle and valid; False
        when the caller is to return it to the pool instead."""
        if pooled is self._owned and self._idle is not None:
            if pooled.is_valid and _is_idle(pooled.dbapi_connection):
                self._idle.append(pooled)
                return True
            self._forget(close=False)  # the caller returns it to the pool
            return False
        if self._owned is not None or not pooled.is_valid:
            return False  # one is kept already (the write ran beside it)
        if not _is_idle(pooled.dbapi_connection):
            return False
        pid = os.getpid()
        self._owned, self._idle = pooled, [pooled]
        self._owned_pool, self._owned_pid = engine.pool, pid
        self._release = weakref.finalize(self, _close_if_mine, pooled, pid)
        return True

    def _forget(self, *, close: bool) -> None:
        if self._owned is not None and self._owned_pid != os.getpid():
            _inherited.append(self._owned)
        release = self._release
        self._owned = self._idle = self._owned_pool = self._release = None
        if release is not None:
            if close:
                release()  # returns the connection to its pool, once
            else:
                release.detach()

    def close(self) -> None:
        self._forget(close=self._owned_pid == os.getpid())
        super().close()

    def reset(self) -> None:
        self._forget(close=self._owned_pid == os.getpid())
        super().reset()

    def invalidate(self) -> None:
        mine = self._owned is not None and self._owned_pid == os.getpid()
        if mine:
            self._owned.invalidate()
        self._forget(close=mine)
        super().invalidate()


#: Kept connections a forked child inherited: held for good, since once collected the
#: child's copy of the pool would take them back and hand the parent's socket out again.
_inherited: list[Any] = []


def _close_if_mine(pooled: Any, pid: int) -> None:
    # A forked child collecting its copy of the session must not close the parent's
    # connection (on PostgreSQL that would end the parent's server session).
    if os.getpid() == pid:
        pooled.close()
    else:
        _inherited.append(pooled)


def _is_idle(dbapi_connection: Any) -> bool:
    """No transaction open on the driver connection (sqlite3 or psycopg 3)."""
    in_transaction = getattr(dbapi_connection, "in_transaction", None)
    if in_transaction is not None:
        return not in_transaction
    status = getattr(getattr(dbapi_connection, "info", None), "transaction_status", 0)
    return int(status) == 0  # psycopg.pq.TransactionStatus.IDLE


# -- the retry layer --------------------------------------------------------------------


#: What a failed database call calls for: a retry after a short wait (BUSY), a retry
#: once the server is back (UNAVAILABLE), or no retry at all (READ_ONLY; None: any other).
BUSY, UNAVAILABLE, READ_ONLY, TOO_LONG = "busy", "unavailable", "read-only", "too long"


def failure_kind(error: BaseException) -> str | None:
    """:data:`BUSY`, :data:`UNAVAILABLE`, :data:`READ_ONLY`, :data:`TOO_LONG` or None for a
    database error."""
    if not isinstance(error, exc.DBAPIError):
        return None
    # Which driver errors mean what is each backend's to say; the error does not name
    # its dialect, and no backend claims another driver's errors.
    every = backends.BACKENDS.values()
    if any(backend.is_contention(error) for backend in every):
        return BUSY
    if any(backend.is_read_only(error) for backend in every):
        return READ_ONLY
    if error.connection_invalidated or any(backend.is_unavailable(error) for backend in every):
        return UNAVAILABLE
    if any(backend.is_too_long(error) for backend in every):
        return TOO_LONG
    return None


def is_retryable(error: BaseException) -> bool:
    """True for a lock, busy, serialization or deadlock error, a dropped connection or a
    server that cannot be reached (see :func:`failure_kind`)."""
    return failure_kind(error) in (BUSY, UNAVAILABLE)


def typed_error(error: BaseException) -> KanbanError:
    """The kanban error for a driver error that is to reach the caller (raise it ``from``
    the driver's): the retry layer's boundary."""
    orig = getattr(error, "orig", None) or error
    detail = f"{type(orig).__name__}: {str(orig).strip()}"
    kind = failure_kind(error)
    if kind == READ_ONLY:
        return DatabaseReadOnly(f"the database is read-only, nothing was written: {detail}")
    if kind == UNAVAILABLE:
        return DatabaseUnavailable(f"the database server is unavailable: {detail}")
    if kind == BUSY:
        return DatabaseBusy(f"the database is busy: {detail}")
    if kind == TOO_LONG:
        return InvalidInput(
            f"a value is longer than this database holds, nothing was written: {detail}"
        )
    return DatabaseError(detail)


@contextmanager
def database_errors() -> Iterator[None]:
    """Translate a driver error escaping the block into its kanban error (see
    :func:`typed_error`); kanban errors pass unchanged."""
    try:
        yield
    except exc.DBAPIError as error:
        raise typed_error(error) from error


def _checkout(engine: Engine) -> Any:
    """A pooled connection; a failed connect raised as SQLAlchemy's type, as a failed
    statement is (``engine.raw_connection`` lets the driver's own type out)."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        return engine.raw_connection()
    except dbapi_error as error:
        raise exc.DBAPIError.instance(
            None, None, error, dbapi_error, dialect=engine.dialect
        ) from error


def end_autobegun_transaction(session: Session) -> None:
    """Commit the transaction the Session merely auto-began (after a query of the
    caller's), as ``session.commit()`` would, so that a call starts a fresh one. A
    transaction the caller asked for is left alone (see :func:`joins_caller_transaction`).
    """
    transaction = session.get_transaction()
    if transaction is not None and transaction.origin is SessionTransactionOrigin.AUTOBEGIN:
        session.commit()


def joins_caller_transaction(session: Session) -> bool:
    """True when a call on ``session`` is to run inside a transaction the caller began
    and will end: one opened with ``session.begin()``, or, for a Session bound to a
    Connection, the connection's own transaction, begun before the Session joined it
    (SQLAlchemy's "joining a Session into an external transaction", as test suites do;
    a transaction the Connection auto-began counts too). Ask after
    :func:`end_autobegun_transaction`.

    Such a call runs inside a SAVEPOINT of the caller's transaction and leaves the
    commit to the caller (a rolled-back caller leaves no trace of it).
    """
    transaction = session.get_transaction()
    if transaction is not None:
        return transaction.origin is not SessionTransactionOrigin.AUTOBEGIN
    # Committing the Session's own transaction ended the connection's, unless the
    # caller had begun that one.
    bind = session.get_bind()
    return isinstance(bind, Connection) and bind.in_transaction()


#: True while with_retry replays an attempt whose connection dropped: its COMMIT may
#: have landed before the drop, so a fenced call that now finds its claim gone checks
#: whether it was its own earlier attempt that finished it (steps.already_landed).
_replaying_after_disconnect = contextvars.ContextVar("kanban_replaying", default=False)


def replaying_after_disconnect() -> bool:
    return _replaying_after_disconnect.get()


@contextmanager
def resolving_unknown_outcome() -> Iterator[None]:
    """Run a fenced call again after an earlier call with the same arguments ended in
    :class:`~kanban_orm.errors.DatabaseUnavailable` (its COMMIT may have landed): a
    claim found closed with the outcome asked for is then reported as success, not as
    :class:`~kanban_orm.errors.ClaimLost`. What :class:`~kanban_orm.worker.Worker` does
    to record a handler's outcome across an outage."""
    marker = _replaying_after_disconnect.set(True)
    try:
        yield
    finally:
        _replaying_after_disconnect.reset(marker)


def with_retry(attempt: Callable[[], T], *, policy: RetryPolicy = DEFAULT_RETRY) -> T:
    """Call ``attempt()`` until it does not fail with a retryable database error.

    ``attempt`` must roll back what it did before raising (a transaction block does)
    and be safe to run again from the start. Lock contention is retried after a jittered,
    growing delay until ``policy.max_attempts`` or ``max_total_seconds``, then raised as
    :class:`DatabaseBusy`; a server that cannot be reached, is restarting or dropped the
    connection is retried for ``policy.unavailable_seconds``, then raised as
    :class:`DatabaseUnavailable`. Any other driver error is raised at once as its kanban
    error (:func:`typed_error`: :class:`DatabaseReadOnly`, :class:`DatabaseError`);
    other errors propagate unchanged. This is the library's one retry loop.
    """
    started = time.monotonic()
    busy = unavailable = 0
    disconnected = _replaying_after_disconnect.get()
    while True:
        marker = _replaying_after_disconnect.set(disconnected)
        try:
            return attempt()
        except exc.DBAPIError as error:
            kind = failure_kind(error)
            spent = time.monotonic() - started
            if kind == BUSY:
                busy += 1
                if busy >= policy.max_attempts or spent > policy.max_total_seconds:
                    raise DatabaseBusy(
                        f"gave up after {busy + unavailable} attempts in {spent:.1f}s: {error.orig}"
                    ) from error
                delay = policy.delay(busy - 1)
            elif kind == UNAVAILABLE:
                # The attempt may have committed before the connection went, so a
                # replay asks whether its first attempt landed (steps.already_landed).
                disconnected = True
                unavailable += 1
                budget = min(policy.unavailable_seconds, policy.max_total_seconds)
                if spent > budget:
                    raise DatabaseUnavailable(
                        f"the database server stayed unavailable for {spent:.1f}s "
                        f"({busy + unavailable} attempts): {str(error.orig).strip()}"
                    ) from error
                delay = min(policy.unavailable_delay(unavailable - 1), budget - spent + 0.01)
            else:
                raise typed_error(error) from error
            greenlets.pause(delay)  # on the event loop under kanban_orm.aio
        finally:
            _replaying_after_disconnect.reset(marker)


def run_write(
    session: Session,
    work: Callable[[Tx], T],
    *,
    policy: RetryPolicy | None = None,
    one_statement: bool = False,
) -> T:
    """Run ``work(tx)`` as one write transaction and commit it, retrying on contention.

    ``work`` gets a :class:`~kanban_orm.driver.Tx` whose statements run on the driver
    connection, and must be safe to run again from the start: on a retryable error the
    whole transaction is rolled back and replayed (see :func:`with_retry`). If the
    caller began the transaction (see :func:`joins_caller_transaction`), ``work`` runs in
    a SAVEPOINT of it instead and the caller commits; contention then raises
    :class:`DatabaseBusy`, as only the caller can replay its own transaction.

    ``one_statement`` promises that ``work`` writes with a single statement (reads may
    follow it). PostgreSQL then runs it in autocommit mode, where a statement is its own
    transaction, which saves the round trips of BEGIN and COMMIT.
    """
    with database_errors():
        end_autobegun_transaction(session)
        if joins_caller_transaction(session):
            return _run_joined(session, work)
        if policy is None:
            policy = retry_policy(session)
        bind = session.get_bind()
        if isinstance(bind, Engine):
            return with_retry(
                lambda: _attempt_on_pool(bind, session, work, one_statement), policy=policy
            )
        return with_retry(lambda: _attempt_in_session(session, work), policy=policy)


def _attempt_on_pool(
    engine: Engine, session: Session, work: Callable[[Tx], T], one_statement: bool
) -> T:
    """The common case: a pooled driver connection, and transaction control as plain SQL.

    The backend begins and commits (SQLite: BEGIN IMMEDIATE and COMMIT as SQL; psycopg
    begins implicitly and commits through the driver), or with ``one_statement`` on a
    backend that allows it the statement runs in autocommit mode.
    """
    keeping = session if isinstance(session, KeepingSession) else None
    pooled = None if keeping is None else keeping.take_connection(engine)
    if pooled is None:
        pooled = _checkout(engine)
    connection: Any = pooled.dbapi_connection
    if not (one_statement and backends.for_dialect(engine.dialect).autocommits_one_statement):
        thread = _driver_thread(engine, connection)
        if thread is not None:
            try:
                return _attempt_in_driver_thread(engine, session, work, pooled, thread)
            finally:
                if keeping is None or not keeping.give_back(engine, pooled):
                    pooled.close()
    tx = Tx(
        connection,
        engine.dialect,
        session,
        pooled.invalidate,
        hide_parameters=engine.hide_parameters,
        kept=pooled.info,
    )
    backend = tx.backend
    autocommit = one_statement and backend.autocommits_one_statement
    try:
        greenlets.checkpoint()  # a cancelled aio call begins nothing
        if autocommit:
            connection.autocommit = True
        else:
            backend.begin_write(tx)
        result = work(tx)
        if not autocommit:
            greenlets.checkpoint()  # ... and commits nothing: rolled back below
            backend.commit_write(tx)
        return result
    except BaseException:
        if not autocommit:
            _roll_back_quietly(pooled, backend)
        for instance in tx.refreshed:
            session.expire(instance)
        raise
    finally:
        tx.close()
        if autocommit and pooled.is_valid:
            _leave_autocommit(pooled)
        if keeping is None or not keeping.give_back(engine, pooled):
            pooled.close()


def _driver_thread(engine: Engine, connection: Any) -> DriverThread | None:
    """The connection's driver thread, when this attempt runs in an aio call's greenlet
    on a driver that works in a thread of its own (aiosqlite)."""
    if not greenlets.in_async_greenlet():
        return None
    return backends.for_dialect(engine.dialect).driver_thread(connection)


def _attempt_in_driver_thread(
    engine: Engine, session: Session, work: Callable[[Tx], T], pooled: Any, thread: DriverThread
) -> T:
    """The transaction of :func:`_attempt_on_pool`, begun, worked, committed (or rolled
    back) in the driver's own thread on its sync connection: one hop from the event loop
    and back for the whole transaction instead of two or more per statement. The same
    ``work``, statements and backend steps as every other attempt; the cancellation
    checkpoints see the aio call's state (the thread runs in the caller's context)."""
    lost: list[bool] = []  # the driver reported the connection gone
    tx = Tx(
        thread.connection,
        engine.dialect,
        session,
        lambda: lost.append(True),
        hide_parameters=engine.hide_parameters,
        kept=pooled.info,
    )
    backend = tx.backend

    def transaction() -> tuple[bool, Any]:
        # An error comes back as a value: raised in the thread, it would reach the
        # greenlet through a future, where a CancelledError means the future's own.
        try:
            greenlets.checkpoint()  # a cancelled aio call begins nothing
            backend.begin_write(tx)
            result = work(tx)
            greenlets.checkpoint()  # ... and commits nothing: rolled back below
            backend.commit_write(tx)
            return True, result
        except BaseException as error:
            if not lost:
                try:
                    backend.roll_back(thread.connection)
                except Exception:
                    lost.append(True)
            return False, error
        finally:
            tx.close()

    ok, outcome = thread.run(transaction)
    if lost:
        pooled.invalidate()  # here, not in the thread: the pool closes it on the loop
    if ok:
        return outcome  # type: ignore[no-any-return]
    for instance in tx.refreshed:
        session.expire(instance)
    raise outcome


def _leave_autocommit(pooled: Any) -> None:
    try:
        pooled.dbapi_connection.autocommit = False
    except Exception:
        pooled.invalidate()  # a connection in an unknown state is not used again


def _roll_back_quietly(pooled: Any, backend: backends.Backend) -> None:
    # The error on its way out is the one that matters; a connection that is already
    # gone cannot roll back, and the pool discards it.
    if not pooled.is_valid:
        return  # invalidated when the driver reported the connection gone
    try:
        backend.roll_back(pooled.dbapi_connection)
    except Exception:
        pooled.invalidate()


def _attempt_in_session(session: Session, work: Callable[[Tx], T]) -> T:
    """A Session bound to a Connection: its transaction, begun and committed by it."""
    with _write_transaction(session):
        result = _work_on_session_connection(session, work)
        greenlets.checkpoint()  # a cancelled aio call rolls back
        return result


def _work_on_session_connection(session: Session, work: Callable[[Tx], T]) -> T:
    connection = session.connection()  # already begun: as a write by _write_transaction
    tx = Tx(
        connection.connection.dbapi_connection,
        connection.dialect,
        session,
        connection.invalidate,
        hide_parameters=connection.engine.hide_parameters,
    )
    try:
        return work(tx)
    finally:
        tx.close()


def run_read(session: Session, work: Callable[[Session], T]) -> T:
    """Run ``work(session)`` on a fresh snapshot and end the transaction it began.

    Inside a transaction the caller began (see :func:`joins_caller_transaction`) the read
    simply joins it. Otherwise an auto-begun transaction is committed first and the
    read's own one after it: on SQLite a deferred transaction keeps the snapshot of its
    first read, so a session left inside one would never see another worker's commit
    (and would hold back WAL checkpoints). Reads are retried like writes when the connection drops.
    """
    with database_errors():
        end_autobegun_transaction(session)
        if joins_caller_transaction(session):
            return work(session)
        return with_retry(lambda: _attempt_read(session, work), policy=retry_policy(session))


def _attempt_read(session: Session, work: Callable[[Session], T]) -> T:
    greenlets.checkpoint()
    try:
        result = work(session)
    except BaseException:
        session.rollback()
        raise
    session.commit()
    return result


def retry_policy(session: Session) -> RetryPolicy:
    """The retry policy configured for the session's engine, else :data:`DEFAULT_RETRY`."""
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    return _retry_policies.get(engine, DEFAULT_RETRY)


@contextmanager
def _write_transaction(session: Session) -> Iterator[None]:
    try:
        # Marking the connection before the transaction begins makes SQLite's BEGIN
        # an IMMEDIATE one (see _on_begin).
        session.connection(execution_options={WRITE_OPTION: True})
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _run_joined(session: Session, work: Callable[[Tx], T]) -> T:
    try:
        with session.begin_nested():
            result = _work_on_session_connection(session, work)
            greenlets.checkpoint()  # a cancelled aio call rolls its SAVEPOINT back
            return result
    except exc.DBAPIError as error:
        if failure_kind(error) == BUSY:
            raise DatabaseBusy(
                f"the caller's transaction met contention and must be retried: {error.orig}"
            ) from error
        raise typed_error(error) from error
