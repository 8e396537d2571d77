"""Old spellings of the public API, kept working for one release with a DeprecationWarning.

A function whose arguments became keyword-only (or were renamed) is decorated with
:func:`keyword_only_since`: a call in the old spelling is translated to the new one and
warns, naming the call to write instead. Type checkers see only the new signature, so
old calls are flagged there before they break.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

#: The release the old spellings disappear in.
REMOVED_IN = "0.3"


def keyword_only_since(
    *positional: str, renamed: Mapping[str, str] | None = None
) -> Callable[[F], F]:
    """Accept ``positional`` (the new names, in the old order) after the first argument
    (the session), and the old keyword names in ``renamed`` (old -> new), with a
    DeprecationWarning; the decorated function declares them keyword-only."""
    renames = dict(renamed or {})

    def decorate(function: F) -> F:
        name = function.__name__

        @functools.wraps(function)
        def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
            if not args and not renames.keys() & kwargs.keys():
                return function(first, **kwargs)
            if len(args) > len(positional):
                raise TypeError(
                    f"{name}() takes {len(positional)} arguments after the session in the"
                    f" old spelling, {len(args)} given"
                )
            given = dict(zip(positional, args, strict=False))
            for old, new in renames.items():
                if old in kwargs:
                    given[new] = kwargs.pop(old)
            twice = sorted(given.keys() & kwargs.keys())
            if twice:
                raise TypeError(f"{name}() got multiple values for {', '.join(twice)}")
            spelled = ", ".join(f"{key}=..." for key in given)
            warnings.warn(
                f"{name}(session, ...) with these arguments positional or under their old"
                f" names is deprecated and will stop working in {REMOVED_IN}:"
                f" call {name}(session, {spelled})",
                DeprecationWarning,
                stacklevel=2,
            )
            return function(first, **given, **kwargs)

        return cast(F, wrapper)

    return decorate
