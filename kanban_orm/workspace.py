"""Workspaces, logs and outputs for ``kanban-orm work --workspace DIR / --git REPO``.

:class:`WorkspaceCommandHandler` is :class:`~kanban_orm.worker.CommandHandler` with a
place to work in: each run gets a fresh directory ``DIR/<task>-<run>`` (with ``--git``: a
``git worktree`` of REPO on a branch named after the task), removed when the run succeeds
(its outputs are attached, a worktree's branch keeps its commits) and kept when it fails,
for a look at what went wrong. The command's stdout and stderr
are copied, as they come, into ``<log dir>/<task>-<run>.log`` (what ``kanban-orm logs
--follow`` reads) and the log is attached to the run when it ends, so ``kanban-orm logs``
shows it from any machine; files the command writes into ``$KANBAN_OUTPUT`` are attached
to the run when it completes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from . import attachments, config, db
from .errors import ConfigError, KanbanError
from .models import Task
from .serialize import task_json
from .worker import CommandHandler, TaskFailed

log = logging.getLogger("kanban_orm.worker")

ENV_LOG_DIR = "KANBAN_LOG_DIR"
#: How much of stderr a failed run keeps as its error (as CommandHandler does).
ERROR_TAIL_CHARS = 4000


def default_log_dir() -> Path:
    """``$KANBAN_LOG_DIR``, else ``$KANBAN_HOME/logs`` (``~/.kanban/logs``)."""
    given = os.environ.get(ENV_LOG_DIR)
    if given:
        return Path(given)
    return Path(os.environ.get(db.ENV_HOME) or Path.home() / ".kanban") / "logs"


def log_path(log_dir: Path, task_id: int, run_id: int) -> Path:
    return log_dir / f"{task_id}-{run_id}.log"


def log_attachment_name(run_id: int) -> str:
    return f"run-{run_id}.log"


def branch_name(task_id: int, run_id: int) -> str:
    """The ``--git`` branch of a run: named after the task, one per run (a failed run's
    worktree is kept, and git checks a branch out in one worktree only)."""
    return f"kanban/task-{task_id}-run-{run_id}"


class WorkspaceCommandHandler(CommandHandler):
    """Run ``argv`` once per task in a workspace of its own, logging its output.

    Besides :class:`CommandHandler`'s environment the command gets ``KANBAN_WORKSPACE``
    (its working directory), ``KANBAN_TASK_JSON`` (the TASK as JSON), ``KANBAN_OUTPUT``
    (an empty directory whose files are attached to the run on success) and
    ``KANBAN_LOG_FILE``. Raises :class:`ConfigError` when ``git_repo`` is not a git
    repository or git is missing.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        url: str,
        workspace: Path | None = None,
        git_repo: Path | None = None,
        log_dir: Path | None = None,
        kill_after: float = 5.0,
    ) -> None:
        super().__init__(argv, url=url, kill_after=kill_after)
        self.git_repo = None if git_repo is None else git_repo.resolve()
        if self.git_repo is not None:
            if shutil.which("git") is None:
                raise ConfigError("--git needs git on the PATH")
            top = _git(self.git_repo, "rev-parse", "--show-toplevel", check=False)
            if top.returncode != 0:
                raise ConfigError(f"--git {git_repo}: not a git repository")
        if workspace is None and self.git_repo is not None:
            workspace = Path(tempfile.gettempdir()) / f"kanban-worktrees-{self.git_repo.name}"
        self.workspace = None if workspace is None else workspace.resolve()
        self.log_dir = (log_dir or default_log_dir()).resolve()

    def __call__(self, task: Task) -> str | None:
        run_id = int(task.current_run_id or 0)
        name = f"{task.id}-{run_id}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logfile = log_path(self.log_dir, task.id, run_id)
        workdir = self._make_workspace(task.id, run_id, name)
        output = Path(tempfile.mkdtemp(prefix=f"kanban-output-{name}-"))
        card = json.dumps(task_json(task), ensure_ascii=False)
        env = {
            **os.environ,
            "KANBAN_TASK_ID": str(task.id),
            "KANBAN_CLAIM_LOCK": task.claim_lock or "",
            "KANBAN_RUN_ID": str(run_id),
            "KANBAN_TASK_ATTEMPT": str(task.attempts),
            db.ENV_URL: self.url,
            "KANBAN_TASK_JSON": card,
            "KANBAN_OUTPUT": str(output),
            "KANBAN_LOG_FILE": str(logfile),
        }
        if workdir is not None:
            env["KANBAN_WORKSPACE"] = str(workdir)
        succeeded = False
        try:
            returncode, out, err = self._run(task, env, workdir, card, logfile)
            if returncode != 0:
                status = (
                    f"killed by signal {-returncode}"
                    if returncode < 0
                    else f"exited with status {returncode}"
                )
                tail = err.decode("utf-8", errors="replace").strip()[-ERROR_TAIL_CHARS:]
                raise TaskFailed(f"command {status}: {tail}" if tail else f"command {status}")
            self._attach_outputs(task.id, run_id, output)
            succeeded = True
        finally:
            self._attach_log(task.id, run_id, logfile)
            shutil.rmtree(output, ignore_errors=True)
            if succeeded:
                self._remove_workspace(workdir)
            elif workdir is not None:
                log.info("task %s: workspace kept for a look: %s", task.id, workdir)
        result = out.decode("utf-8", errors="replace")
        result = result[:-1] if result.endswith("\n") else result
        return result or None

    # -- the run ---------------------------------------------------------------------

    def _run(
        self, task: Task, env: dict[str, str], cwd: Path | None, card: str, logfile: Path
    ) -> tuple[int, bytes, bytes]:
        """Run the command, copying stdout and stderr into ``logfile`` as they come."""
        with logfile.open("ab") as sink:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
            with self._lock:
                self._procs[task.id] = proc
            try:
                written = threading.Lock()
                out: list[bytes] = []
                err: list[bytes] = []
                assert proc.stdout is not None and proc.stderr is not None
                copiers = [
                    threading.Thread(target=_tee, args=(proc.stdout, out, sink, written)),
                    threading.Thread(target=_tee, args=(proc.stderr, err, sink, written)),
                ]
                for copier in copiers:
                    copier.start()
                assert proc.stdin is not None
                try:
                    proc.stdin.write(card.encode() + b"\n")
                    proc.stdin.close()
                except BrokenPipeError:  # the command exited without reading its stdin
                    pass
                for copier in copiers:
                    copier.join()
                proc.wait()
            finally:
                with self._lock:
                    self._procs.pop(task.id, None)
        return proc.returncode, b"".join(out), b"".join(err)

    # -- workspaces ------------------------------------------------------------------

    def _make_workspace(self, task_id: int, run_id: int, name: str) -> Path | None:
        if self.workspace is None:
            return None
        self.workspace.mkdir(parents=True, exist_ok=True)
        workdir = self.workspace / name
        if self.git_repo is None:
            workdir.mkdir()
            return workdir
        added = _git(
            self.git_repo, "worktree", "add", "-b", branch_name(task_id, run_id), str(workdir)
        )
        if added.returncode != 0:
            raise TaskFailed(f"git worktree add failed: {added.stderr.strip()[-1000:]}")
        return workdir

    def _remove_workspace(self, workdir: Path | None) -> None:
        if workdir is None:
            return
        if self.git_repo is None:
            shutil.rmtree(workdir, ignore_errors=True)
            return
        # The branch stays: it holds whatever the command committed.
        removed = _git(self.git_repo, "worktree", "remove", "--force", str(workdir))
        if removed.returncode != 0:
            log.warning("worktree %s not removed: %s", workdir, removed.stderr.strip())

    # -- attachments -----------------------------------------------------------------

    def _attach_outputs(self, task_id: int, run_id: int, output: Path) -> None:
        files = sorted(p for p in output.rglob("*") if p.is_file() and not p.is_symlink())
        if not files:
            return
        session = db.connect(self.url)
        try:
            for path in files:
                # A file in a subdirectory keeps its relative path in its name, flattened:
                # attachment names are bare file names.
                name = "__".join(path.relative_to(output).parts)
                try:
                    attachments.attach(
                        session, task_id, name=name, data=path.read_bytes(), run_id=run_id
                    )
                except KanbanError as refused:
                    raise TaskFailed(f"output {name!r} not attached: {refused}") from refused
        finally:
            session.close()

    def _attach_log(self, task_id: int, run_id: int, logfile: Path) -> None:
        """The run's log into the database, so ``kanban-orm logs`` shows it anywhere; the
        newest part of it when it is over the attachment cap."""
        try:
            cap = config.max_attachment_bytes()
            size = logfile.stat().st_size
            with logfile.open("rb") as source:
                note = b"[log truncated: the whole of it is in " + bytes(logfile) + b"]\n"
                if size <= cap:
                    data = source.read()
                elif cap > len(note):
                    source.seek(size - (cap - len(note)))
                    data = note + source.read()
                else:
                    source.seek(size - cap)
                    data = source.read()
            session = db.connect(self.url)
            try:
                attachments.attach(
                    session, task_id, name=log_attachment_name(run_id), data=data, run_id=run_id
                )
            finally:
                session.close()
        except (OSError, KanbanError) as error:
            log.warning("task %s: run %s log not attached: %s", task_id, run_id, error)


def _tee(source: IO[bytes], kept: list[bytes], sink: IO[bytes], lock: threading.Lock) -> None:
    for chunk in iter(lambda: source.read1(65536), b""):  # type: ignore[attr-defined]
        kept.append(chunk)
        with lock:
            sink.write(chunk)
            sink.flush()
    source.close()


def _git(repo: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=check
    )


__all__ = [
    "ENV_LOG_DIR",
    "WorkspaceCommandHandler",
    "branch_name",
    "default_log_dir",
    "log_attachment_name",
    "log_path",
]
