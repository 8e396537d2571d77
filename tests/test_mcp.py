"""``kanban-orm mcp`` through the MCP SDK's own client, over stdio, against a real server
process, on every backend: the protocol an agent runtime speaks, not the functions."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult

import kanban_orm as kb

pytestmark = pytest.mark.slow

READ_TOOLS = {"list_tasks", "show_task", "board"}
WRITE_TOOLS = {
    "create_task",
    "claim_next",
    "heartbeat",
    "complete_task",
    "fail_task",
    "block_task",
    "add_comment",
    "submit_for_review",
}


def agent(url: str, *args: str) -> Client:
    """An MCP client that starts ``kanban-orm mcp --db URL ARGS`` and talks to it on stdio."""
    command = [sys.executable, "-m", "kanban_orm", "mcp", "--db", url, *args]
    return Client(StdioServerParameters(command=command[0], args=command[1:]))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    anyio.run(scenario)


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call ``tool``; its structured answer (the test fails on a tool error)."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}{arguments}: {text(result)}"
    answer = result.structured_content
    assert isinstance(answer, dict)
    return answer


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """Call ``tool`` expecting a tool error; its message."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool}{arguments} should have failed: {result.structured_content}"
    message = text(result)
    assert "Traceback" not in message
    return message


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def event_count(url: str) -> int:
    with kb.connect(url) as session:
        return len(kb.list_events(session))


def test_tools_have_the_issue_names_descriptions_and_schemas(db_url: str) -> None:
    async def scenario() -> None:
        async with agent(db_url, "--claimer", "agent-a") as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(tools) == READ_TOOLS | WRITE_TOOLS
            for tool in tools.values():
                assert tool.description and "\n" not in tool.description.strip()
                assert tool.input_schema["type"] == "object"
            complete = tools["complete_task"].input_schema
            assert complete["required"] == ["task_id"]
            assert set(complete["properties"]) == {"task_id", "result", "summary"}
            assert "claim_lock" not in json.dumps([t.input_schema for t in tools.values()])
            create = tools["create_task"].input_schema["properties"]
            assert {"title", "body", "parents", "priority"} <= set(create)

    run(scenario)


def test_an_agent_plans_claims_and_completes_in_order(db_url: str) -> None:
    """The issue's end-to-end test: a plan of three dependent tasks, done in order by one
    agent with comments, while a second agent cannot complete the first one's task."""

    async def scenario() -> None:
        async with (
            agent(db_url, "--claimer", "agent-a") as first,
            agent(db_url, "--claimer", "agent-b") as second,
        ):
            design = (await ok(first, "create_task", title="design", priority=5))["task"]
            build = (await ok(first, "create_task", title="build", parents=[design["id"]]))["task"]
            ship = (await ok(first, "create_task", title="ship", parents=[build["id"]]))["task"]
            assert [design["status"], build["status"], ship["status"]] == ["ready", "todo", "todo"]

            for step in (design, build, ship):
                claimed = (await ok(first, "claim_next"))["task"]
                assert claimed["id"] == step["id"]
                assert claimed["held_by_you"] is True
                # Everything after it waits: nothing else is claimable meanwhile.
                assert (await ok(second, "claim_next"))["task"] is None

                before = event_count(db_url)
                message = await refused(
                    second, "complete_task", task_id=step["id"], result="stolen"
                )
                assert "agent-a" in message and "nothing was written" in message
                assert event_count(db_url) == before
                with kb.connect(db_url) as session:
                    assert kb.get_task(session, step["id"]).status == "running"

                note = f"working on {step['title']}"
                await ok(first, "add_comment", task_id=step["id"], body=note)
                done = (await ok(first, "complete_task", task_id=step["id"], result="ok"))["task"]
                assert done["status"] == "done" and done["held_by_you"] is False

            shown = await ok(second, "show_task", task_id=ship["id"])
            assert shown["parents"] == [build["id"]]
            assert [c["body"] for c in shown["comments"]] == ["working on ship"]
            assert [c["author"] for c in shown["comments"]] == ["agent-a"]
            assert [(r["claimer"], r["outcome"]) for r in shown["runs"]] == [
                ("agent-a", "completed")
            ]
            board = await ok(second, "board")
            assert board["counts"]["done"] == 3

    run(scenario)
    with kb.connect(db_url) as session:
        runs = [
            run for task in kb.list_tasks(session) for run in kb.list_runs(session, task_id=task.id)
        ]
    assert [r.claimer for r in runs] == ["agent-a"] * 3


def test_bad_input_is_a_tool_error_with_the_librarys_message(db_url: str) -> None:
    async def scenario() -> None:
        async with agent(db_url, "--claimer", "agent-a") as client:
            assert "title must not be empty" in await refused(client, "create_task", title="")
            assert "task 99 does not exist" in await refused(client, "show_task", task_id=99)
            assert "does not exist" in await refused(
                client, "create_task", title="child", parents=[42]
            )
            assert "task_id" in await refused(client, "complete_task", task_id="first")
            assert "status must be one of" in await refused(client, "list_tasks", status="open")
            task = (await ok(client, "create_task", title="t"))["task"]
            assert "does not hold it" in await refused(
                client, "fail_task", task_id=task["id"], error="x"
            )
            await ok(client, "claim_next")
            assert "error" in await refused(client, "fail_task", task_id=task["id"], error="")
            # The session still works after every refusal.
            done = await ok(client, "complete_task", task_id=task["id"])
            assert done["task"]["status"] == "done"

    run(scenario)


