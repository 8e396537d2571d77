"""The web board without a browser: auth, CSRF, escaping, read-only, moves, metrics,
the live stream's resume. Every test runs on every backend."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

import kanban_orm as kb
from kanban_orm import web
from kanban_orm.web.auth import COOKIE, csrf_token
from kanban_orm.web.serve import is_loopback
from kanban_orm.web.server import content_disposition

TOKEN = "test-token-0123456789"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(web.app(engine, token=TOKEN), base_url="http://testserver") as c:
        yield c


def bearer() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def logged_in(client: TestClient) -> TestClient:
    response = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303
    return client


def test_no_token_is_401_and_a_wrong_one_403(client: TestClient) -> None:
    for path in ("/", "/stream", "/metrics", "/static/board.js", "/tasks/1", "/api/cards"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"authorization": "Bearer nope"}).status_code == 403
    assert client.get("/?token=nope").status_code == 403
    client.cookies.set(COOKIE, "nope")
    assert client.get("/").status_code == 403


def test_token_in_url_once_becomes_an_httponly_samesite_cookie(client: TestClient) -> None:
    response = client.get(f"/?tenant=a&token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/?tenant=a"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/?tenant=a").status_code == 200  # the cookie is enough now


def test_writes_need_the_csrf_token_with_the_cookie(client: TestClient, session: Session) -> None:
    logged_in(client)
    payload = {"title": "from the board"}
    assert client.post("/api/tasks", json=payload).status_code == 403
    bad = {"x-csrf-token": "forged"}
    assert client.post("/api/tasks", json=payload, headers=bad).status_code == 403
    good = {"x-csrf-token": csrf_token(TOKEN)}
    evil = {**good, "origin": "http://evil.example"}
    assert client.post("/api/tasks", json=payload, headers=evil).status_code == 403
    assert kb.list_tasks(session) == []  # a refused write wrote nothing
    created = client.post("/api/tasks", json=payload, headers=good)
    assert created.status_code == 201
    # A bearer header is never sent by a browser on its own: no CSRF token needed.
    client.cookies.clear()
    assert client.post("/api/tasks", json=payload, headers=bearer()).status_code == 201
    assert [t.title for t in kb.list_tasks(session)] == ["from the board"] * 2


def test_user_text_is_escaped_everywhere(client: TestClient, session: Session) -> None:
    task_id = kb.create_task(session, title=XSS, body=XSS, assignee="a<b", tenant="t\"'")
    kb.add_comment(session, task_id, body=XSS)
    board = client.get("/", headers=bearer()).text
    drawer = client.get(f"/tasks/{task_id}", headers=bearer()).text
    cards = client.get(f"/api/cards?ids={task_id}", headers=bearer()).json()
    for html in (board, drawer, cards["cards"][0]["html"]):
        assert XSS not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
    response = client.get("/", headers=bearer())
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_board_markup_contract(client: TestClient, session: Session) -> None:
    ready = kb.create_task(session, title="ready one")
    triaged = kb.create_task(session, title="to triage", triage=True)
    html = client.get("/", headers=bearer()).text
    for status in ("triage", "todo", "ready", "running", "review", "blocked", "done"):
        assert f'data-column="{status}"' in html
    assert 'data-column="archived"' not in html
    assert f'data-task-id="{ready}"' in html and f'data-task-id="{triaged}"' in html
    assert 'data-column="archived"' in client.get("/?archived=1", headers=bearer()).text


def test_columns_page_their_cards(client: TestClient, session: Session) -> None:
    for n in range(60):
        kb.create_task(session, title=f"task {n}", priority=n % 3)
    html = client.get("/", headers=bearer()).text
    assert html.count("data-task-id=") == 50
    more = client.get("/columns/ready?offset=50", headers=bearer()).text
    assert more.count("data-task-id=") == 10


def test_filters_come_from_the_url(client: TestClient, session: Session) -> None:
    kb.create_task(session, title="alpha", tenant="acme", assignee="ann")
    kb.create_task(session, title="beta", tenant="acme", assignee="bob")
    kb.create_task(session, title="gamma", tenant="other")

    def titles(query: str) -> list[str]:
        html = client.get(f"/?{query}", headers=bearer()).text
        return [t for t in ("alpha", "beta", "gamma") if f">{t}<" in html]

    assert titles("") == ["alpha", "beta", "gamma"]
    assert titles("tenant=acme") == ["alpha", "beta"]
    assert titles("tenant=acme&assignee=bob") == ["beta"]
    assert titles("q=AMM") == ["gamma"]


def test_moves_follow_the_table_and_refusals_carry_the_servers_message(
    client: TestClient, session: Session
) -> None:
    task_id = kb.create_task(session, title="move me")
    move = f"/api/tasks/{task_id}/move"
    refused = client.post(move, json={"to": "review"}, headers=bearer())
    assert refused.status_code == 409
    assert refused.json()["error"] == f"task {task_id} cannot move from 'ready' to 'review'"
    asked = client.post(move, json={"to": "blocked"}, headers=bearer())
    assert asked.status_code == 428 and asked.json()["ask"] == "required"
    assert kb.get_task(session, task_id).status == "ready"
    done = client.post(move, json={"to": "blocked", "reason": "waiting on legal"}, headers=bearer())
    assert done.json() == {"id": task_id, "status": "blocked"}
    assert kb.get_task(session, task_id).block_reason == "waiting on legal"
    assert client.post(move, json={"to": "ready"}, headers=bearer()).json()["status"] == "ready"
    worker = client.post(move, json={"to": "running"}, headers=bearer())
    assert worker.status_code == 422 and "worker's move" in worker.json()["error"]


def test_releasing_a_stuck_claim_asks_for_confirmation(
    client: TestClient, session: Session
) -> None:
    task_id = kb.create_task(session, title="stuck")
    kb.claim_task(session, task_id, claimer="w1")
    move = f"/api/tasks/{task_id}/move"
    asked = client.post(move, json={"to": "ready"}, headers=bearer())
    assert asked.status_code == 428 and asked.json()["ask"] == "confirm"
    assert kb.get_task(session, task_id).status == "running"
    done = client.post(move, json={"to": "ready", "confirmed": True}, headers=bearer())
    assert done.json()["status"] == "ready"
    assert kb.list_runs(session, task_id=task_id)[-1].outcome == "released"


def test_drawer_offers_exactly_the_boards_allowed_moves(
    client: TestClient, session: Session
) -> None:
    task_id = kb.create_task(session, title="in review")
    task = kb.claim_task(session, task_id, claimer="w1")
    assert task is not None and task.claim_lock is not None
    kb.submit_for_review(session, task_id, claim_lock=task.claim_lock)
    html = client.get(f"/tasks/{task_id}", headers=bearer()).text
    offered = set(re.findall(r'data-move="(\w+)"', html))
    assert offered == {"done", "ready", "blocked", "archived"}
    assert offered <= {s.value for s in kb.TRANSITIONS[kb.Status.REVIEW]}


def test_comment_edit_and_links(client: TestClient, session: Session) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child")
    base = f"/api/tasks/{child}"
    assert client.post(f"{base}/comments", json={"body": "hi"}, headers=bearer()).status_code == 201
    assert client.post(f"{base}/edit", json={"priority": 5}, headers=bearer()).status_code == 200
    linked = client.post(f"{base}/link", json={"parent_id": parent}, headers=bearer())
    assert linked.json()["status"] == "todo"
    cycle = client.post(f"/api/tasks/{parent}/link", json={"parent_id": child}, headers=bearer())
    assert cycle.status_code == 422
    assert (
        client.post(f"{base}/unlink", json={"parent_id": parent}, headers=bearer()).json()["status"]
        == "ready"
    )
    assert kb.get_task(session, child).priority == 5
    assert [c.body for c in kb.list_comments(session, task_id=child)] == ["hi"]


def test_read_only_serves_no_write_route(engine: Engine, session: Session) -> None:
    task_id = kb.create_task(session, title="look, do not touch")
    with TestClient(web.app(engine, token=TOKEN, read_only=True)) as client:
        page = client.get("/", headers=bearer()).text
        assert 'draggable="true"' not in page and "new-task" not in page
        for path in (
            "/api/tasks",
            f"/api/tasks/{task_id}/move",
            f"/api/tasks/{task_id}/edit",
            f"/api/tasks/{task_id}/comments",
            f"/api/tasks/{task_id}/link",
            f"/api/tasks/{task_id}/unlink",
        ):
            response = client.post(path, json={"to": "blocked", "reason": "x"}, headers=bearer())
            assert response.status_code in (404, 405), path
        routes = {getattr(r, "path", "") for r in client.app.routes}  # type: ignore[attr-defined]
        assert not any(path.startswith("/api/tasks") for path in routes)
    assert kb.get_task(session, task_id).status == "ready"


def test_metrics_in_prometheus_text_format(client: TestClient, session: Session) -> None:
    kb.create_task(session, title="a", tenant="acme")
    task_id = kb.create_task(session, title="b")
    task = kb.claim_task(session, task_id, claimer="w")
    assert task is not None
    kb.complete_task(session, task_id, claim_lock=task.claim_lock)
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers=bearer())
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'kanban_tasks{status="ready",tenant="acme"} 1.0' in text
    assert 'kanban_tasks{status="done",tenant=""} 1.0' in text
    assert "kanban_claims_total 1.0" in text and "kanban_completions_total 1.0" in text
    assert "kanban_expired_leases 0.0" in text
    assert "kanban_oldest_ready_age_seconds" in text


def test_stream_resumes_from_last_event_id(client: TestClient, session: Session) -> None:
    first = kb.create_task(session, title="one")
    second = kb.create_task(session, title="two")
    events = kb.list_events(session)
    headers = {**bearer(), "last-event-id": str(events[0].id)}
    with client.stream("GET", "/stream", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        seen: list[str] = []
        for line in response.iter_lines():
            if line.startswith("id: "):
                seen.append(line[4:])
            if len(seen) == len(events) - 1:
                break
    assert seen == [str(e.id) for e in events[1:]]
    assert {e.task_id for e in events} == {first, second}


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


def test_mounted_in_a_host_app_keeps_its_prefix(engine: Engine, session: Session) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    task_id = kb.create_task(session, title="mounted")
    host = Starlette(routes=[Mount("/kanban", app=web.app(engine, token=TOKEN))])
    with TestClient(host) as client:
        response = client.get(f"/kanban/?token={TOKEN}", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/kanban/"
        assert "path=/kanban" in response.headers["set-cookie"].lower()
        page = client.get("/kanban/").text
        assert 'href="/kanban/static/board.css"' in page
        assert f'href="/kanban/tasks/{task_id}"' in page
        assert client.get("/kanban/static/board.js").status_code == 200


def test_serve_refuses_a_network_address_without_a_token(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from kanban_orm.cli import main

    monkeypatch.delenv(web.TOKEN_ENV, raising=False)
    result = CliRunner().invoke(main, ["serve", "--db", db_url, "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "refusing to bind 0.0.0.0" in result.output
    assert web.TOKEN_ENV in result.output


def test_serve_refuses_a_missing_sqlite_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kanban_orm.cli import main

    missing = tmp_path / "nope.db"
    result = CliRunner().invoke(main, ["serve", "--db", f"sqlite:///{missing}"])
    assert result.exit_code == 1 and "no database at" in result.output
    assert not missing.exists()


def test_the_app_prunes_on_the_retention_schedule_while_it_runs(
    engine: Engine, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KANBAN_RETENTION_DONE_DAYS", "0")
    monkeypatch.setenv("KANBAN_RETENTION_INTERVAL_SECONDS", "3600")
    finished = kb.create_task(session, title="finished")
    kb.complete_task(session, finished, force=True)
    live = kb.create_task(session, title="live")
    board = web.app(engine, token=TOKEN, housekeeping=True)
    keeper = board.state.housekeeper
    assert keeper is not None and keeper.runs == 0  # nothing before the lifespan starts
    with TestClient(board, base_url="http://testserver"):
        deadline = threading.Event()
        for _ in range(200):
            if keeper.runs:
                break
            deadline.wait(0.05)
        assert keeper.runs == 1 and keeper.last_error is None
        assert keeper.last_result is not None and keeper.last_result.tasks == 1
    assert keeper._thread is not None and not keeper._thread.is_alive()  # stopped with the app
    with pytest.raises(kb.TaskNotFound):
        kb.get_task(session, finished)
    assert kb.get_task(session, live).status == "ready"


def test_an_app_without_housekeeping_prunes_nothing(
    engine: Engine, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KANBAN_RETENTION_DONE_DAYS", "0")
    finished = kb.create_task(session, title="finished")
    kb.complete_task(session, finished, force=True)
    board = web.app(engine, token=TOKEN)
    assert board.state.housekeeper is None
    with TestClient(board, base_url="http://testserver") as client:
        assert client.get("/", headers=bearer()).status_code == 200
    assert kb.get_task(session, finished).status == "done"


@pytest.mark.parametrize(
    ("flags", "prunes"),
    [
        ([], True),
        (["--no-housekeeping"], False),
        (["--read-only"], False),
        (["--read-only", "--housekeeping"], True),
    ],
)
def test_serve_runs_the_housekeeper_unless_read_only_or_told_not_to(
    db_url: str, monkeypatch: pytest.MonkeyPatch, flags: list[str], prunes: bool
) -> None:
    import uvicorn
    from click.testing import CliRunner

    from kanban_orm.cli import main

    monkeypatch.setenv("KANBAN_RETENTION_EVENTS_DAYS", "30")
    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    result = CliRunner().invoke(main, ["serve", "--db", db_url, *flags])
    assert result.exit_code == 0, result.output
    keeper = served[0].state.housekeeper
    assert (keeper is not None) is prunes
    assert ("housekeeping: prune every 3600s" in result.output) is prunes
    if prunes:
        assert keeper.settings.events_after.days == 30


def test_serve_refuses_a_bad_retention_setting(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from click.testing import CliRunner

    from kanban_orm.cli import main

    monkeypatch.setenv("KANBAN_RETENTION_DONE_DAYS", "soon")
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: pytest.fail("served anyway"))
    result = CliRunner().invoke(main, ["serve", "--db", db_url])
    assert result.exit_code == 1 and "KANBAN_RETENTION_DONE_DAYS" in result.output


def test_an_empty_token_is_refused(engine: Engine) -> None:
    with pytest.raises(kb.ConfigError):
        web.app(engine, token=" ")


def test_every_stream_shares_one_tailer(client: TestClient, session: Session) -> None:
    kb.create_task(session, title="one")
    headers = {**bearer(), "last-event-id": "0"}
    with (
        client.stream("GET", "/stream", headers=headers) as first,
        client.stream("GET", "/stream", headers=headers) as second,
    ):
        for response in (first, second):
            assert any(line.startswith("id: ") for line in _until_event(response))
        tailers = [t for t in threading.enumerate() if t.name == "kanban-web-tailer"]
        assert len(tailers) == 1


def _until_event(response: Any) -> Iterator[str]:
    for line in response.iter_lines():
        yield line
        if line.startswith("id: "):
            return


def _attachment_url(task_id: int, name: str) -> str:
    return f"/tasks/{task_id}/attachments/{quote(name, safe='')}"


def test_the_drawer_lists_attachments_newest_of_each_name(
    client: TestClient, session: Session
) -> None:
    task_id = kb.create_task(session, title="with files")
    task = kb.claim_task(session, task_id, claimer="w1")
    assert task is not None and task.current_run_id is not None
    kb.attach(session, task_id, name="out.txt", data=b"first", run_id=task.current_run_id)
    kb.attach(session, task_id, name="out.txt", data=b"second!", run_id=task.current_run_id)
    kb.attach(session, task_id, name="my report.pdf", data=b"x" * 2048)
    html = client.get(f"/tasks/{task_id}", headers=bearer()).text
    section = html[html.index('<section class="attachments">') :]
    section = section[: section.index("</section>")]
    assert section.count('class="attachment"') == 2  # one per name: what a download serves
    assert f'href="/tasks/{task_id}/attachments/out.txt"' in section
    assert f'href="/tasks/{task_id}/attachments/my%20report.pdf"' in section
    assert "7 Bytes" in section and "2.0 KiB" in section
    assert "run #1" in section and "1 older of this name" in section
    assert " ago" in section
    empty = kb.create_task(session, title="no files")
    bare = client.get(f"/tasks/{empty}", headers=bearer()).text
    assert '<section class="attachments">' in bare and 'class="attachment"' not in bare


def test_an_attachment_downloads_as_bytes_never_inline(
    engine: Engine, client: TestClient, session: Session
) -> None:
    task_id = kb.create_task(session, title="with files")
    page = b"<html><script>alert(1)</script></html>\x00\xff"
    kb.attach(session, task_id, name="page.html", data=b"old")
    kb.attach(session, task_id, name="page.html", data=page)
    response = client.get(_attachment_url(task_id, "page.html"), headers=bearer())
    assert response.status_code == 200
    assert response.content == page  # the newest of that name
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-content-type-options"] == "nosniff"
    disposition = response.headers["content-disposition"]
    assert disposition == "attachment; filename=\"page.html\"; filename*=UTF-8''page.html"
    # A name with a semicolon, a space and non-ASCII stays inside the header. (No "%" here:
    # Starlette's TestClient percent-decodes the path twice; the unit test below has one.)
    kept = kb.attach(session, task_id, name='ré"s;u lt.txt', data=b"odd").name
    assert kept == "ré_s;u lt.txt"  # sanitised on the way in: no '"' or '\\' is left
    odd = client.get(_attachment_url(task_id, kept), headers=bearer())
    assert odd.content == b"odd"
    assert odd.headers["content-disposition"] == (
        "attachment; filename=\"r__s;u lt.txt\"; filename*=UTF-8''r%C3%A9_s%3Bu%20lt.txt"
    )
    # Cookie-authenticated, as a browser following the drawer's link, and read-only too.
    logged_in(client)
    assert client.get(_attachment_url(task_id, "page.html")).content == page
    with TestClient(web.app(engine, token=TOKEN, read_only=True)) as read_only:
        assert (
            read_only.get(_attachment_url(task_id, "page.html"), headers=bearer()).content == page
        )


def test_content_disposition_keeps_any_name_inside_its_quotes() -> None:
    header = content_disposition('a"b\\c\r\nX-Evil: 1%41.txt')
    assert header == (
        'attachment; filename="a_b_c__X-Evil: 1_41.txt"; '
        "filename*=UTF-8''a%22b%5Cc%0D%0AX-Evil%3A%201%2541.txt"
    )
    header.encode("ascii")  # always a valid header value
    assert content_disposition("ü") == "attachment; filename=\"_\"; filename*=UTF-8''%C3%BC"


def test_an_unknown_attachment_is_404_and_every_download_needs_the_token(
    client: TestClient, session: Session
) -> None:
    task_id = kb.create_task(session, title="with files")
    kb.attach(session, task_id, name="out.txt", data=b"secret")
    url = _attachment_url(task_id, "out.txt")
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"authorization": "Bearer nope"}).status_code == 403
    missing = client.get(_attachment_url(task_id, "other.txt"), headers=bearer())
    assert missing.status_code == 404
    assert b"secret" not in missing.content
    assert client.get(_attachment_url(task_id + 1, "out.txt"), headers=bearer()).status_code == 404
    assert client.get(f"/tasks/{task_id}/attachments/%20", headers=bearer()).status_code == 404
    assert client.get(f"/tasks/{task_id}/attachments/a%2Fb", headers=bearer()).status_code == 404


def test_attachment_names_are_escaped_in_the_drawer(
    engine: Engine, client: TestClient, session: Session
) -> None:
    task_id = kb.create_task(session, title="with files")
    kept = kb.attach(session, task_id, name="a&b'c<script>.txt", data=b"x").name
    assert kept == "a&b'c_script_.txt"  # attach already drops < and >
    # A row written by something else than kb.attach: the template still escapes it.
    raw = f"{XSS}<script>alert(1)</script>"
    with engine.begin() as conn:
        conn.execute(
            sa.insert(kb.TaskAttachment).values(
                task_id=task_id, name=raw, size=1, sha256="0" * 64, data=b"x"
            )
        )
    html = client.get(f"/tasks/{task_id}", headers=bearer()).text
    assert "<script>" not in html and XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "a&amp;b&#39;c_script_.txt" in html
    assert f'href="/tasks/{task_id}/attachments/{quote(raw, safe="")}"' in html
    assert f'href="/tasks/{task_id}/attachments/a%26b%27c_script_.txt"' in html
