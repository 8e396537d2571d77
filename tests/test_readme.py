"""The README's usage example runs as written and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re

from .conftest import REPO_ROOT


def usage_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- usage-example[^>]*-->\s*```python\n(.*?)```", readme, re.DOTALL)
    assert match, "README lost its usage example"
    return match.group(1)


def test_usage_example_runs_on_each_backend(db_url: str) -> None:
    source = usage_example()
    assert 'sa.create_engine("sqlite:///board.db")' in source
    source = source.replace('"sqlite:///board.db"', repr(db_url))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "README.md", "exec"), {})
    assert out.getvalue().splitlines() == [
        "done completed",
        "['created', 'claimed', 'completed']",
        "1",
    ]


def test_usage_example_is_about_twenty_lines() -> None:
    code = [line for line in usage_example().splitlines() if line.strip()]
    assert 15 <= len(code) <= 30
