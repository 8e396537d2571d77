"""The board's ASGI application: pages and fragments rendered on the server, a little
script for drag-and-drop and the live stream, all behind :class:`TokenAuth`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

import kanban_orm as kb
from kanban_orm.attachments import sanitize_name
from kanban_orm.states import Status

from . import TOKEN_ENV, actions, reads
from .auth import TokenAuth, csrf_token, new_token
from .metrics import registry
from .tailer import EventTailer, backlog

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: Comment lines on an idle stream, so proxies and browsers keep it open.
KEEPALIVE_SECONDS = 15.0

#: HTTP status for each kernel error a write can end in.
_STATUS_OF: tuple[tuple[type[kb.KanbanError], int], ...] = (
    (kb.TaskNotFound, 404),
    (kb.AttachmentNotFound, 404),
    (kb.InvalidTransition, 409),
    (kb.ClaimLost, 409),
    (kb.InvalidInput, 422),
    (kb.DatabaseBusy, 503),
)


def _age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return ""
    return _duration((now - then).total_seconds())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _path_segment(text: str) -> str:
    """``text`` percent-encoded as one URL path segment (``/`` included)."""
    return quote(text, safe="")


def content_disposition(name: str) -> str:
    """``attachment`` with ``name``: an ASCII ``filename`` (quotes, backslashes, ``%``,
    control and non-ASCII characters replaced by ``_``) and the exact name as RFC 5987's
    ``filename*``, so no name can break out of the header or its quoted string."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    exact = _path_segment(name)
    return f"attachment; filename=\"{fallback or 'attachment'}\"; filename*=UTF-8''{exact}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: user text is never markup
        undefined=jinja2.StrictUndefined,
    )
    env.filters["age"] = _age
    env.filters["duration"] = _duration
    env.filters["segment"] = _path_segment
    env.filters["tail"] = lambda text, n=400: text if len(text) <= n else "…" + text[-n:]
    return env


