"""Error base for grammar/. Stdlib only: the CLI imports it without importing lark.

A ParseError carries the file, line and column, the offending line (rendered with a caret)
and a "did you mean" hint where one fits. ``message`` is BuildKit's own wording, so tools
that compare with ``docker build`` see the same text; ``str(err)`` prefixes the location.
"""

from __future__ import annotations

from typing import ClassVar


class ParseError(Exception):
    """A Dockerfile that BuildKit would reject (syntax, instruction arguments, flags)."""

    exit_code: ClassVar[int] = 1
    hint: str | None = None
    offset: int | None = None   # into the logical line, set where the line parser knows no more

    def __init__(self, message: str, *, filename: str = "Dockerfile", line: int = 0, column: int = 0,
                 excerpt: str = "", hint: str | None = None, end_line: int | None = None) -> None:
        self.message = message
        self.filename, self.line, self.column = filename, line, column
        self.end_line = end_line if end_line is not None else line
        self.excerpt = excerpt
        if hint is not None:
            self.hint = hint
        super().__init__(self._where() + message)

    def _where(self) -> str:
        if not self.line:
            return f"{self.filename}: "
        if not self.column:
            return f"{self.filename}:{self.line}: "
        return f"{self.filename}:{self.line}:{self.column}: "

    def located(self, *, filename: str, line: int, column: int = 0, end_line: int | None = None,
                excerpt: str = "") -> ParseError:
        """A copy of this error that points at a place in a Dockerfile (same class and hint)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.filename, new.line, new.column = filename, line, column
        new.end_line = end_line if end_line is not None else line
        new.excerpt = excerpt
        new.args = (new._where() + new.message,)
        return new

    def render(self) -> str:
        """``Dockerfile:LINE:COL: message`` plus the offending line with a caret under COL."""
        text = str(self)
        if self.excerpt and self.line:
            excerpt, column = self.excerpt.expandtabs(1), max(self.column, 1)
            if len(excerpt) > _EXCERPT_WIDTH:  # show a window around the column
                start = max(0, min(column - 1 - _EXCERPT_WIDTH // 2, len(excerpt) - _EXCERPT_WIDTH))
                window = excerpt[start:start + _EXCERPT_WIDTH]
                prefix = "..." if start else ""
                suffix = "..." if start + _EXCERPT_WIDTH < len(excerpt) else ""
                excerpt, column = prefix + window + suffix, column - start + len(prefix)
            gutter = f"{self.line:>4} | "
            caret = " " * (len(gutter) - 2) + "| " + " " * (column - 1) + "^"
            text += f"\n{gutter}{excerpt}\n{caret}"
        return text


class DirectiveError(ParseError):
    """A bad parser directive (``# escape=``, a repeated directive, ``# check=``)."""


class InstructionError(ParseError):
    """An instruction BuildKit's instruction layer rejects: keyword, flags or arguments."""


class ExpansionError(ParseError):
    """Word expansion failed: ``${V:?message}``, a bad ``${...}``, an unterminated quote.

    ``reason`` is the lexer's own message (``V: message``); ``word`` the word that failed.
    The builder re-raises it with the step's location.
    """

    def __init__(self, reason: str, *, word: str, hint: str | None = None) -> None:
        self.reason, self.word = reason, word
        super().__init__(f"failed to process {_go_quote(word)}: {reason}", hint=hint)

    def _where(self) -> str:
        return "" if not self.line else super()._where()


def _go_quote(text: str) -> str:
    """Go's %q for a string (what BuildKit prints around a word)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        elif not ch.isprintable() and code > 0x7F and ch != " ":
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_EXCERPT_WIDTH = 100
_NAMED_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
