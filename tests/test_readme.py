"""The README and the docs pages: their examples run as written and print what their
comments say, their set-up commands are the ones CI runs, and they keep their promises
(a short front page, every public name documented, working links, no internal jargon)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey
from sqlalchemy.exc import NoReferencedTableError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import kanban_orm as kb

from .conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
EXAMPLE_URL = '"sqlite:///board.db"'


def marked_example(path: Path, marker: str) -> str:
    """The ```python block right after ``<!-- marker ... -->`` in ``path``."""
    text = path.read_text()
    match = re.search(rf"<!-- {marker}[^>]*-->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"{path.name} lost its {marker}"
    return match.group(1)


def run_example(source: str, db_url: str) -> list[str]:
    assert EXAMPLE_URL in source, "the example no longer uses the URL this test swaps out"
    source = source.replace(EXAMPLE_URL, repr(db_url))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "example", "exec", dont_inherit=True), {})
    return out.getvalue().splitlines()


def usage_example() -> str:
    return marked_example(README, "usage-example")


def test_usage_example_runs_on_each_backend(db_url: str) -> None:
    source = usage_example()
    assert 'sa.create_engine("sqlite:///board.db")' in source
    assert run_example(source, db_url) == [
        "done completed",
        "['created', 'claimed', 'completed']",
        "1",
    ]


def test_usage_example_is_about_twenty_lines() -> None:
    code = [line for line in usage_example().splitlines() if line.strip()]
    assert 15 <= len(code) <= 30


def test_host_table_example_creates_a_table_that_references_tasks(empty_db_url: str) -> None:
    source = marked_example(README, "host-table")
    assert "ForeignKey(kb.Task.id)" in source
    namespace: dict[str, object] = {}
    source = source.replace(EXAMPLE_URL, repr(empty_db_url))
    # dont_inherit: the example runs as a user's module would, without this file's
    # ``from __future__ import annotations`` (the mapping must resolve ``Mapped`` itself).
    exec(compile(source, "README.md", "exec", dont_inherit=True), namespace)
    engine = namespace["engine"]
    assert isinstance(engine, sa.Engine)
    try:
        with kb.connect(empty_db_url) as session:
            task_id = kb.create_task(session, title="ship order 1")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO orders (id, task_id) VALUES (1, :t)"), {"t": task_id})
            foreign_keys = sa.inspect(conn).get_foreign_keys("orders")
        assert [(fk["referred_table"], fk["referred_columns"]) for fk in foreign_keys] == [
            ("kanban_tasks", ["id"])
        ]
    finally:
        engine.dispose()


def test_fastapi_example_creates_an_order_and_its_task_or_neither(empty_db_url: str) -> None:
    """The asyncio example, after the host-table one (its Order model and tables), driven
    through httpx's ASGI transport: an order and its task in one transaction; a refused
    order leaves neither."""
    import asyncio

    import httpx

    namespace: dict[str, Any] = {}
    for marker in ("host-table", "fastapi-example"):
        source = marked_example(README, marker).replace(EXAMPLE_URL, repr(empty_db_url))
        exec(compile(source, "README.md", "exec", dont_inherit=True), namespace)

    async def post_orders() -> list[tuple[int, Any]]:
        transport = httpx.ASGITransport(app=namespace["app"])
        answers = []
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                for path in ("/orders/1", "/orders/2?in_stock=false"):
                    response = await client.post(path)
                    answers.append((response.status_code, response.json()))
        finally:
            await namespace["sessions"].kw["bind"].dispose()
        return answers

    try:
        ok, refused = asyncio.run(post_orders())
        with kb.connect(empty_db_url) as session:
            tasks = kb.list_tasks(session)
            orders = session.execute(sa.text("SELECT id, task_id FROM orders")).all()
        assert ok == (200, {"order": 1, "task": tasks[0].id})
        assert refused == (409, {"detail": "out of stock"})
        assert [t.title for t in tasks] == ["ship order 1"]
        assert [tuple(row) for row in orders] == [(1, tasks[0].id)]
    finally:
        namespace["engine"].dispose()


def test_a_string_foreign_key_to_kanban_tasks_fails_as_the_readme_says() -> None:
    """The README tells hosts to use ``ForeignKey(kb.Task.id)`` because the string form
    cannot be resolved in the host's own MetaData."""

    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)
        task_id: Mapped[int | None] = mapped_column(ForeignKey("kanban_tasks.id"))

    with pytest.raises(NoReferencedTableError):
        Base.metadata.create_all(sa.create_engine("sqlite://"))
    assert "NoReferencedTableError" in README.read_text()


def test_worker_example_runs_on_each_backend(db_url: str) -> None:
    source = marked_example(DOCS / "worker.md", "worker-example")
    assert run_example(source, db_url) == ["2 claimed, 1 completed, 1 failed, 0 released, 0 lost"]


def test_readme_setup_commands_are_the_ones_ci_runs() -> None:
    readme = README.read_text()
    commands = re.findall(r"```sh\n(python3 -m venv .venv[^\n]*)\n```", readme)
    assert commands == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m stress",
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' "
        "&& python -m pytest",
    ]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^python -m pip install .* -e '\.\[test,docs\]'$", ci, re.MULTILINE)
    assert re.search(r"^python -m pytest$", ci, re.MULTILINE)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, "README.md is the front page: move details into docs/"
    text = "\n".join(lines)
    for needed in ("include_host_name", "ForeignKey(kb.Task.id)", "kanban_t_", "KanbanError"):
        assert needed in text


def test_links_into_docs_name_existing_pages() -> None:
    pages = [README, *sorted(DOCS.glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+\.(?:md|png))(?:#[^)]*)?\)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.name} links to {target}, which does not exist"


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (DOCS / "api.md").read_text()
    missing = [
        name
        for name in kb.__all__
        if not name.startswith("__") and not re.search(rf"\b{re.escape(name)}\b", api)
    ]
    assert missing == []


def test_the_changelog_moved_whole() -> None:
    changelog = (DOCS / "changelog.md").read_text()
    assert "- 0.1.0 — kernel:" in changelog
    assert "- unreleased —" in changelog
    assert "## Changelog" not in README.read_text()


def test_no_internal_jargon_in_the_docs() -> None:
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        found = re.findall(r"\b(?:issue|ticket) #?\d+", page.read_text(), re.IGNORECASE)
        assert found == [], f"{page.name} speaks of {found}: say what it is instead"
