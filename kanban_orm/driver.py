"""Statements compiled once per dialect and run on the driver's own cursor.

Every write transaction runs here (see :func:`kanban_orm.db.run_write`). SQLAlchemy stays
the single source of the SQL: each statement in :mod:`kanban_orm.queries` is compiled by
the engine's dialect, once, and the compiled string, its bind processors and its result
processors are kept. A call then costs what the driver costs plus a few dictionary
lookups, instead of SQLAlchemy's per-execution context (cache-key generation, execution
context, result metadata), which was most of a transition's time.

Values still go through the same type processing SQLAlchemy would apply (datetimes as
text on SQLite, JSON documents), so rows written here read back through the ORM exactly
as rows written by the ORM. Driver errors are raised as SQLAlchemy's own exception types
(``IntegrityError``, ``OperationalError``, ... with ``connection_invalidated``), so the
retry layer and callers see one family of errors whichever path ran. What this path
does not do: engine events (``before_cursor_execute``, ``handle_error``) and ``echo``
logging do not see these statements, since they never pass through a Connection.
"""

from __future__ import annotations

import contextlib
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import exc
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql import ClauseElement, sqltypes
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update, UpdateBase
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeDecorator

from .backends import Backend, for_dialect

M = TypeVar("M")
Params = Mapping[str, Any]


class Rows:
    """The rows a statement returned, with the few Result methods the transitions use."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise exc.NoResultFound if not self._rows else exc.MultipleResultsFound
        return self._rows[0][0]

    def scalars(self) -> Rows:
        return Rows([row[0] for row in self._rows])


class Prepared:
    """One statement compiled for one dialect and one set of parameter names."""

    __slots__ = (
        "compiled",
        "converted",
        "defaults",
        "expanded",
        "names",
        "order",
        "per_call",
        "processors",
        "row_type",
        "sql",
    )

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled = _compile(statement, dialect, keys)
        self.compiled = compiled
        self.sql = compiled.string
        self.names = compiled.positiontup if dialect.positional else None
        self.processors = _bind_processors(compiled, dialect)
        self.defaults = _python_defaults(compiled)
        #: Parameters rendered into the SQL at execution (IN lists, a LIMIT): per call.
        self.per_call = _rendered_per_call(compiled)
        #: SQL and parameter order per value of rendered scalars (a LIMIT), made on first use.
        self.expanded: dict[tuple[Any, ...], tuple[str, Any]] = {}
        #: When every parameter is the caller's value under its own name (the common
        #: case), the driver's parameters in order, each with its processor: binding then
        #: needs no help from the compiled statement.
        direct = None if self.defaults else _named_as_passed(compiled)
        self.order = None if direct is None else self._order(self.names or direct)
        columns = _result_columns(statement)
        result = [_result_processor(c, dialect) for c in columns]
        #: (position, processor) of each returned column the driver's value needs converting.
        self.converted = [(i, process) for i, process in enumerate(result) if process]
        keys_out = [getattr(c, "key", None) or f"c{i}" for i, c in enumerate(columns)]
        self.row_type = namedtuple("Row", keys_out, rename=True) if columns else None

    def _order(self, names: Sequence[str]) -> tuple[tuple[str, Any], ...]:
        return tuple((name, self.processors.get(name)) for name in names)

    def _expand(self, params: Params) -> tuple[str, Any]:
        state = self.compiled.construct_expanded_state(params)
        if self.order is None:
            return state.statement, state.positiontup
        if self.names is not None:
            return state.statement, self._order(state.positiontup or ())
        # Named: the parameters less the rendered ones, which are in the SQL now.
        kept = [(name, p) for name, p in self.order if name not in self.per_call]
        return state.statement, tuple(kept)

    def bind(self, params: Params) -> tuple[str, Any]:
        """The SQL and the driver's parameters (a tuple or a dict) for one call."""
        order = self.order
        if order is not None:
            sql = self.sql
            if self.per_call:
                sql, order = self._rendered(params, tuple([params.get(n) for n in self.per_call]))
            if self.names is None:
                return sql, {name: p(params[name]) if p else params[name] for name, p in order}
            return sql, tuple([p(params[name]) if p else params[name] for name, p in order])
        if self.defaults:
            params = {**self.defaults, **params}
        sql, names = self.sql, self.names
        if self.per_call:
            rendered = tuple(params.get(name) for name in self.per_call)
            if any(isinstance(value, list | tuple) for value in rendered):
                # IN lists add parameters of their own, with processors of their own.
                state = self.compiled.construct_expanded_state(params)
                values = _processed(state.parameters, {**self.processors, **state.processors})
                if state.positiontup is None:
                    return state.statement, values
                return state.statement, tuple(values[name] for name in state.positiontup)
            sql, names = self._rendered(params, rendered)
            names = names if self.names is not None else None
        values = _processed(self.compiled.construct_params(params), self.processors)
        if names is None:
            return sql, values
        return sql, tuple(values[name] for name in names)

    def _rendered(self, params: Params, rendered: tuple[Any, ...]) -> tuple[str, Any]:
        """The SQL with this call's ``rendered`` scalars (a LIMIT) in it, and its
        parameter order."""
        found = self.expanded.get(rendered)
        if found is None:
            found = self._expand(params)
            if len(self.expanded) < _EXPANDED_LIMIT:
                self.expanded[rendered] = found
        return found

    def rows(self, raw: list[Any], description: Any) -> list[Any]:
        if self.row_type is None:
            names = [d[0] for d in description]
            row_type = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            return [row_type(*r) for r in raw]
        made, converted = self.row_type, self.converted
        if not converted:
            return [_new_row(made, r) for r in raw]
        rows = []
        for r in raw:
            values = list(r)
            for i, process in converted:
                values[i] = process(values[i])
            rows.append(_new_row(made, values))
        return rows


