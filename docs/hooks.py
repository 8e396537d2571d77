"""mkdocs hooks: the README is the site's front page, and docstring roles read as code.

Loaded by ``hooks:`` in mkdocs.yml (and excluded from the site by ``exclude_docs``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The README links into docs/ (as GitHub shows it); on the site it *is* docs/index.md.
_README_LINK = re.compile(r"\]\(docs/")
# The docstrings are written for Sphinx (":class:`~kanban_orm.errors.ClaimLost`");
# Markdown renders the role as text before the code span.
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):<code>~?([\w.]+)</code>")


def on_page_read_source(page: Any, config: Any) -> str | None:
    if page.file.src_uri != "index.md":
        return None
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return _README_LINK.sub("](", text)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub(lambda m: f"<code>{m.group(1).rsplit('.', 1)[-1]}</code>", html)
