"""What the web board reads: columns with paging and filters, one task's drawer, the
throughput panel. Read-only statements on the public models; every transition goes
through the kernel's functions (see :mod:`kanban_orm.web.actions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session, aliased

import kanban_orm as kb
from kanban_orm import backends
from kanban_orm.states import FINISHED, Status
from kanban_orm.workflow import count_by_status

#: The board's columns, left to right; archived is drawn only behind its toggle.
COLUMNS: tuple[Status, ...] = (
    Status.TRIAGE,
    Status.TODO,
    Status.READY,
    Status.RUNNING,
    Status.REVIEW,
    Status.BLOCKED,
    Status.DONE,
)
#: Cards a column draws at first and per "more" page: a board of 10,000 tasks draws
#: a few hundred cards, and the rest are a click (or a scroll) away.
PAGE_SIZE = 50
#: The drawer shows the task's latest events, newest last.
DRAWER_EVENTS = 100
THROUGHPUT_WINDOW = timedelta(minutes=15)
WAIT_WINDOW = timedelta(hours=1)


def utcnow() -> datetime:
    """Naive UTC, as the kernel stores its timestamps."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Filters:
    """The board's view, kept in the URL: ``?tenant=&assignee=&q=&archived=1``."""

    tenant: str | None = None
    assignee: str | None = None
    text: str | None = None
    archived: bool = False

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Filters:
        def clean(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            return value or None

        return cls(
            tenant=clean("tenant"),
            assignee=clean("assignee"),
            text=clean("q"),
            archived=params.get("archived") in ("1", "true", "on"),
        )

    def query(self, **overrides: Any) -> str:
        """This view's query string (without ``?``), with ``overrides`` applied."""
        values: dict[str, Any] = {
            "tenant": self.tenant,
            "assignee": self.assignee,
            "q": self.text,
            "archived": "1" if self.archived else None,
            **overrides,
        }
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.tenant is not None:
            where.append(kb.Task.tenant == self.tenant)
        if self.assignee is not None:
            where.append(kb.Task.assignee == self.assignee)
        if self.text is not None:
            where.append(
                or_(
                    kb.Task.title.icontains(self.text, autoescape=True),
                    kb.Task.body.icontains(self.text, autoescape=True),
                )
            )
        return where

    @property
    def columns(self) -> tuple[Status, ...]:
        return (*COLUMNS, Status.ARCHIVED) if self.archived else COLUMNS


@dataclass
class Card:
    """One task as a card draws it."""

    task: kb.Task
    claimer: str | None = None
    waiting_on: int = 0  # unfinished parents
    children: int = 0


@dataclass
class Column:
    status: Status
    count: int
    cards: list[Card] = field(default_factory=list)
    next_offset: int | None = None  # where the next page starts, None at the end


@dataclass
class BoardView:
    filters: Filters
    columns: list[Column]
    tenants: list[str]
    assignees: list[str]
    last_event_id: int
    now: datetime


def _column_statement(status: Status, filters: Filters) -> Select[kb.Task]:
    order: list[ColumnElement[Any]]
    if status is Status.DONE:  # the done-order index's expression (models.DONE_ORDER_SQL)
        order = [func.coalesce(kb.Task.completed_at, kb.Task.created_at).desc(), kb.Task.id.desc()]
    elif status in FINISHED:
        order = [func.coalesce(kb.Task.completed_at, kb.Task.updated_at).desc(), kb.Task.id.desc()]
    else:
        order = [kb.Task.priority.desc(), kb.Task.id.asc()]
    return (
        select(kb.Task)
        .where(kb.Task.status == status.value, *filters.conditions())
        .order_by(*order)
        .execution_options(populate_existing=True)
    )


def status_counts(s: Session, filters: Filters) -> dict[str, int]:
    """Tasks per status under ``filters``. Unfiltered, or by tenant alone, it is the
    library's own count (kanban_orm.workflow.count_by_status: the finished columns from
    their kept tallies, not a scan of the history); other filters count what they match."""
    if filters.assignee is None and filters.text is None:
        return count_by_status(s, tenant=filters.tenant)
    statement = (
        select(kb.Task.status, func.count()).where(*filters.conditions()).group_by(kb.Task.status)
    )
    return {status: n for status, n in s.execute(statement)}


def last_event_id(s: Session) -> int:
    return int(s.scalar(select(func.coalesce(func.max(kb.TaskEvent.id), 0))) or 0)


def board(s: Session, filters: Filters, *, page_size: int = PAGE_SIZE) -> BoardView:
    """Every column's count and first page of cards, on one snapshot.

    The last event id is read first: a browser that tails from it may see an event
    whose change the page already shows (harmless, the card is redrawn), never miss one.
    """
    with s.begin():
        # One snapshot for every column: at READ COMMITTED a task claimed between two
        # statements would be drawn twice.
        backends.of(s).snapshot_reads(s)
        after = last_event_id(s)
        counts = status_counts(s, filters)
        columns = []
        for status in filters.columns:
            tasks = list(s.scalars(_column_statement(status, filters).limit(page_size)))
            count = counts.get(status.value, 0)
            more = page_size if count > page_size else None
            columns.append(Column(status, count, decorate(s, tasks), more))
        tenant_rows = s.scalars(
            select(kb.Task.tenant).where(kb.Task.tenant.is_not(None)).distinct().limit(200)
        )
        tenants = sorted(t for t in tenant_rows if t is not None)
        scope = [] if filters.tenant is None else [kb.Task.tenant == filters.tenant]
        assignee_rows = s.scalars(
            select(kb.Task.assignee)
            .where(kb.Task.assignee.is_not(None), *scope)
            .distinct()
            .limit(200)
        )
        assignees = sorted(a for a in assignee_rows if a is not None)
    return BoardView(filters, columns, tenants, assignees, after, utcnow())


def column_page(
    s: Session, status: Status, filters: Filters, offset: int, *, page_size: int = PAGE_SIZE
) -> Column:
    """One more page of a column's cards, from ``offset``."""
    with s.begin():
        count = s.scalar(
            select(func.count()).where(kb.Task.status == status.value, *filters.conditions())
        )
        statement = _column_statement(status, filters).offset(offset).limit(page_size)
        tasks = list(s.scalars(statement))
        following = offset + page_size
        more = following if (count or 0) > following else None
        return Column(status, count or 0, decorate(s, tasks), more)


def cards(s: Session, ids: Iterable[int], filters: Filters) -> tuple[list[Card], dict[str, int]]:
    """The cards among ``ids`` that this view shows, and every column's count: what a
    browser needs to redraw after events about those tasks."""
    wanted = sorted(set(ids))
    with s.begin():
        counts: dict[str, int] = dict.fromkeys((c.value for c in filters.columns), 0)
        counts.update(status_counts(s, filters))
        shown = [c.value for c in filters.columns]
        tasks = list(
            s.scalars(
                select(kb.Task)
                .where(kb.Task.id.in_(wanted), kb.Task.status.in_(shown), *filters.conditions())
                .execution_options(populate_existing=True)
            )
        )
        return decorate(s, tasks), counts


def decorate(s: Session, tasks: Sequence[kb.Task]) -> list[Card]:
    """Cards for ``tasks``: the running ones' claimers and everyone's dependency counts."""
    if not tasks:
        return []
    ids = [t.id for t in tasks]
    run_ids = [t.current_run_id for t in tasks if t.current_run_id is not None]
    claimers: dict[int, str] = {}
    if run_ids:
        claimers = {
            task_id: claimer
            for task_id, claimer in s.execute(
                select(kb.TaskRun.task_id, kb.TaskRun.claimer).where(kb.TaskRun.id.in_(run_ids))
            )
        }
    parent = aliased(kb.Task)
    finished = [status.value for status in FINISHED]
    waiting = dict(
        s.execute(
            select(kb.TaskLink.child_id, func.count())
            .join(parent, parent.id == kb.TaskLink.parent_id)
            .where(kb.TaskLink.child_id.in_(ids), parent.status.not_in(finished))
            .group_by(kb.TaskLink.child_id)
        ).all()
    )
    children = dict(
        s.execute(
            select(kb.TaskLink.parent_id, func.count())
            .where(kb.TaskLink.parent_id.in_(ids))
            .group_by(kb.TaskLink.parent_id)
        ).all()
    )
    return [
        Card(t, claimers.get(t.id), int(waiting.get(t.id, 0)), int(children.get(t.id, 0)))
        for t in tasks
    ]


@dataclass(frozen=True)
class DrawerAttachment:
    """The newest attachment of one name (the one its download serves), the attempt of
    the run that made it, and how many older ones of that name it hides."""

    info: kb.Attachment
    attempt: int | None = None
    older: int = 0


@dataclass
class Drawer:
    task: kb.Task
    runs: list[kb.TaskRun]
    events: list[kb.TaskEvent]
    comments: list[kb.TaskComment]
    parents: list[kb.Task]
    children: list[kb.Task]
    now: datetime
    attachments: list[DrawerAttachment] = field(default_factory=list)


def newest_by_name(
    attachments: Sequence[kb.Attachment], runs: Sequence[kb.TaskRun] = ()
) -> list[DrawerAttachment]:
    """One entry per name, the newest (what ``read_attachment`` returns), oldest first."""
    attempts = {r.id: r.attempt for r in runs}
    newest: dict[str, kb.Attachment] = {}
    count: dict[str, int] = {}
    for a in attachments:  # oldest first: the last of each name wins
        newest[a.name] = a
        count[a.name] = count.get(a.name, 0) + 1
    return [
        DrawerAttachment(a, attempts.get(a.run_id or 0), count[a.name] - 1)
        for a in sorted(newest.values(), key=lambda a: a.id)
    ]


def drawer(s: Session, task_id: int) -> Drawer:
    """Everything the drawer shows for one task. Raises :class:`kb.TaskNotFound`."""
    task = kb.get_task(s, task_id)
    runs = kb.list_runs(s, task_id=task_id)
    comments = kb.list_comments(s, task_id=task_id)
    links = kb.list_links(s, task_id=task_id)
    attachments = kb.list_attachments(s, task_id)
    with s.begin():
        events = list(
            s.scalars(
                select(kb.TaskEvent)
                .where(kb.TaskEvent.task_id == task_id)
                .order_by(kb.TaskEvent.id.desc())
                .limit(DRAWER_EVENTS)
            )
        )
        related = {
            t.id: t
            for t in s.scalars(
                select(kb.Task).where(kb.Task.id.in_([*links.parents, *links.children]))
            )
        }
    events.reverse()
    return Drawer(
        task,
        runs,
        events,
        comments,
        [related[i] for i in links.parents if i in related],
        [related[i] for i in links.children if i in related],
        utcnow(),
        newest_by_name(attachments, runs),
    )


def throughput(s: Session, tenant: str | None = None) -> dict[str, float | None]:
    """Claims and completions per minute over the last 15 minutes, and the median wait
    between becoming claimable and being claimed over the last hour (runs started then:
    since the previous run ended, or since the task was created)."""
    now = utcnow()
    scope = [] if tenant is None else [kb.Task.tenant == tenant]
    with s.begin():
        per_kind = dict(
            s.execute(
                select(kb.TaskEvent.kind, func.count())
                .join(kb.Task, kb.Task.id == kb.TaskEvent.task_id)
                .where(
                    kb.TaskEvent.kind.in_(("claimed", "completed")),
                    kb.TaskEvent.created_at >= now - THROUGHPUT_WINDOW,
                    *scope,
                )
                .group_by(kb.TaskEvent.kind)
            ).all()
        )
        previous = aliased(kb.TaskRun)
        rows = s.execute(
            select(kb.TaskRun.started_at, previous.ended_at, kb.Task.created_at, kb.Task.run_at)
            .join(kb.Task, kb.Task.id == kb.TaskRun.task_id)
            .outerjoin(
                previous,
                (previous.task_id == kb.TaskRun.task_id)
                & (previous.attempt == kb.TaskRun.attempt - 1),
            )
            .where(kb.TaskRun.started_at >= now - WAIT_WINDOW, *scope)
            .order_by(kb.TaskRun.id.desc())
            .limit(5000)
        ).all()
    waits = [
        max(
            0.0,
            (started - max(d for d in (ended, created, run_at) if d is not None)).total_seconds(),
        )
        for started, ended, created, run_at in rows
    ]
    minutes = THROUGHPUT_WINDOW.total_seconds() / 60
    return {
        "claims_per_minute": per_kind.get("claimed", 0) / minutes,
        "completions_per_minute": per_kind.get("completed", 0) / minutes,
        "p50_wait_seconds": median(waits) if waits else None,
    }