#: A row from the driver's values, without the checks of the namedtuple's own __new__.
_new_row: Callable[[Any, Any], Any] = tuple.__new__

#: Rendered values (batch sizes) kept per statement; any others are rendered per call.
_EXPANDED_LIMIT = 64


def _result_processor(column: Any, dialect: Dialect) -> Any:
    return column.type.dialect_impl(dialect).result_processor(dialect, None)


def _processed(values: Any, processors: Mapping[str, Any]) -> Any:
    for name, process in processors.items():
        if name in values:
            values[name] = process(values[name])
    return values


def _compile(statement: ClauseElement, dialect: Dialect, keys: Sequence[str]) -> SQLCompiler:
    # INSERT and UPDATE without explicit values compile to the columns passed.
    column_keys = list(keys) if isinstance(statement, Insert | Update) else None
    compiler = _constants_inline(dialect.statement_compiler)
    return compiler(dialect, statement, column_keys=column_keys)


_inline_compilers: dict[type[SQLCompiler], type[SQLCompiler]] = {}


def _constants_inline(base: type[SQLCompiler]) -> type[SQLCompiler]:
    """The dialect's compiler, rendering the constants of a statement (the values written
    into :mod:`kanban_orm.queries`: statuses, the 1 of ``version + 1``) into its SQL
    instead of binding them.

    Hand-written SQL spells them out, and PostgreSQL plans by them: its statistics say
    how rare ``status = 'running'`` is, but not ``status = $3``. A prepared statement
    whose generic plan costs more than the plans made for the actual values is planned
    afresh on every call, which cost more than running the statement.
    """
    compiler = _inline_compilers.get(base)
    if compiler is None:

        class InlineConstants(base):  # type: ignore[valid-type,misc]
            def visit_bindparam(self, bindparam: BindParameter[Any], **kw: Any) -> str:
                if _is_constant(bindparam) and (
                    bindparam.value is None or _renders_inline(bindparam, self.dialect)
                ):
                    kw["literal_binds"] = True
                return super().visit_bindparam(bindparam, **kw)  # type: ignore[no-any-return]

        compiler = _inline_compilers[base] = InlineConstants
    return compiler


def _is_constant(bind: BindParameter[Any]) -> bool:
    """A value (or, for ``IN``, a list of them) given where the statement was written, of
    a type rendered as plain SQL; or a None, written as NULL."""
    if not bind.unique or bind.callable is not None or bind.literal_execute:
        return False
    if isinstance(bind.type, TypeDecorator | sqltypes.JSON):
        return False
    if not bind.expanding:
        return bind.value is None or isinstance(bind.value, str | int | bool)
    values = bind.value
    if not isinstance(values, list | tuple) or not values:
        return False
    return all(isinstance(value, str | int | bool) for value in values)


