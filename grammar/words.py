"""Dockerfile word expansion with BuildKit's shell lexer semantics (``shell.Lex``): $V ${V} and the
${V:-w} ${V-w} ${V:+w} ${V+w} ${V:?m} ${V?m} ${V#p} ${V##p} ${V%p} ${V%%p} ${V/p/r} ${V//p/r} forms,
single and double quotes, the escape token (\\ or the file's backtick). The builder calls it per step
for the instructions that expand; shell text is left alone. Pure; imports grammar.errors only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from grammar.errors import ExpansionError

# Go's unicode.IsSpace
GO_SPACES = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
            "\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACE = frozenset(GO_SPACES)
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_HEREDOC_BLANKS = " \t\r"


@dataclass(frozen=True, slots=True)
class Expansion:
    """The result of expanding one piece of text.

    ``value`` is the text as one word (BuildKit's ProcessWord: quotes removed, inner blanks
    kept); ``words`` the same text split into fields after expansion (ProcessWords);
    ``matched``/``unmatched`` the variable names that were found / not found in ``env``
    (what the UndefinedVar check and build-arg tracking need).
    """

    value: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]


class _Fail(Exception):
    """Internal: a lexer error before it is wrapped with the word that failed."""


class _Words:
    """Field splitting as ProcessWords does it: blanks split, quoted text never does."""

    __slots__ = ("words", "word", "in_word")

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ""
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in _SPACE:
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.word += ch
            self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def result(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class _Lexer:
    __slots__ = ("text", "pos", "env", "escape", "raw_quotes", "raw_escapes", "skip_quotes", "keep_unset",
                 "matched", "unmatched")

    def __init__(self, text: str, env: Mapping[str, str], escape: str, *, raw_quotes: bool,
                 raw_escapes: bool, skip_quotes: bool, keep_unset: bool) -> None:
        # Go's text/scanner skips a byte order mark at the very start
        self.text = text[1:] if text.startswith("\ufeff") else text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.raw_quotes, self.raw_escapes = raw_quotes, raw_escapes
        self.skip_quotes, self.keep_unset = skip_quotes, keep_unset
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    # -- helpers -------------------------------------------------------------------------
    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _next(self) -> str:
        if self.pos < len(self.text):
            self.pos += 1
            return self.text[self.pos - 1]
        return ""

    def _get(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        if value is None:
            self.unmatched.add(name)
            return "", False
        self.matched.add(name)
        return value, True

    # -- the lexer -----------------------------------------------------------------------
    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process up to ``stop`` (consumed) or the end of the text when ``stop`` is ""."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on(self, stop: str) -> tuple[str, list[str]]:
        out: list[str] = []
        words = _Words()
        text, escape = self.text, self.escape
        while self.pos < len(text):
            ch = text[self.pos]
            if stop and ch == stop:
                self.pos += 1
                return "".join(out), words.result()
            if ch == "$":
                piece = self._dollar()
                out.append(piece)
                words.add_string(piece)
                continue
            if ch == "<":
                piece = self._possible_heredoc()
                out.append(piece)
                words.add_raw(piece)
                continue
            if ch == "'" and not self.skip_quotes:
                piece = self._single_quote()
                out.append(piece)
                words.add_raw(piece)
                continue
            if ch == '"' and not self.skip_quotes:
                piece = self._double_quote()
                out.append(piece)
                words.add_raw(piece)
                continue
            self.pos += 1
            if ch == escape:
                if self.raw_escapes:
                    words.add_raw(ch)
                    out.append(ch)
                if self.pos >= len(text):
                    break  # an escape at the very end is dropped
                ch = text[self.pos]
                self.pos += 1
                words.add_raw(ch)
            else:
                words.add_char(ch)
            out.append(ch)
        if stop:
            raise _Fail(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), words.result()

    def _single_quote(self) -> str:
        # everything up to the next ' is literal; ' cannot be escaped inside
        quote = self._next()
        out = [quote] if self.raw_quotes else []
        while True:
            ch = self._next()
            if ch == "":
                raise _Fail("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double_quote(self) -> str:
        # literal except $ and the escape token, which only escapes ", $ and itself
        quote = self._next()
        out = [quote] if self.raw_quotes else []
        while True:
            ch = self._peek()
            if ch == "":
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.pos += 1
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self.pos += 1
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self._peek()
                if following == "":
                    continue
                if following in ('"', "$", self.escape):
                    ch = self._next()
            out.append(ch)

    def _possible_heredoc(self) -> str:
        # "<<" keeps the blanks after it in the same word, so "<< EOF" is one heredoc word
        self.pos += 1
        if self._peek() != "<":
            return "<"
        self.pos += 1
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _HEREDOC_BLANKS:
            self.pos += 1
        return "<<" + self.text[start:self.pos]

    def _name(self) -> str:
        text, start = self.text, self.pos
        if self.pos < len(text):
            ch = text[self.pos]
            if ch.isdecimal():
                while self.pos < len(text) and text[self.pos].isdecimal():
                    self.pos += 1
                return text[start:self.pos]
            if ch in _SPECIAL_PARAMS:
                self.pos += 1
                return ch
        while self.pos < len(text):
            ch = text[self.pos]
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            self.pos += 1
        return text[start:self.pos]

    def _nested(self, stop: str, raw_escapes: bool, missing: str) -> str:
        try:
            return self.stop_on(stop, raw_escapes)[0]
        except _Fail:
            if self.pos >= len(self.text):
                raise _Fail(missing) from None
            raise

    def _dollar(self) -> str:
        self.pos += 1  # $
        if self._peek() != "{":
            name = self._name()
            if not name:
                return "$"
            value, found = self._get(name)
            if not found and self.keep_unset:
                return "$" + name
            return value
        self.pos += 1  # {
        first = self._peek()
        if first == "":
            raise _Fail("syntax error: missing '}'")
        if first in "{}:":
            raise _Fail("syntax error: bad substitution")
        name = self._name()
        ch = self._next()
        if ch == "":
            raise _Fail("syntax error: missing '}'")
        modifier = ch
        if ch == "}":
            value, found = self._get(name)
            if not found and self.keep_unset:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self._replace(name)
        null_is_unset = False
        if ch == ":":
            # ${V:x}: whatever x is, the word is read before x is judged (as BuildKit does)
            null_is_unset = True
            ch = self._next()
            modifier += ch
        elif ch not in ("+", "-", "?", "#", "%"):
            raise _Fail(f"unsupported modifier ({modifier}) in substitution")
        word = self._nested("}", ch in ("#", "%"), "syntax error: missing '}'")
        value, found = self._get(name)
        if self.keep_unset and not found:
            return "${" + name + modifier + word + "}"
        if ch == "-":
            return word if not found or (null_is_unset and value == "") else value
        if ch == "+":
            return "" if not found or (null_is_unset and value == "") else word
        if ch == "?":
            if not found:
                raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _Fail(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch not in ("#", "%"):
            raise _Fail(f"unsupported modifier ({modifier}) in substitution")
        # '#' trims a prefix, '%' a suffix; doubled, the longest match
        greedy = word.startswith(ch)
        if greedy:
            word = word[1:]
        if ch == "%":
            return _trim_suffix(word, value, greedy)
        return _trim_prefix(word, value, greedy)

    def _replace(self, name: str) -> str:
        replace_all = self._peek() == "/"
        if replace_all:
            self.pos += 1
        pattern = self._nested("/", True, "syntax error: missing '/' in ${}")
        replacement = self._nested("}", True, "syntax error: missing '}'")
        value, found = self._get(name)
        if self.keep_unset and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        return regex.sub(lambda _m: replacement, value, count=0 if replace_all else 1)


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern (``*``, ``?``, ``\\`` escapes; no brackets) as a regular expression."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = pattern[i] if i < n else ""
            if following in ("}", "/"):
                continue  # the escape belonged to ${...} syntax, not to the pattern
            if following not in ("*", "?", "\\"):
                shown = following or "\ufffd"
                raise _Fail(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{shown}'")
            out.append("\\" + following)
            i += 1
        else:
            out.append(re.escape(ch) if ch in "[]{}.+()|^$" else ch)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end():] if match else value


def _reverse_pattern(pattern: str) -> str:
    # reverse, keeping each "\x" escape pair in order
    pieces: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            pieces.append(pattern[i:i + 2])
            i += 2
        else:
            pieces.append(pattern[i])
            i += 1
    return "".join(reversed(pieces))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # regular expressions find leftmost matches: reverse both to find the rightmost suffix
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def process(text: str, env: Mapping[str, str], *, escape: str = "\\", keep_quotes: bool = False,
            keep_escapes: bool = False, quotes: bool = True, keep_unset: bool = False) -> Expansion:
    """Expand ``text`` with ``env``; raises ExpansionError (``${V:?msg}``, bad syntax, quotes).

    ``keep_quotes``/``keep_escapes`` leave quote and escape characters in the result
    (BuildKit's RawQuotes/RawEscapes), ``quotes=False`` treats quotes as ordinary
    characters (SkipProcessQuotes: heredoc bodies), ``keep_unset`` leaves references to unset
    variables as written (SkipUnsetEnv).
    """
    lexer = _Lexer(text, env, escape, raw_quotes=keep_quotes, raw_escapes=keep_escapes,
                   skip_quotes=not quotes, keep_unset=keep_unset)
    try:
        value, words = lexer.stop_on("", keep_escapes)
    except _Fail as exc:
        raise ExpansionError(str(exc), word=text) from None
    return Expansion(value, tuple(words), frozenset(lexer.matched), frozenset(lexer.unmatched))


def expand(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """One word, expanded and unquoted, inner blanks kept (``ENV A="x  y"`` -> ``x  y``)."""
    if "$" not in word and "'" not in word and '"' not in word and escape not in word:
        return word
    return process(word, env, escape=escape).value


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """Expand, then split into fields on unquoted blanks (EXPOSE ports, shell-form words)."""
    return list(process(text, env, escape=escape).words)


def expand_heredoc(text: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """A heredoc body or COPY <<EOF source: only ``$`` forms expand, quotes stay as written."""
    return process(text, env, escape=escape, quotes=False).value


def referenced(text: str, *, escape: str = "\\") -> frozenset[str]:
    """Every variable name ``text`` refers to (nested defaults included), without an env."""
    return process(text, {}, escape=escape, keep_unset=True).unmatched
