"""Error base for builder/. Stdlib only (imported eagerly by the CLI; DESIGN C5).

A BuildError names the Dockerfile location it comes from (``Dockerfile:7: ...``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from grammar.ast import Span


class BuildError(Exception):
    exit_code: ClassVar[int] = 1
    hint: str | None = None

    def __init__(self, message: str, *, span: Span | None = None, hint: str | None = None) -> None:
        where = f"{span.filename}:{span.line}: " if span is not None else ""
        super().__init__(where + message)
        self.span = span
        if hint is not None:
            self.hint = hint


class UsageError(BuildError):
    """Bad flag values that click could not catch (exit 125, as docker does for bad flags)."""

    exit_code: ClassVar[int] = 125


class ContextError(BuildError):
    """The build context or a file in it is missing or unsafe."""


class StageNotFound(BuildError):
    pass


class StepFailed(BuildError):
    def __init__(self, message: str, *, exit_status: int, span: Span | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, span=span, hint=hint)
        self.exit_status = exit_status