def test_long_texts_are_truncated_with_a_note(db_url: str) -> None:
    async def scenario() -> None:
        async with agent(db_url, "--claimer", "agent-a") as client:
            task = (await ok(client, "create_task", title="big", body="b" * 50_000))["task"]
            assert len(task["body"]) < 5_000 and "truncated" in task["body"]
            for n in range(25):
                await ok(client, "add_comment", task_id=task["id"], body=f"note {n}")
            shown = await ok(client, "show_task", task_id=task["id"])
            assert len(shown["comments"]) == 20 and shown["comments"][-1]["body"] == "note 24"
            assert any("comments" in note for note in shown["notes"])

    run(scenario)


def test_read_only_exposes_no_write_tool(db_url: str) -> None:
    with kb.connect(db_url) as session:
        task_id = kb.create_task(session, title="look, do not touch")

    async def scenario() -> None:
        async with agent(db_url, "--read-only") as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert tools == READ_TOOLS
            await refused(client, "claim_next")
            listed = await ok(client, "list_tasks")
            assert [t["id"] for t in listed["tasks"]] == [task_id]
            resource = await client.read_resource(f"task://{task_id}")
            card = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
            assert card["task"]["title"] == "look, do not touch"

    before = event_count(db_url)
    run(scenario)
    assert event_count(db_url) == before


def test_leases_are_renewed_while_the_session_lives_and_released_after(db_url: str) -> None:
    async def scenario() -> None:
        async with agent(db_url, "--claimer", "agent-a", "--ttl", "3") as client:
            task = (await ok(client, "create_task", title="long job"))["task"]
            await ok(client, "claim_next")
            deadline = time.monotonic() + 60
            with kb.connect(db_url) as session:
                while kb.latest_run(session, task["id"]).last_heartbeat_at is None:  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "the server never renewed the lease"
                    await anyio.sleep(0.2)
            await ok(client, "heartbeat", task_id=task["id"])
        # The session is over: nobody else knows the token, so the task is handed back.
        with kb.connect(db_url) as session:
            released = kb.get_task(session, task["id"])
            assert released.status == "ready"
            assert kb.latest_run(session, task["id"]).outcome == "released"  # type: ignore[union-attr]

    run(scenario)


def test_tenant_scopes_what_the_session_sees(db_url: str) -> None:
    with kb.connect(db_url) as session:
        theirs = kb.create_task(session, title="theirs", tenant="other")

    async def scenario() -> None:
        async with agent(db_url, "--tenant", "mine", "--claimer", "agent-a") as client:
            ours = (await ok(client, "create_task", title="ours"))["task"]
            assert ours["tenant"] == "mine"
            assert [t["id"] for t in (await ok(client, "list_tasks"))["tasks"]] == [ours["id"]]
            assert "does not exist" in await refused(client, "show_task", task_id=theirs)
            assert (await ok(client, "claim_next"))["task"]["id"] == ours["id"]
            assert (await ok(client, "claim_next"))["task"] is None

    run(scenario)


def test_show_task_lists_attachments_and_a_resource_serves_them(db_url: str) -> None:
    with kb.connect(db_url) as session:
        task_id = kb.create_task(session, title="with files")
        kb.attach(session, task_id, name="../notes.md", data="# findings\n")
        kb.attach(session, task_id, name="blob.bin", data=b"\xff\x00\xfe")

    async def scenario() -> None:
        async with agent(db_url, "--read-only") as client:
            shown = await ok(client, "show_task", task_id=task_id)
            files = {a["name"]: a for a in shown["attachments"]}
            assert {name: a["size"] for name, a in files.items()} == {
                "notes.md": 11,
                "blob.bin": 3,
            }
            notes = await client.read_resource(files["notes.md"]["uri"])
            assert notes.contents[0].text == "# findings\n"  # type: ignore[union-attr]
            blob = await client.read_resource(files["blob.bin"]["uri"])
            assert blob.contents[0].blob  # type: ignore[union-attr]

    run(scenario)


def test_without_the_sdk_the_command_says_which_extra_to_install(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from kanban_orm.cli import main

    # As if the extra were not installed (submodules imported before are found first).
    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "kanban_orm.mcp", raising=False)
    monkeypatch.delattr(kb, "mcp", raising=False)
    result = CliRunner().invoke(main, ["--db", db_url, "mcp"])
    assert result.exit_code == 1
    assert "pip install 'kanban-orm[mcp]'" in result.output


def test_a_missing_sqlite_file_is_one_line_not_a_new_database(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kanban_orm.cli import main

    path = tmp_path / "typo.db"
    result = CliRunner().invoke(main, ["mcp", "--db", f"sqlite:///{path}"])
    assert result.exit_code == 1 and "no database at" in result.output
    assert not path.exists()
