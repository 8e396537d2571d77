"""The wheel: it carries the migrations and the stress suite, installs into a clean
virtualenv and migrates a database from outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kanban_orm as kb

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

REQUIRED_IN_WHEEL = (
    "kanban_orm/__init__.py",
    "kanban_orm/py.typed",
    "kanban_orm/cli.py",
    "kanban_orm/migrate.py",
    "kanban_orm/migrations/env.py",
    "kanban_orm/migrations/script.py.mako",
    "kanban_orm/migrations/versions/kb0001_initial_schema.py",
    "kanban_orm/_stress/__init__.py",
)


#: A user's script: mypy --strict must see the package's hints (the py.typed marker), so
#: the one deliberate mistake at the end is reported, and nothing else.
USER_SCRIPT = """\
from __future__ import annotations

import datetime

import kanban_orm as kb


def work(url: str) -> None:
    engine = kb.init_db(url)
    session = kb.session_factory(engine)()
    task_id: int = kb.create_task(session, title="write the report")
    task = kb.claim_task(session, task_id, claimer="worker-1")
    if task is None or task.claim_lock is None:
        return
    expires: datetime.datetime = kb.heartbeat(session, task_id, claim_lock=task.claim_lock)
    print(expires)
    done: kb.Task = kb.complete_task(session, task_id, claim_lock=task.claim_lock)
    print(done.status)
    wrong: str = kb.create_task(session, title="not a string")
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that must not see the checkout or its venv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "KANBAN_DATABASE_URL")
        and not key.startswith("PYTEST")
    }
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def test_wheel_installs_and_migrates_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = clean_env(KANBAN_HOME=str(tmp_path / "kanban_home"))

    # -- build ---------------------------------------------------------------------------
    if not (REPO_ROOT / "stress" / "__init__.py").is_file():
        pytest.fail("stress/__init__.py is missing: the wheel force-includes the stress suite")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist)], REPO_ROOT, env)
    (wheel,) = dist.glob("kanban_orm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in REQUIRED_IN_WHEEL if name not in names]
    assert not missing, f"missing from {wheel.name}: {missing}"
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    assert not [n for n in names if n.startswith(("migrations/", "stress/"))], (
        "the migrations and the stress suite belong inside kanban_orm/"
    )

    # -- install into a fresh virtualenv -------------------------------------------------
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], outside, env)
    python = venv / "bin" / "python"
    cli = venv / "bin" / "kanban-orm"
    run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)],
        outside,
        env,
    )
    assert cli.is_file()

    # -- the installed package, not the checkout ------------------------------------------
    where = run(
        [
            str(python),
            "-c",
            "import kanban_orm, kanban_orm.migrate as m; "
            "print(kanban_orm.__file__); print(m.script_location())",
        ],
        outside,
        env,
    ).stdout.splitlines()
    package_file, scripts = (Path(line).resolve() for line in where)
    assert package_file.is_relative_to(venv.resolve()), package_file
    assert not package_file.is_relative_to(REPO_ROOT.resolve()), package_file
    assert scripts == package_file.parent / "migrations"

    # -- the command line migrates a new database -----------------------------------------
    db = tmp_path / "data" / "new.db"
    url = f"sqlite:///{db}"
    upgraded = run([str(cli), "--db", url, "db", "upgrade", "--create-dirs"], outside, env)
    assert upgraded.stdout.strip().endswith(f": at {kb.head()}")
    assert db.is_file()

    current = run([str(cli), "--db", url, "db", "current"], outside, env)
    assert current.stdout.strip() == kb.head()

    checked = run([str(cli), "--db", url, "db", "check"], outside, env)
    assert checked.stdout.startswith("ok")

    # The environment variable works too, and a second upgrade changes nothing.
    again = run([str(cli), "db", "upgrade"], outside, {**env, "KANBAN_DATABASE_URL": url})
    assert again.stdout.strip().endswith(f": at {kb.head()}")
    assert kb.current(url) == kb.head()
    kb.check(url)

    # -- a user's mypy --strict sees the installed package's types ---------------------------
    (outside / "user_script.py").write_text(USER_SCRIPT)
    typed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            str(python),
            "user_script.py",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "missing library stubs or py.typed marker" not in typed.stdout, typed.stdout
    errors = [line for line in typed.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, typed.stdout
    wrong_line = USER_SCRIPT.splitlines().index(
        '    wrong: str = kb.create_task(session, title="not a string")'
    )
    assert f"user_script.py:{wrong_line + 1}: error: Incompatible types" in errors[0], errors

    # -- the packaged stress suite is importable as kanban_orm._stress ----------------------
    run([str(python), "-c", "import kanban_orm._stress"], outside, env)