def _renders_inline(bind: BindParameter[Any], dialect: Dialect) -> bool:
    return bind.type.dialect_impl(dialect).literal_processor(dialect) is not None


def _rendered_per_call(compiled: SQLCompiler) -> tuple[str, ...]:
    """The parameters each call renders into the SQL: IN lists, and a ``literal_execute``
    parameter such as a LIMIT."""
    rendered = [*compiled.literal_execute_params, *compiled.post_compile_params]
    return tuple(compiled.bind_names[bind] for bind in rendered)


def _named_as_passed(compiled: SQLCompiler) -> tuple[str, ...] | None:
    """The parameter names, when each is the caller's value under its own name (a
    rendered scalar such as a LIMIT among them; not an IN list). None otherwise."""
    names = []
    for bind, name in compiled.bind_names.items():
        if name != bind.key or bind.callable is not None or bind.expanding:
            return None
        if not bind.required:
            return None  # a value given with the statement, used when the call has none
        names.append(name)
    return tuple(names)


def _python_defaults(compiled: SQLCompiler) -> dict[str, Any]:
    """Column defaults SQLAlchemy computes in Python (``default=1``) for the columns an
    INSERT or UPDATE leaves out; SQL-expression defaults are already in the SQL."""
    found = {}
    for column in [*compiled.insert_prefetch, *compiled.update_prefetch]:
        default: Any = column.default if column in compiled.insert_prefetch else column.onupdate
        if default is None or not default.is_scalar:
            raise NotImplementedError(f"column {column} needs a scalar or SQL default here")
        found[column.key] = default.arg
    return found


def _bind_processors(compiled: SQLCompiler, dialect: Dialect) -> dict[str, Any]:
    found = {}
    for bind, name in compiled.bind_names.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            found[name] = _none_made_once(process)
    return found


