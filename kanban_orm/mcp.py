"""The board as a Model Context Protocol server: ``kanban-orm mcp``.

A language-model agent reads the board and moves cards through tools. The server, not
the model, keeps the claim tokens of the tasks its session claimed, and renews their
leases from a thread of its own while the session lives: a model never sees a token,
so a confused one cannot complete, fail or block a task it does not hold. Each call
opens its own Session; every write is one library call, so a rejected call writes
nothing, and its message reaches the model as a tool error (never a traceback).

Built on the official ``mcp`` SDK (the ``mcp`` extra) and on the public API only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field
from sqlalchemy.orm import Session

import kanban_orm as kb

# Settings are read where they are validated; everything else is the public API.
from .config import claim_ttl_seconds

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest text field (body, result, summary, comment, error) a tool returns whole.
MAX_TEXT_CHARS = 4000
#: Longest title in a list of cards.
MAX_TITLE_CHARS = 200
#: Most runs or comments show_task returns (the newest).
MAX_HISTORY_ITEMS = 20
#: list_tasks returns at most this many cards; board this many per column.
MAX_LIST_LIMIT = 200
DEFAULT_LIST_LIMIT = 50
#: The largest attachment a resource read returns.
MAX_RESOURCE_BYTES = 1024 * 1024
BOARD_PER_COLUMN = 10

INSTRUCTIONS = """\
A shared Kanban board. Tasks move triage -> todo -> ready -> running -> done (or blocked,
review, archived); a task waits in 'todo' until every parent is done.
To work: claim_next gives you a ready task and holds it for you (the server keeps the
lease alive while this session lives); then finish it with complete_task, fail_task,
block_task or submit_for_review. You can only finish tasks this session holds.
Plan work with create_task (parents = ids that must be done first); leave notes with
add_comment. Long texts in answers are truncated with a note."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def clip(text: str | None, limit: int = MAX_TEXT_CHARS) -> str | None:
    """``text``, or its first ``limit`` characters and a note saying how much was cut."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}\n[truncated: {len(text) - limit} more characters not shown]"


class BoardSession:
    """One MCP session's view of the board: where it is, who it is, what it holds.

    ``held`` maps a task id to the claim token of the claim this session made; only
    this object ever reads a token. A renewal thread heartbeats every held claim each
    third of the lease, so a claim outlives the model's thinking but not the server.
    """

    def __init__(
        self,
        url: str | None,
        *,
        claimer: str,
        assignee: str | None = None,
        tenant: str | None = None,
        ttl_seconds: float | None = None,
    ) -> None:
        self.url = url
        self.claimer = claimer
        self.assignee = assignee
        self.tenant = tenant
        self.ttl_seconds = ttl_seconds
        self._held: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- sessions and claims ---------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = kb.connect(self.url)
        try:
            yield session
        finally:
            session.close()

    def token(self, task_id: int) -> str | None:
        with self._lock:
            return self._held.get(task_id)

    def hold(self, task_id: int, token: str) -> None:
        with self._lock:
            self._held[task_id] = token

    def drop(self, task_id: int) -> None:
        with self._lock:
            self._held.pop(task_id, None)

    def held_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    # -- lease renewal ---------------------------------------------------------------

    def renew_interval(self) -> float:
        ttl = self.ttl_seconds if self.ttl_seconds is not None else claim_ttl_seconds()
        return max(0.5, ttl / 3)

    def start(self) -> None:
        """Start renewing the leases of held claims (a daemon thread)."""
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_loop, name="kanban-mcp-leases", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_interval()):
            self.renew_all()

    def renew_all(self) -> None:
        """Heartbeat every held claim once; a claim that no longer holds is forgotten."""
        with self._lock:
            held = dict(self._held)
        for task_id, token in held.items():
            try:
                with self.session() as session:
                    kb.heartbeat(session, task_id, claim_lock=token, ttl_seconds=self.ttl_seconds)
            except (kb.ClaimLost, kb.TaskNotFound) as lost:
                log.warning("task %s: claim lost: %s", task_id, lost)
                self.drop(task_id)
            except kb.KanbanError as error:  # busy or unreachable: try again next round
                log.warning("task %s: lease not renewed: %s", task_id, error)

    def close(self) -> None:
        """Stop renewing and hand every held task back to ``ready``.

        Nobody else can finish a claim whose token only this process knew, so waiting
        for its lease to run out would only keep the task idle.
        """
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        for task_id in self.held_ids():
            token = self.token(task_id)
            if token is None:
                continue
            try:
                with self.session() as session:
                    kb.release_task(session, task_id, claim_lock=token, reason="MCP session ended")
            except kb.KanbanError as error:
                log.warning("task %s: not released: %s", task_id, error)
            self.drop(task_id)


# -- JSON shapes a model reads ------------------------------------------------------------


def card(task: kb.Task, board: BoardSession) -> dict[str, Any]:
    """The task's card as a model sees it: no token, long texts clipped."""
    return {
        "id": task.id,
        "title": task.title,
        "status": task.status,
        "priority": task.priority,
        "assignee": task.assignee,
        "tenant": task.tenant,
        "attempts": task.attempts,
        "held_by_you": board.token(task.id) is not None,
        "body": clip(task.body),
        "result": clip(task.result),
        "block_reason": clip(task.block_reason),
        "claim_expires": _iso(task.claim_expires),
        "created_by": task.created_by,
        "created_at": _iso(task.created_at),
        "completed_at": _iso(task.completed_at),
    }


