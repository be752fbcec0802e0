"""CLI verbs, one module per verb family, imported only when their verb runs.

Shared here: ``Globals`` (the group's flags) and ``pass_globals``. Only the stdlib at module
scope (``pass_globals`` imports click when first used: `pybuild run`'s fast path never does);
each command imports its library code inside its function.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from registry.store import DirStore

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class Globals:
    """The group's own flags (--root, --debug) and the store they open."""

    root: str | None = None
    debug: bool = False
    _store: DirStore | None = field(default=None, repr=False)

    @property
    def root_path(self) -> Path:
        from registry.store import default_root

        return Path(self.root) if self.root else default_root()

    def store(self) -> DirStore:
        """The local store (created on first use)."""
        if self._store is None:
            from registry.store import DirStore

            self._store = DirStore(self.root_path)
        return self._store


def __getattr__(name: str) -> object:
    """``pass_globals`` (click.make_pass_decorator(Globals)) is made on first use (PEP 562)."""
    if name == "pass_globals":
        import click

        value = click.make_pass_decorator(Globals, ensure=True)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:

    def pass_globals(f: Callable[Concatenate[Globals, P], R]) -> Callable[P, R]:
        """click.make_pass_decorator(Globals, ensure=True): the command gets ``Globals`` first."""


def report_error(message: str, hint: str | None = None) -> None:
    """``error: MESSAGE`` (then ``hint: HINT``) on stderr: how every verb reports a failure."""
    sys.stderr.write(f"error: {message}\n" + (f"hint: {hint}\n" if hint else ""))
    sys.stderr.flush()


def returns_code(fn: Callable[P, int | None]) -> Callable[P, int]:
    """Commands return an int exit code; click's standalone_mode=False hands it to main()."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        return int(fn(*args, **kwargs) or 0)

    return wrapper
