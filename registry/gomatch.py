"""Go's path.Match patterns as Python regexes: '*' and '?' never cross '/', '[...]' classes
with '^' negation and ranges, '\\' escapes; what Go calls ErrBadPattern is a ValueError.
Shared by the builder (.dockerignore, COPY sources) and runtime (the in-sandbox COPY glob
walk), so it lives in the bottom layer. Pure; stdlib only."""

from __future__ import annotations

import re


def check(pattern: str) -> None:
    """Raise ValueError where Go's filepath.Match returns ErrBadPattern (an unclosed or empty
    class, a bad range, a trailing backslash)."""
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            i += 2
        elif ch == "[":
            _, i = class_regex(pattern, i + 1)
        else:
            i += 1


def class_regex(pattern: str, i: int) -> tuple[str, int]:
    """The class that starts after the '[' at ``i - 1`` as a Python class: (regex, index after
    its ']'). ValueError for a malformed class."""
    out = "["
    if i < len(pattern) and pattern[i] == "^":
        out += "^"
        i += 1
    count = 0
    while True:
        if i >= len(pattern):
            raise ValueError("unclosed character class")
        if pattern[i] == "]" and count > 0:
            return out + "]", i + 1
        lo, i = _class_char(pattern, i)
        out += re.escape(lo)
        if i < len(pattern) and pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise ValueError(f"bad range {lo}-{hi}")
            out += "-" + re.escape(hi)
        count += 1


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern):
        raise ValueError("unclosed character class")
    ch = pattern[i]
    if ch in "-]":
        raise ValueError("bad character class")
    if ch == "\\":
        if i + 1 >= len(pattern):
            raise ValueError("trailing backslash")
        return pattern[i + 1], i + 2
    return ch, i + 1


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` as an anchored regex with Go's filepath.Match semantics; ValueError for a
    bad pattern (checked whole first, as Go does)."""
    check(pattern)
    out, i, n = "^", 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\":
            out += re.escape(pattern[i + 1])
            i += 1
        elif ch == "[":
            cls, i = class_regex(pattern, i + 1)
            out += cls
            continue
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$", re.DOTALL)