def line(task: kb.Task, board: BoardSession) -> dict[str, Any]:
    """A task in a list: enough to choose one, not its whole text."""
    return {
        "id": task.id,
        "title": clip(task.title, MAX_TITLE_CHARS),
        "status": task.status,
        "priority": task.priority,
        "assignee": task.assignee,
        "held_by_you": board.token(task.id) is not None,
    }


def run_view(run: kb.TaskRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "attempt": run.attempt,
        "claimer": run.claimer,
        "started_at": _iso(run.started_at),
        "ended_at": _iso(run.ended_at),
        "outcome": run.outcome,
        "summary": clip(run.summary),
        "error": clip(run.error),
    }


def comment_view(comment: kb.TaskComment) -> dict[str, Any]:
    return {
        "id": comment.id,
        "author": comment.author,
        "body": clip(comment.body),
        "created_at": _iso(comment.created_at),
    }


def newest(items: list[T], what: str, shown: dict[str, Any]) -> list[T]:
    """The newest :data:`MAX_HISTORY_ITEMS` of ``items``, noting in ``shown`` what was left."""
    if len(items) <= MAX_HISTORY_ITEMS:
        return items
    shown.setdefault("notes", []).append(
        f"{what}: only the newest {MAX_HISTORY_ITEMS} of {len(items)} shown"
    )
    return items[-MAX_HISTORY_ITEMS:]


def task_detail(session: Session, board: BoardSession, task_id: int) -> dict[str, Any]:
    """show_task's answer and ``task://{id}``: card, links, runs, comments and attachments
    (their names and sizes; the bytes are the resource ``task://{id}/attachments/{name}``)."""
    task = board_task(session, board, task_id)
    shown: dict[str, Any] = {"task": card(task, board)}
    parents, children = kb.list_links(session, task_id=task_id)
    shown["parents"] = list(parents)
    shown["children"] = list(children)
    runs = kb.list_runs(session, task_id=task_id)
    shown["runs"] = [run_view(r) for r in newest(runs, "runs", shown)]
    comments = kb.list_comments(session, task_id=task_id)
    shown["comments"] = [comment_view(c) for c in newest(comments, "comments", shown)]
    files = kb.list_attachments(session, task_id)
    shown["attachments"] = [
        {
            "name": a.name,
            "size": a.size,
            "run_id": a.run_id,
            "created_at": _iso(a.created_at),
            "uri": f"task://{task_id}/attachments/{a.name}",
        }
        for a in newest(files, "attachments", shown)
    ]
    return shown


def board_task(session: Session, board: BoardSession, task_id: int) -> kb.Task:
    """The task, if this session may see it: one of another tenant does not exist here."""
    task = kb.get_task(session, task_id)
    if board.tenant is not None and task.tenant != board.tenant:
        raise kb.TaskNotFound(task_id)
    return task


