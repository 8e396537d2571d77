"""The declared dependency ranges are bounded at both ends, and CI's lowest-versions pass
installs exactly their lower bounds (so the range a user gets is the range CI ran)."""

from __future__ import annotations

import re
import tomllib

from .conftest import REPO_ROOT

#: The runtime dependencies whose range the package promises (psycopg: the postgres extra).
BOUNDED = ("SQLAlchemy", "alembic", "click", "rich", "psycopg")


def declared() -> dict[str, tuple[str, str]]:
    """name -> (lower, upper) for each requirement of the package and its postgres extra."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["postgres"]]:
        match = re.fullmatch(r"([\w-]+)(?:\[[\w,]+\])?>=([\w.]+),<([\w.]+)", requirement)
        assert match, f"{requirement!r} needs a lower and an upper bound (>=A,<B)"
        found[match.group(1)] = (match.group(2), match.group(3))
    return found


def lowest_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_every_runtime_dependency_has_both_bounds() -> None:
    assert sorted(declared()) == sorted(BOUNDED)


def test_ci_lowest_pass_installs_the_declared_lower_bounds() -> None:
    pins = lowest_pins()
    for name, (lower, _upper) in declared().items():
        assert pins.get(name) == lower, f".ci/lowest.txt must pin {name}=={lower}"
    # psycopg[binary] brings its compiled half, which must match the pure-Python one.
    assert pins["psycopg-binary"] == pins["psycopg"]


def test_ci_runs_the_lowest_pass() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "-c .ci/lowest.txt -e '.[test]'" in ci
    assert re.search(r"^\.ci-venv-lowest/bin/python -m pytest ", ci, re.MULTILINE)
