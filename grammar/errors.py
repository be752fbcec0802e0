"""Error base for grammar/. Stdlib only: the CLI imports it without importing lark.

A ParseError carries the file, line and column, the offending line and a caret, and a
"did you mean" hint where one fits.
"""

from __future__ import annotations

from typing import ClassVar


class ParseError(Exception):
    exit_code: ClassVar[int] = 1
    hint: str | None = None

    def __init__(self, message: str, *, filename: str = "Dockerfile", line: int = 0, column: int = 0,
                 excerpt: str = "", hint: str | None = None) -> None:
        self.message = message
        self.filename, self.line, self.column = filename, line, column
        self.excerpt = excerpt
        if hint is not None:
            self.hint = hint
        where = f"{filename}:{line}:{column}: " if line else f"{filename}: "
        super().__init__(where + message)

    def render(self) -> str:
        """The message plus the offending line with a caret under the column."""
        text = str(self)
        if self.excerpt:
            caret = " " * max(self.column - 1, 0) + "^"
            text += f"\n  {self.excerpt}\n  {caret}"
        return text