def not_held(session: Session, board: BoardSession, task_id: int) -> ToolError:
    """The error for a write on a task this session does not hold: who does, if anyone."""
    task = board_task(session, board, task_id)
    if task.status == kb.Status.RUNNING.value:
        run = kb.latest_run(session, task_id)
        holder = "another session" if run is None else repr(run.claimer)
        if run is not None and run.claimer == board.claimer:
            holder = f"another session named {holder}"  # same --claimer, other process
        since = f" since {_iso(run.started_at)}" if run is not None else ""
        return ToolError(
            f"task {task_id} is held by {holder}{since}, not by this session"
            f" ({board.claimer!r}); nothing was written"
        )
    return ToolError(
        f"task {task_id} is {task.status!r} and this session does not hold it"
        " (claim it with claim_next first); nothing was written"
    )


# -- the server ---------------------------------------------------------------------------

TaskId = Annotated[int, Field(description="The task's id (an integer).", ge=1)]
Result = Annotated[str | None, Field(description="The task's result: what was produced or found.")]
Summary = Annotated[str | None, Field(description="A short note on how this attempt went.")]


def build_server(board: BoardSession, *, read_only: bool = False) -> MCPServer[Any]:
    """The MCP server for ``board``: read tools always, write tools unless ``read_only``."""
    server: MCPServer[Any] = MCPServer(
        "kanban-orm",
        instructions=INSTRUCTIONS,
        version=kb.__version__,
        log_level="WARNING",
    )
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

    def call(work: Callable[[Session], T]) -> T:
        """Run one tool's work on a fresh Session; a library error becomes a tool error."""
        try:
            with board.session() as session:
                return work(session)
        except ToolError:
            raise
        except kb.KanbanError as error:
            raise ToolError(str(error)) from error
        except Exception as error:  # not the model's fault: one line for it, the rest logged
            log.exception("tool failed")
            first = (str(error).strip().splitlines() or [""])[0]
            kind = type(error).__name__
            raise ToolError(f"internal error ({kind}): {clip(first, 300)}") from error

    # -- reads ---------------------------------------------------------------------------

    @server.tool(
        description="List tasks on the board (id order), optionally only one status or assignee.",
        annotations=reads,
    )
    def list_tasks(
        status: Annotated[
            str | None,
            Field(
                description="Only tasks in this status: "
                + ", ".join(s.value for s in kb.Status)
                + " (default: all but archived)."
            ),
        ] = None,
        assignee: Annotated[str | None, Field(description="Only tasks assigned to this.")] = None,
        limit: Annotated[
            int, Field(description="At most this many tasks.", ge=1, le=MAX_LIST_LIMIT)
        ] = DEFAULT_LIST_LIMIT,
    ) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            tasks = kb.list_tasks(
                session, status=status, assignee=assignee, tenant=board.tenant, limit=limit + 1
            )
            shown: dict[str, Any] = {"tasks": [line(t, board) for t in tasks[:limit]]}
            if len(tasks) > limit:
                shown["notes"] = [f"more than {limit} tasks match; raise limit or filter"]
            return shown

        return call(work)

    @server.tool(
        description="Show one task: its card, parents, children, runs, comments and attachments.",
        annotations=reads,
    )
    def show_task(task_id: TaskId) -> dict[str, Any]:
        return call(lambda session: task_detail(session, board, task_id))

    @server.tool(
        name="board",
        description="The board at a glance: task counts per status and the top cards of each.",
        annotations=reads,
    )
    def board_overview() -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            cards, counts = kb.board_cards(
                session, tenant=board.tenant, per_column=BOARD_PER_COLUMN
            )
            columns: dict[str, list[dict[str, Any]]] = {
                s.value: [] for s in kb.Status if s is not kb.Status.ARCHIVED
            }
            for task in cards:
                columns[task.status].append(line(task, board))
            return {
                "counts": counts,
                "columns": columns,
                "held_by_you": board.held_ids(),
                "notes": [f"at most {BOARD_PER_COLUMN} cards per column are listed"],
            }

        return call(work)

    @server.resource(
        "task://{task_id}",
        name="task",
        description="A task's card, links, runs and comments as JSON.",
        mime_type="application/json",
    )
    def task_resource(task_id: str) -> str:
        try:
            number = int(task_id)
        except ValueError:
            raise ResourceNotFoundError(f"task id must be an integer, not {task_id!r}") from None
        try:
            with board.session() as session:
                return json.dumps(task_detail(session, board, number), ensure_ascii=False)
        except kb.TaskNotFound as missing:
            raise ResourceNotFoundError(str(missing)) from missing
        except kb.KanbanError as error:
            raise ResourceError(str(error)) from error

    @server.resource(
        "task://{task_id}/attachments/{name}",
        name="attachment",
        description="The newest attachment of that name on a task: text, or bytes.",
    )
    def attachment_resource(task_id: str, name: str) -> str | bytes:
        try:
            with board.session() as session:
                board_task(session, board, int(task_id))
                data = kb.read_attachment(session, int(task_id), name)
        except ValueError:
            raise ResourceNotFoundError(f"task id must be an integer, not {task_id!r}") from None
        except (kb.TaskNotFound, kb.AttachmentNotFound) as missing:
            raise ResourceNotFoundError(str(missing)) from missing
        except kb.KanbanError as error:
            raise ResourceError(str(error)) from error
        if len(data) > MAX_RESOURCE_BYTES:
            raise ResourceError(
                f"attachment {name!r} is {len(data)} bytes; this server hands out at most"
                f" {MAX_RESOURCE_BYTES}"
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data

    if read_only:
        return server

    # -- writes --------------------------------------------------------------------------

    @server.tool(
        description="Create a task; it waits in 'todo' until every parent task is done.",
        annotations=writes,
    )
    def create_task(
        title: Annotated[str, Field(description="What needs doing, in one line.")],
        body: Annotated[str | None, Field(description="Details, acceptance criteria.")] = None,
        parents: Annotated[
            list[int],
            Field(description="Ids of tasks that must be done before this one can start."),
        ] = [],  # noqa: B006 - the SDK copies defaults into the schema, never mutates them
        priority: Annotated[int, Field(description="Higher is claimed first.")] = 0,
        assignee: Annotated[
            str | None, Field(description="Who (or which pool of workers) should take it.")
        ] = None,
    ) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            for parent in parents:
                board_task(session, board, parent)
            task_id = kb.create_task(
                session,
                title=title,
                body=body,
                parents=parents,
                priority=priority,
                assignee=assignee,
                tenant=board.tenant,
                created_by=board.claimer,
            )
            return {"task": card(kb.get_task(session, task_id), board)}

        return call(work)

    @server.tool(
        description="Claim a ready task to work on (the highest priority, or task_id); it is"
        " held for you until you finish it.",
        annotations=writes,
    )
    def claim_next(
        task_id: Annotated[
            int | None, Field(description="Claim this task rather than the next in line.")
        ] = None,
    ) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            if task_id is None:
                task = kb.claim_next(
                    session,
                    claimer=board.claimer,
                    assignee=board.assignee,
                    tenant=board.tenant,
                    ttl_seconds=board.ttl_seconds,
                )
                if task is None:
                    return {"task": None, "message": "no ready task to claim right now"}
            else:
                board_task(session, board, task_id)
                task = kb.claim_task(
                    session, task_id, claimer=board.claimer, ttl_seconds=board.ttl_seconds
                )
                if task is None:
                    current = kb.get_task(session, task_id)
                    return {
                        "task": None,
                        "message": f"task {task_id} is {current.status!r}, not claimable now",
                    }
            assert task.claim_lock is not None  # a claimed task is running, so it has one
            board.hold(task.id, task.claim_lock)
            return {"task": card(task, board)}

        return call(work)

    def held(session: Session, task_id: int) -> str:
        token = board.token(task_id)
        if token is None:
            raise not_held(session, board, task_id)
        return token

    def fenced(task_id: int, move: Callable[[Session, str], kb.Task]) -> dict[str, Any]:
        """Run ``move`` with this session's token for the task; forget the claim after."""

        def work(session: Session) -> dict[str, Any]:
            token = held(session, task_id)
            try:
                task = move(session, token)
            except kb.ClaimLost as lost:
                board.drop(task_id)
                raise ToolError(f"{lost}: this session's claim on it has ended") from lost
            if task.status != kb.Status.RUNNING.value:
                board.drop(task_id)
            return {"task": card(task, board)}

        return call(work)

    @server.tool(
        description="Extend the lease on a task you hold now (the server also renews it).",
        annotations=writes,
    )
    def heartbeat(task_id: TaskId) -> dict[str, Any]:
        def move(session: Session, token: str) -> kb.Task:
            kb.heartbeat(session, task_id, claim_lock=token, ttl_seconds=board.ttl_seconds)
            return kb.get_task(session, task_id)

        return fenced(task_id, move)

    @server.tool(
        description="Mark a task you hold as done, with its result; its waiting children may"
        " become ready.",
        annotations=writes,
    )
    def complete_task(
        task_id: TaskId, result: Result = None, summary: Summary = None
    ) -> dict[str, Any]:
        return fenced(
            task_id,
            lambda session, token: kb.complete_task(
                session, task_id, claim_lock=token, result=result, summary=summary
            ),
        )

    @server.tool(
        description="Record that your attempt at a task you hold failed; it is retried later"
        " unless retry is false or attempts are used up.",
        annotations=writes,
    )
    def fail_task(
        task_id: TaskId,
        error: Annotated[str, Field(description="What went wrong.")],
        retry: Annotated[
            bool, Field(description="Let the task be tried again (default true).")
        ] = True,
    ) -> dict[str, Any]:
        return fenced(
            task_id,
            lambda session, token: kb.fail_task(
                session, task_id, claim_lock=token, error=error, retry=retry
            ),
        )

    @server.tool(
        description="Block a task (one you hold, or one nobody is running) with the reason it"
        " cannot go on.",
        annotations=writes,
    )
    def block_task(
        task_id: TaskId,
        reason: Annotated[str, Field(description="Why it cannot go on; what it waits for.")],
    ) -> dict[str, Any]:
        if board.token(task_id) is not None:
            return fenced(
                task_id,
                lambda session, token: kb.block_task(
                    session, task_id, reason=reason, claim_lock=token
                ),
            )

        def work(session: Session) -> dict[str, Any]:
            task = board_task(session, board, task_id)
            if task.status == kb.Status.RUNNING.value:
                raise not_held(session, board, task_id)
            return {"task": card(kb.block_task(session, task_id, reason=reason), board)}

        return call(work)

    @server.tool(
        description="Add a comment to any task (a note, a question, progress).",
        annotations=writes,
    )
    def add_comment(
        task_id: TaskId,
        body: Annotated[str, Field(description="The comment's text.")],
    ) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            board_task(session, board, task_id)
            comment = kb.add_comment(session, task_id, body=body, author=board.claimer)
            return {"comment": comment_view(comment), "task_id": task_id}

        return call(work)

    @server.tool(
        description="Hand a task you hold in for review, with its result, instead of"
        " completing it.",
        annotations=writes,
    )
    def submit_for_review(
        task_id: TaskId, result: Result = None, summary: Summary = None
    ) -> dict[str, Any]:
        return fenced(
            task_id,
            lambda session, token: kb.submit_for_review(
                session, task_id, claim_lock=token, result=result, summary=summary
            ),
        )

    return server


def serve(
    url: str | None,
    *,
    claimer: str,
    assignee: str | None = None,
    tenant: str | None = None,
    read_only: bool = False,
    ttl_seconds: float | None = None,
) -> None:
    """Serve the board over stdio until the client closes it.

    Held tasks are released when the session ends. Raises :class:`kb.ConfigError` for
    a bad setting before anything is served.
    """
    board = BoardSession(
        url, claimer=claimer, assignee=assignee, tenant=tenant, ttl_seconds=ttl_seconds
    )
    board.renew_interval()  # a bad KANBAN_CLAIM_TTL_SECONDS fails now, not in the thread
    server = build_server(board, read_only=read_only)
    board.start()
    try:
        server.run("stdio")
    finally:
        board.close()


__all__ = ["BoardSession", "build_server", "clip", "serve"]
