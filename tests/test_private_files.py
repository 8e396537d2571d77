"""The embedded board's files are private when kanban_orm creates them (issue: private by
default): the default home 0700, the database and its -wal and -shm 0600 whatever the
umask; a file that exists keeps its mode and ``db check`` reports it.

SQLite only: these are the files of the embedded board (a server keeps its own)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import kanban_orm as kb
from kanban_orm.cli import main
from kanban_orm.db import ENV_HOME, ENV_URL
from kanban_orm.files import exposed_board_files

pytestmark = pytest.mark.sqlite


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022], ids=["umask000", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A default home that does not exist yet (two levels missing)."""
    monkeypatch.delenv(ENV_URL, raising=False)
    home = tmp_path / "user" / ".kanban"
    monkeypatch.setenv(ENV_HOME, str(home))
    return home


def write_something(engine: sa.Engine) -> None:
    """A write, so SQLite has made the -wal and -shm files (kept while a connection is open)."""
    session = kb.session_factory(engine)()
    try:
        kb.create_task(session, title="a secret prompt")
    finally:
        session.close()


def assert_private(home: Path) -> None:
    database = home / "kanban.db"
    assert mode(home) == 0o700
    assert mode(home.parent) == 0o700  # every folder kanban_orm made
    assert mode(database) == 0o600
    for suffix in ("-wal", "-shm"):
        side = Path(f"{database}{suffix}")
        assert side.exists(), f"{side} should exist while a connection is open"
        assert mode(side) == 0o600, f"{side}: {mode(side):04o}"


def test_init_db_makes_a_private_default_home(umask: int, home: Path) -> None:
    engine = kb.init_db()
    with engine.connect():  # keeps the -wal and -shm in place
        write_something(engine)
        assert_private(home)
    assert exposed_board_files(engine.url) == []


def test_db_upgrade_makes_a_private_default_home(umask: int, home: Path) -> None:
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    engine = kb.cached_engine()
    with engine.connect():
        write_something(engine)
        assert_private(home)


def test_a_new_file_in_an_existing_folder_is_private(umask: int, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'board.db'}"
    engine = kb.init_db(url)
    with engine.connect():
        write_something(engine)
        assert mode(tmp_path / "board.db") == 0o600
        assert mode(tmp_path / "board.db-wal") == 0o600
        assert mode(tmp_path / "board.db-shm") == 0o600


def test_an_existing_file_keeps_its_mode_and_is_reported(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    database.touch()
    os.chmod(database, 0o644)
    url = f"sqlite:///{database}"
    engine = kb.init_db(url)
    with engine.connect():
        write_something(engine)
        assert mode(database) == 0o644, "an existing file's mode is the operator's choice"

        exposed = exposed_board_files(url)
        assert [e.path for e in exposed] == [
            database,
            Path(f"{database}-wal"),
            Path(f"{database}-shm"),
        ]
        assert all(e.mode == 0o644 for e in exposed)

        result = CliRunner().invoke(main, ["--db", url, "db", "check"])
    assert result.exit_code == 0, result.output  # a warning, not a failed check
    assert f"warning: {database} is readable by its group and other users (mode 0644)" in (
        result.stderr
    )
    assert f"chmod 600 {database}" in result.stderr
    assert mode(database) == 0o644


def test_a_private_board_gets_no_warning(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kanban.db'}"
    kb.init_db(url)
    result = CliRunner().invoke(main, ["--db", url, "db", "check"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_group_readable_only_names_the_group(tmp_path: Path) -> None:
    database = tmp_path / "kanban.db"
    database.touch()
    os.chmod(database, 0o640)
    (exposed,) = exposed_board_files(f"sqlite:///{database}")
    assert exposed.readers == "its group"


def test_a_server_database_has_no_board_files() -> None:
    assert exposed_board_files("postgresql+psycopg://u@localhost/kanban") == []