def _none_made_once(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process``, with its value for None worked out once: a JSON column's null (the
    text ``null``) is bound on every run a completion closes without metadata."""
    try:
        none = process(None)
    except Exception:  # a serializer of the caller's that refuses None: left to refuse
        return process
    return lambda value: none if value is None else process(value)


def _result_columns(statement: ClauseElement) -> list[Any]:
    if isinstance(statement, UpdateBase):
        return list(statement.exported_columns) if statement._returning else []
    selected = getattr(statement, "selected_columns", None)
    return list(selected) if selected is not None else []


#: Keyed by the dialect object itself (each Engine has its own): two engines may differ
#: in driver, parameter style or JSON serializer.
_cache: dict[tuple[int, int, tuple[str, ...]], tuple[ClauseElement, Dialect, Prepared]] = {}
_cache_lock = threading.Lock()
#: Far above the library's own statements (a few hundred with every filter combination).
_CACHE_LIMIT = 2000


def prepared(statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...]) -> Prepared:
    """The compiled form of ``statement``, made on first use. Statements are the named,
    long-lived objects of :mod:`kanban_orm.queries`; the entry holds the statement so
    its id cannot be reused by another object."""
    key = (id(statement), id(dialect), keys)
    hit = _cache.get(key)
    if hit is not None and hit[0] is statement and hit[1] is dialect:
        return hit[2]
    made = Prepared(statement, dialect, keys)
    with _cache_lock:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()  # statements built per call would otherwise pile up here
        _cache[key] = (statement, dialect, made)
    return made


#: Where Tx keeps a connection's cursor between transactions (see Tx.__init__).
_KEPT_CURSOR = "kanban_orm.cursor"


class Tx:
    """One write transaction's statements, on the driver connection the caller opened.

    ``session`` is the caller's Session: a task a transition returns refreshes the
    instance it already holds, else comes back detached (see :meth:`attach`).
    """

    def __init__(
        self,
        dbapi_connection: Any,
        dialect: Dialect,
        session: Session,
        on_disconnect: Callable[[], None],
        *,
        hide_parameters: bool = False,
        kept: dict[Any, Any] | None = None,
    ) -> None:
        self.dialect = dialect
        #: What this database does differently (kanban_orm.backends).
        self.backend: Backend = for_dialect(dialect)
        self.session = session
        #: Instances of the Session refreshed in place: if the transaction then fails,
        #: the caller expires them, so no value that never committed stays visible.
        self.refreshed: list[object] = []
        self._hide_parameters = hide_parameters
        self._connection = dbapi_connection
        self._on_disconnect = on_disconnect
        # Making and closing a psycopg cursor was a tenth of a claim_next + complete_task's
        # client time, and a new one starts with empty caches of how to send and read
        # each type. So, where the backend says so (Backend.keeps_cursor), one is kept
        # from one transaction to the next in ``kept``, the pool's info of the
        # connection (cleared when the pool replaces the connection; a cursor of
        # another connection found there is not used).
        self._kept = kept if self.backend.keeps_cursor else None
        #: The pool's info of the connection, where a backend keeps what it tracks per
        #: connection (SQLite: its WalBound); empty for a Session's own connection.
        self.pool_info: dict[Any, Any] = kept if kept is not None else {}
        #: A backend without UPDATE ... RETURNING runs such statements its own way.
        self._returning: Callable[[Tx, ClauseElement, Params], list[Any] | None] | None = getattr(
            self.backend, "run_returning", None
        )
        self._cursor: Any = None
        if self._kept is not None:
            # Kept with the connection it was made on: an asyncio driver's adapted
            # cursor does not say which that was.
            owner, cursor = self._kept.pop(_KEPT_CURSOR, (None, None))
            if cursor is not None and owner is dbapi_connection:
                self._cursor = cursor

    def execute(
        self, statement: ClauseElement, params: Params | Sequence[Params] | None = None
    ) -> Rows:
        """Run ``statement``; a list of parameter sets runs it once per set, in order."""
        if params is None or isinstance(params, Mapping):
            return Rows(self._run(statement, params or {}))
        batch = list(params)
        if len(batch) > 1 and _writes_only(statement) and _same_keys(batch):
            # One executemany: the driver loops in C (SQLite) or pipelines (psycopg).
            plan = prepared(statement, self.dialect, tuple(batch[0]))
            if not plan.per_call:
                self._call_many(plan.sql, [plan.bind(one)[1] for one in batch])
                return Rows([])
        found: list[Any] = []
        for one in batch:
            found.extend(self._run(statement, one))
        return Rows(found)

    def scalars(self, statement: ClauseElement, params: Params | None = None) -> Rows:
        return self.execute(statement, params).scalars()

    def raw(self, sql: str) -> None:
        """Transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT) as plain SQL."""
        self._call(sql, None)

    def run_for_cursor(self, statement: ClauseElement, params: Params) -> Any:
        """Run ``statement`` as it is; the driver's cursor (``rowcount``, ``lastrowid``)."""
        plan = prepared(statement, self.dialect, tuple(params))
        sql, values = plan.bind(params)
        return self._call(sql, values)

    def _run(self, statement: ClauseElement, params: Params) -> list[Any]:
        if self._returning is not None:
            emulated = self._returning(self, statement, params)
            if emulated is not None:
                return emulated
        plan = prepared(statement, self.dialect, tuple(params))
        sql, values = plan.bind(params)
        cursor = self._call(sql, values)
        if plan.row_type is not None:
            # Known columns: no need for the driver's description, which psycopg builds
            # afresh (a Column object per column) on every access.
            return plan.rows(cursor.fetchall(), None)
        if cursor.description is None:
            return []
        return plan.rows(cursor.fetchall(), cursor.description)

    def _call(self, sql: str, values: Any) -> Any:
        if self._cursor is None:
            self._cursor = self._connection.cursor()
        cursor = self._cursor
        try:
            if values is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, values)
        except self.dialect.loaded_dbapi.Error as error:
            raise self._translated(error, sql, values) from error
        return cursor

    def _call_many(self, sql: str, values: list[Any]) -> None:
        if self._cursor is None:
            self._cursor = self._connection.cursor()
        try:
            self._cursor.executemany(sql, values)
        except self.dialect.loaded_dbapi.Error as error:
            raise self._translated(error, sql, values) from error

    def commit(self) -> None:
        """Commit through the driver (see Backend.commit_write)."""
        try:
            self._connection.commit()
        except self.dialect.loaded_dbapi.Error as error:
            raise self._translated(error, "COMMIT", None) from error

    def _translated(self, error: Any, sql: str, values: Any) -> exc.StatementError:
        gone = self.dialect.is_disconnect(error, self._connection, self._cursor)
        if gone:
            self._on_disconnect()
        translated: exc.StatementError = exc.DBAPIError.instance(
            sql,
            values,
            error,
            self.dialect.loaded_dbapi.Error,
            connection_invalidated=gone,
            dialect=self.dialect,
            hide_parameters=self._hide_parameters,
        )
        return translated

    def close(self) -> None:
        # Not once the connection is closed (invalidated): the pool may already have
        # given its slot, and the same info, to another thread with a new connection.
        if self._cursor is not None and self._kept is not None and not self._connection.closed:
            self._kept[_KEPT_CURSOR] = (self._connection, self._cursor)
            self._cursor = None
        if self._cursor is not None:
            # A connection that is gone has nothing left to release (aiosqlite says
            # so with a ValueError).
            with contextlib.suppress(self.dialect.loaded_dbapi.Error, ValueError):
                self._cursor.close()
            self._cursor = None

    def attach(self, model: type[M], row: Any) -> M:
        """``row`` (all of ``model``'s columns) as a mapped instance.

        An instance the caller's Session already holds is refreshed in place, as the
        ORM's ``populate_existing`` would. Otherwise a new, detached instance with every
        attribute loaded: adding it to the Session would begin a Session transaction
        that the next call must then end, a cost paid on every claim for nothing.
        """
        mapper = model.__mapper__  # type: ignore[attr-defined]
        values = dict(zip(_attributes_of(mapper, row._fields), row, strict=True))
        key = mapper.identity_key_from_primary_key([values[a] for a in _key_of(mapper)])
        held = self.session.identity_map.get(key)
        if held is not None:
            state = instance_state(held)
            state.dict.update(values)
            # As a load with populate_existing: the new values become the committed ones
            # (the ORM's own loader does this; one call instead of one per attribute).
            state._commit_all(state.dict)
            self.refreshed.append(held)
            return held  # type: ignore[no-any-return]
        # What make_transient_to_detached does, minus working out again what is known
        # here: the identity key, and that every column is loaded.
        instance = mapper.class_manager.new_instance()
        state = instance_state(instance)
        state.dict.update(values)
        state.key = key
        state._commit_all(state.dict)
        return instance  # type: ignore[no-any-return]