class Board:
    """State shared by the routes of one app: engine, sessions, templates, tailer."""

    def __init__(
        self, engine: Engine, *, token: str, read_only: bool, poll_interval: float
    ) -> None:
        self.engine = engine
        self.sessions: Callable[[], Session] = kb.session_factory(engine)
        self.token = token
        self.csrf = csrf_token(token)
        self.read_only = read_only
        self.env = _environment()
        self.tailer = EventTailer(self.sessions, interval=poll_interval)
        self.metrics = registry(self.sessions)

    def render(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            base=request.scope.get("root_path", ""),
            csrf=self.csrf,
            writable=not self.read_only,
            actions=actions,
            Status=Status,
            **context,
        )
        return HTMLResponse(html)

    # -- pages and fragments ----------------------------------------------------------

    def page(self, request: Request) -> Response:
        filters = reads.Filters.from_query(request.query_params)
        with self.sessions() as s:
            view = reads.board(s, filters)
            stats = reads.throughput(s, filters.tenant)
        return self.render(request, "board.html", view=view, stats=stats)

    def column(self, request: Request) -> Response:
        status = _status(request.path_params["status"])
        filters = reads.Filters.from_query(request.query_params)
        offset = _int(request.query_params.get("offset", "0"), "offset")
        with self.sessions() as s:
            column = reads.column_page(s, status, filters, offset)
        return self.render(
            request, "_cards.html", column=column, filters=filters, now=reads.utcnow()
        )

    def cards(self, request: Request) -> Response:
        filters = reads.Filters.from_query(request.query_params)
        raw = request.query_params.get("ids", "")
        ids = [_int(part, "ids") for part in raw.split(",") if part.strip()][:500]
        with self.sessions() as s:
            found, counts = reads.cards(s, ids, filters)
        now = reads.utcnow()
        template = self.env.get_template("_card.html")
        base = request.scope.get("root_path", "")
        rendered = [
            {
                "id": card.task.id,
                "status": card.task.status,
                "priority": card.task.priority,
                "html": template.render(card=card, now=now, base=base, writable=not self.read_only),
            }
            for card in found
        ]
        shown = {card.task.id for card in found}
        return JSONResponse(
            {"cards": rendered, "gone": [i for i in ids if i not in shown], "counts": counts}
        )

    def drawer(self, request: Request) -> Response:
        task_id = _int(request.path_params["task_id"], "task id")
        with self.sessions() as s:
            found = reads.drawer(s, task_id)
        return self.render(
            request, "drawer.html", d=found, moves=actions.available(found.task.status)
        )

    def attachment(self, request: Request) -> Response:
        """The newest attachment of that name, as a download: never drawn inline, never
        sniffed into HTML by the browser."""
        task_id = _int(request.path_params["task_id"], "task id")
        name = request.path_params["name"]
        with self.sessions() as s:
            try:
                data = kb.read_attachment(s, task_id, name)
            except kb.InvalidInput:  # no file name in it (".", "..", blank): none such
                raise kb.AttachmentNotFound(task_id, name) from None
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "content-disposition": content_disposition(sanitize_name(name)),
                "x-content-type-options": "nosniff",
                "cache-control": "private, no-store",
            },
        )

    def throughput(self, request: Request) -> Response:
        with self.sessions() as s:
            return JSONResponse(reads.throughput(s, request.query_params.get("tenant") or None))

    def metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics), media_type=CONTENT_TYPE_LATEST)

    # -- the live stream --------------------------------------------------------------

    async def stream(self, request: Request) -> Response:
        """Server-sent events, one per kernel event, each with its id: a browser that
        reconnects sends ``Last-Event-ID`` and gets every event after it."""
        resume = request.headers.get("last-event-id") or request.query_params.get("after")
        after = _int(resume, "last event id") if resume else None
        if after is None:
            with self.sessions() as s:
                after = await asyncio.to_thread(reads.last_event_id, s)
        await asyncio.to_thread(self.tailer.start)
        subscription, held = self.tailer.subscribe(after)

        async def events() -> AsyncIterator[str]:
            sent = after
            try:
                yield "retry: 1000\n\n"
                first = held
                if first is None:
                    with self.sessions() as s:
                        first = await asyncio.to_thread(backlog, s, after)
                while True:
                    for event in first:
                        if event.id > sent:
                            sent = event.id
                            yield f"id: {event.id}\ndata: {json.dumps(event.to_json())}\n\n"
                    try:
                        first = await asyncio.wait_for(
                            subscription.queue.get(), timeout=KEEPALIVE_SECONDS
                        )
                    except TimeoutError:
                        first = []
                        yield ": keepalive\n\n"
            finally:
                self.tailer.unsubscribe(subscription)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # -- writes -----------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise kb.InvalidInput("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise kb.InvalidInput("the request body must be a JSON object")
        return body

    async def create(self, request: Request) -> Response:
        body = await self._body(request)

        def work() -> int:
            with self.sessions() as s:
                return kb.create_task(
                    s,
                    title=body.get("title", ""),
                    body=body.get("body") or None,
                    assignee=body.get("assignee") or None,
                    tenant=body.get("tenant") or None,
                    priority=_int(body.get("priority") or 0, "priority"),
                    parents=[_int(p, "parents") for p in body.get("parents") or []],
                    triage=bool(body.get("triage")),
                    created_by=actions.ACTOR,
                )

        task_id = await asyncio.to_thread(work)
        return JSONResponse({"id": task_id}, status_code=201)

    async def move(self, request: Request) -> Response:
        task_id = _int(request.path_params["task_id"], "task id")
        body = await self._body(request)

        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise kb.InvalidInput("reason must be a string")

        def work() -> kb.Task:
            with self.sessions() as s:
                return actions.apply(
                    s,
                    task_id,
                    str(body.get("to", "")),
                    reason,
                    confirmed=body.get("confirmed") is True,
                )

        try:
            task = await asyncio.to_thread(work)
        except actions.Ask as question:
            return JSONResponse(
                {"ask": question.ask, "question": question.question, "error": question.question},
                status_code=428,
            )
        return JSONResponse({"id": task.id, "status": task.status})

    async def edit(self, request: Request) -> Response:
        task_id = _int(request.path_params["task_id"], "task id")
        body = await self._body(request)
        fields: dict[str, Any] = {}
        if "title" in body:
            fields["title"] = body["title"]
        if "body" in body:
            fields["body"] = body["body"] or None
        if "assignee" in body:
            fields["assignee"] = body["assignee"] or None
        if "priority" in body:
            fields["priority"] = _int(body["priority"], "priority")

        def work() -> kb.Task:
            with self.sessions() as s:
                return kb.update_task(s, task_id, **fields)

        task = await asyncio.to_thread(work)
        return JSONResponse({"id": task.id, "status": task.status})

    async def comment(self, request: Request) -> Response:
        task_id = _int(request.path_params["task_id"], "task id")
        body = await self._body(request)

        def work() -> int:
            with self.sessions() as s:
                found = kb.add_comment(
                    s,
                    task_id,
                    body=body.get("body", ""),
                    author=body.get("author") or actions.ACTOR,
                )
                return int(found.id)

        return JSONResponse({"id": await asyncio.to_thread(work)}, status_code=201)

    async def link(self, request: Request) -> Response:
        return await self._link(request, kb.link_tasks)

    async def unlink(self, request: Request) -> Response:
        return await self._link(request, kb.unlink_tasks)

    async def _link(self, request: Request, call: Callable[..., kb.Task]) -> Response:
        task_id = _int(request.path_params["task_id"], "task id")
        body = await self._body(request)
        if body.get("parent_id") not in (None, ""):
            parent, child = _int(body["parent_id"], "parent_id"), task_id
        elif body.get("child_id") not in (None, ""):
            parent, child = task_id, _int(body["child_id"], "child_id")
        else:
            raise kb.InvalidInput("give parent_id or child_id")

        def work() -> kb.Task:
            with self.sessions() as s:
                return call(s, parent=parent, child=child)

        task = await asyncio.to_thread(work)
        return JSONResponse({"id": task.id, "status": task.status})


