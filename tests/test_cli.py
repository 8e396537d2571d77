"""The ``kanban-orm db ...`` commands, in-process through click's CliRunner, on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

import kanban_orm as kb
from kanban_orm.cli import main
from kanban_orm.db import ENV_HOME, ENV_URL

from .conftest import KANBAN_TABLES, fresh_postgres_database

HEAD = kb.head()


@pytest.fixture(autouse=True)
def _no_ambient_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Neither the developer's KANBAN_DATABASE_URL nor ~/.kanban may leak into a test.
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.setenv(ENV_HOME, str(tmp_path_factory.mktemp("kanban_home")))


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, list(args))


def kanban_tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names()) & set(KANBAN_TABLES)
    finally:
        engine.dispose()


def assert_one_line_error(result: Result) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_upgrade_then_current_and_check(empty_db_url: str) -> None:
    upgraded = run("--db", empty_db_url, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.strip().endswith(f": at {HEAD}")
    assert kanban_tables(empty_db_url) == set(KANBAN_TABLES)

    current = run("--db", empty_db_url, "db", "current")
    assert current.exit_code == 0, current.output
    assert current.stdout == f"{HEAD}\n"

    checked = run("--db", empty_db_url, "db", "check")
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith("ok")
    assert HEAD in checked.stdout
    assert checked.stderr == ""


def test_upgrade_twice_is_fine(empty_db_url: str) -> None:
    assert run("--db", empty_db_url, "db", "upgrade").exit_code == 0
    again = run("--db", empty_db_url, "db", "upgrade", "--revision", "head")
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().endswith(f": at {HEAD}")


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    yield from fresh_postgres_database(postgres_url)


def test_upgrade_output_hides_the_password(fresh_postgres_url: str) -> None:
    url = sa.make_url(fresh_postgres_url)
    # A URL without a password gets a made-up one: a server that trusts the test user
    # never asks for it.
    password = url.password or "s3cret-pw"
    with_password = url.set(password=password).render_as_string(hide_password=False)
    result = run("--db", with_password, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert str(password) not in result.output


def test_current_is_base_on_an_empty_database(empty_db_url: str) -> None:
    result = run("--db", empty_db_url, "db", "current")
    assert result.exit_code == 0, result.output
    assert result.stdout == "base\n"


def test_check_on_an_empty_database_is_one_error_line(empty_db_url: str) -> None:
    result = run("--db", empty_db_url, "db", "check")
    assert_one_line_error(result)
    assert "run upgrade" in result.stderr


def test_check_on_a_drifted_schema_is_one_error_line(empty_db_url: str) -> None:
    assert run("--db", empty_db_url, "db", "upgrade").exit_code == 0
    engine = sa.create_engine(empty_db_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_kanban_tasks_by_hand ON kanban_tasks (title)"))
    engine.dispose()
    result = run("--db", empty_db_url, "db", "check")
    assert_one_line_error(result)
    assert "ix_kanban_tasks_by_hand" in result.stderr


def test_downgrade_base_then_current_is_base(empty_db_url: str) -> None:
    assert run("--db", empty_db_url, "db", "upgrade").exit_code == 0

    downgraded = run("--db", empty_db_url, "db", "downgrade", "base")
    assert downgraded.exit_code == 0, downgraded.output
    assert downgraded.stdout.strip().endswith(": at base")
    assert kanban_tables(empty_db_url) == set()

    current = run("--db", empty_db_url, "db", "current")
    assert current.exit_code == 0, current.output
    assert current.stdout == "base\n"

    assert run("--db", empty_db_url, "db", "upgrade").exit_code == 0
    assert run("--db", empty_db_url, "db", "current").stdout == f"{HEAD}\n"


def test_downgrade_needs_a_revision(empty_db_url: str) -> None:
    result = run("--db", empty_db_url, "db", "downgrade")
    assert result.exit_code == 2
    assert "REVISION" in result.stderr


def test_database_url_comes_from_the_environment(empty_db_url: str) -> None:
    env = {ENV_URL: empty_db_url}
    upgraded = run("db", "upgrade", env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert kb.current(empty_db_url) == HEAD

    current = run("db", "current", env=env)
    assert current.exit_code == 0, current.output
    assert current.stdout == f"{HEAD}\n"
    assert run("db", "check", env=env).exit_code == 0


def test_db_option_wins_over_the_environment(
    empty_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = f"sqlite:///{tmp_path_factory.mktemp('elsewhere') / 'env.db'}"
    result = run("--db", empty_db_url, "db", "upgrade", env={ENV_URL: elsewhere})
    assert result.exit_code == 0, result.output
    assert kb.current(empty_db_url) == HEAD
    assert kb.current(elsewhere) is None


@pytest.mark.parametrize(
    "args",
    [("bogus",), ("db", "bogus"), ("db", "upgrade", "--no-such-option")],
    ids=["top-level", "db-group", "option"],
)
def test_usage_errors_exit_2(
    args: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = f"sqlite:///{tmp_path_factory.mktemp('usage') / 'kanban.db'}"
    result = run("--db", url, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Error:" in result.stderr
    assert kb.current(url) is None


def test_help_lists_the_db_commands() -> None:
    result = run("db", "--help")
    assert result.exit_code == 0, result.output
    for name in ("upgrade", "downgrade", "current", "check"):
        assert name in result.stdout


@pytest.mark.parametrize("command", ["upgrade", "downgrade"])
def test_unknown_revision_is_one_error_line(empty_db_url: str, command: str) -> None:
    if command == "upgrade":
        args = ("db", "upgrade", "--revision", "no_such_rev")
    else:
        assert run("--db", empty_db_url, "db", "upgrade").exit_code == 0
        args = ("db", "downgrade", "no_such_rev")
    result = run("--db", empty_db_url, *args)
    assert_one_line_error(result)
    assert "no_such_rev" in result.stderr


def test_malformed_database_url_is_one_error_line() -> None:
    result = run("--db", "not a url", "db", "current")
    assert_one_line_error(result)
    assert "not a url" in result.stderr