def _writes_only(statement: ClauseElement) -> bool:
    """An INSERT, UPDATE or DELETE that returns no rows (so executemany can run it)."""
    return isinstance(statement, UpdateBase) and not statement._returning


def _same_keys(batch: list[Params]) -> bool:
    keys = batch[0].keys()
    return all(one.keys() == keys for one in batch)


_attributes: dict[Any, dict[str, str]] = {}
_attribute_names: dict[tuple[Any, tuple[str, ...]], tuple[str, ...]] = {}
_key_names: dict[Any, tuple[str, ...]] = {}


def _attributes_of(mapper: Any, fields: tuple[str, ...]) -> tuple[str, ...]:
    names = _attribute_names.get((mapper, fields))
    if names is None:
        names = _attribute_names[mapper, fields] = tuple(_attribute(mapper, f) for f in fields)
    return names


def _key_of(mapper: Any) -> tuple[str, ...]:
    names = _key_names.get(mapper)
    if names is None:
        names = _key_names[mapper] = tuple(_attribute(mapper, c.key) for c in mapper.primary_key)
    return names


def _attribute(mapper: Any, column_key: str) -> str:
    # Column keys and attribute names differ only where a column name is reserved on
    # declarative classes (TaskRun's "metadata" column is the attribute metadata_).
    names = _attributes.get(mapper)
    if names is None:
        configure_mappers()  # instrumentation is complete only once mappers are configured
        names = _attributes[mapper] = {
            column.key: mapper.get_property_by_column(column).key
            for column in mapper.local_table.columns
        }
    return names[column_key]
