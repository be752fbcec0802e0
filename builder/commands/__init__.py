"""CLI verbs, one module per verb family, imported only when their verb runs.

Shared here: ``Globals`` (the group's flags), ``pass_globals``, and how every verb reports an
error, asks before a prune and treats a bad ``--format``. Only the stdlib at module scope
(``pass_globals`` imports click when first used: `pybuild run`'s fast path never does); each
command imports its library code inside its function.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

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


def confirm(warning: str) -> bool:
    """docker's prompt before a prune, on stderr: ``WARNING``, then ``Are you sure you want to
    continue? [y/N] ``. Only "y" or "yes" (any case) on stdin confirm; anything else or EOF
    does not."""
    sys.stderr.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    sys.stderr.flush()
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.strip().lower() in ("y", "yes")


@contextlib.contextmanager
def template_flag() -> Iterator[None]:
    """Around ``--format``/``-f`` output: a bad template (``_format.TemplateError``) is a
    UsageError ``--format: WHY`` (exit 125)."""
    from builder.commands._format import TemplateError
    from builder.errors import UsageError

    try:
        yield
    except TemplateError as exc:
        raise UsageError(f"--format: {exc}") from None


def print_rows(rows: Sequence[Mapping[str, Any]], fmt: str | None, headers: Mapping[str, str],
               columns: Sequence[str]) -> None:
    """docker's ``--format`` for a listing: ``json`` (one object per line), a Go template
    (``table ...`` adds a header row; a bad template is a usage error), else the default table
    of ``columns`` under their ``headers``."""
    import click

    from builder.commands._format import json_lines, render_rows, table

    if fmt == "json":
        click.echo(json_lines(rows), nl=False)
    elif fmt and fmt != "table":
        with template_flag():
            click.echo(render_rows(fmt, rows, headers), nl=False)
    else:
        click.echo(table([[headers[c] for c in columns]] + [[r[c] for c in columns] for r in rows]),
                   nl=False)


def each_name(names: Iterable[str], fn: Callable[[str], str | None],
              errors: type[Exception] | tuple[type[Exception], ...]) -> int:
    """docker's habit for a verb over several objects (``rm``, ``pause``, ...): apply ``fn`` to
    each name and print what it returns (nothing for None); an ``errors`` exception is reported
    as ``error: ...`` and the loop goes on; returns 1 when any name failed."""
    import click

    code = 0
    for name in names:
        try:
            out = fn(name)
        except errors as exc:
            report_error(str(exc), getattr(exc, "hint", None))
            code = 1
            continue
        if out is not None:
            click.echo(out)
    return code


def inspect_each(names: Iterable[str], view: Callable[[str], Mapping[str, Any]],
                 missing: type[Exception] | tuple[type[Exception], ...], template: str | None) -> int:
    """docker's ``inspect`` of one kind of object: ``error: ...`` on stderr for each name that
    ``view`` raises ``missing`` for, then the others' views on stdout (``_format.inspect_text``);
    returns 1 when a name was missing."""
    import click

    from builder.commands._format import inspect_text

    views: list[Mapping[str, Any]] = []
    code = 0
    for name in names:
        try:
            views.append(view(name))
        except missing as exc:
            report_error(str(exc), getattr(exc, "hint", None))
            code = 1
    with template_flag():
        click.echo(inspect_text(views, template), nl=False)
    return code


def prune_report(heading: str, removed: Sequence[str], reclaimed: str) -> None:
    """docker's answer to a prune on stdout: ``HEADING``, a line per removed object and a blank
    line (when something was removed), then ``Total reclaimed space: RECLAIMED``."""
    import click

    if removed:
        click.echo(heading)
        for line in removed:
            click.echo(line)
        click.echo("")
    click.echo(f"Total reclaimed space: {reclaimed}")


def returns_code(fn: Callable[P, int | None]) -> Callable[P, int]:
    """Commands return an int exit code; click's standalone_mode=False hands it to main()."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        return int(fn(*args, **kwargs) or 0)

    return wrapper