def _status(value: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise HTTPException(404, f"no column {value!r}") from None


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise kb.InvalidInput(f"{what} must be an integer") from None


async def _kanban_error(request: Request, error: Exception) -> Response:
    status = next((code for kind, code in _STATUS_OF if isinstance(error, kind)), 400)
    return JSONResponse({"error": str(error)}, status_code=status)


async def _database_error(request: Request, error: Exception) -> Response:
    log.error("database error behind the web board", exc_info=error)
    return JSONResponse({"error": "the database could not be read; try again"}, status_code=503)


def build(
    engine: Engine,
    *,
    token: str | None,
    read_only: bool,
    poll_interval: float,
    housekeeping: bool = False,
) -> Starlette:
    """See :func:`kanban_orm.web.app`."""
    chosen = token if token is not None else os.environ.get(TOKEN_ENV) or new_token()
    if not chosen.strip():
        raise kb.ConfigError("the web board's token must not be empty")
    board = Board(engine, token=chosen, read_only=read_only, poll_interval=poll_interval)
    # Built here, so a bad KANBAN_RETENTION_* setting fails the app, not a thread later.
    keeper = kb.Housekeeper(sessions=board.sessions) if housekeeping else None
    routes: list[BaseRoute] = [
        Route("/", board.page),
        Route("/columns/{status}", board.column),
        Route("/api/cards", board.cards),
        Route("/api/throughput", board.throughput),
        Route("/tasks/{task_id}", board.drawer),
        Route("/tasks/{task_id}/attachments/{name}", board.attachment),
        Route("/stream", board.stream),
        Route("/metrics", board.metrics_text),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if not read_only:
        routes += [
            Route("/api/tasks", board.create, methods=["POST"]),
            Route("/api/tasks/{task_id}/move", board.move, methods=["POST"]),
            Route("/api/tasks/{task_id}/edit", board.edit, methods=["POST"]),
            Route("/api/tasks/{task_id}/comments", board.comment, methods=["POST"]),
            Route("/api/tasks/{task_id}/link", board.link, methods=["POST"]),
            Route("/api/tasks/{task_id}/unlink", board.unlink, methods=["POST"]),
        ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if keeper is not None:
            keeper.start()  # nothing without a retention age set
        try:
            yield
        finally:
            board.tailer.stop()
            if keeper is not None:
                # A prune under way finishes its batch loop first (each batch is short).
                await asyncio.to_thread(keeper.stop, 5.0)

    built = Starlette(
        routes=routes,
        middleware=[Middleware(TokenAuth, token=chosen)],
        exception_handlers={kb.KanbanError: _kanban_error, SQLAlchemyError: _database_error},
        lifespan=lifespan,
    )
    built.state.token = chosen
    built.state.board = board
    built.state.housekeeper = keeper
    return built
