"""One logical line -> one parse-tree Node through the lark grammar (grammar/dockerfile.lark). A Node is
BuildKit's parser.Node: keyword as spelled, flag words (unquoted, unvalidated), argument values as
BuildKit's line parsers shape them, the JSON attribute and ONBUILD's trigger. Imports lark (through
grammar._load), grammar.errors/words; no lark type leaves this module."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import lark

from grammar import _load
from grammar.errors import ExpansionError, ParseError
from grammar.words import GO_SPACES, process

# BuildKit's reWhitespace: the separator of FROM/COPY words and of the keyword
_K_WS = "\t\v\f\r "
_ASCII_WS = "\t\n\v\f\r "
_SPLIT_K_WS = re.compile(r"[\t\v\f\r ]+")
_JSON_WS = " \t\n\r"
_SURROGATE = re.compile("[\ud800-\udfff]")
_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")

ERR_NOT_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"
HEREDOC_KINDS = frozenset({"run", "copy", "add"})


@dataclass(slots=True)
class HeredocBody:
    name: str
    fd: int
    chomp: bool
    expand: bool
    content: str = ""
    end_line: int = 0  # the terminator's line


@dataclass(slots=True)
class Node:
    """One instruction as BuildKit's parser sees it (no validation of names or flags)."""

    kind: str  # lowercased keyword ("run"), or "" when the keyword is not an instruction
    keyword: str  # as spelled
    flags: list[str] = field(default_factory=list)  # words after quote removal, Go-exact text
    values: list[str] = field(default_factory=list)
    json: bool = False
    trigger: Node | None = None  # ONBUILD's instruction
    legacy: bool = False  # ENV/LABEL written "KEY value" rather than "KEY=value"
    # positions: offsets into the logical line
    keyword_at: int = 0
    flag_at: list[int] = field(default_factory=list)
    value_at: list[int] = field(default_factory=list)
    # filled in by the line scanner
    original: str = ""
    start_line: int = 0
    end_line: int = 0
    heredocs: list[HeredocBody] = field(default_factory=list)
    empty_continuation: bool = False

    @property
    def can_contain_heredoc(self) -> bool:
        """BuildKit's canContainHeredoc: RUN/COPY/ADD in shell form, or as ONBUILD's trigger."""
        node = self.trigger if self.kind == "onbuild" and self.trigger is not None else self
        return node.kind in HEREDOC_KINDS and not node.json


class _Exec:
    """A parsed exec form: the decoded JSON values and where each element starts."""

    __slots__ = ("values", "offsets")

    def __init__(self, values: list[Any], offsets: list[int]) -> None:
        self.values, self.offsets = values, offsets


_INSTRUCTIONS = ("add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
                 "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume",
                 "workdir", "unknown")
_NON_STRING = object()


def _pos(token: lark.Token) -> int:
    return token.start_pos or 0


def _json_value(item: Any) -> Any:
    if isinstance(item, lark.Token):
        if item.type == "J_STRING":
            return json.loads(item.value.lstrip(_JSON_WS))
        return _NON_STRING  # numbers, true, false, null
    return _NON_STRING  # nested array or object


class _Callbacks(lark.Transformer[lark.Token, Any]):
    """Inline LALR callbacks: build small tuples while parsing, no lark Tree."""

    def start(self, children: list[Any]) -> Any:
        return children[0]

    start_bt = start_shell = start_shell_bt = start

    def exec_form(self, children: list[Any]) -> _Exec:
        values: list[Any] = []
        offsets: list[int] = []
        for item in children[1:-1]:
            if isinstance(item, lark.Token) and item.type == "J_COMMA":
                continue
            values.append(_json_value(item))
            if isinstance(item, lark.Token):
                offsets.append(_pos(item) + len(item.value) - len(item.value.lstrip(_JSON_WS)))
            else:
                offsets.append(-1)
        return _Exec(values, offsets)

    def json_array(self, children: list[Any]) -> object:
        return _NON_STRING

    json_object = json_array


def _instruction_callback(kind: str) -> Any:
    def callback(self: _Callbacks, children: list[Any]) -> tuple[str, list[Any]]:
        return kind, children
    callback.__name__ = kind
    return callback


for _kind in _INSTRUCTIONS:
    setattr(_Callbacks, _kind, _instruction_callback(_kind))

_CALLBACKS = _Callbacks()


def _parser() -> lark.Lark:
    return _load.parser(_CALLBACKS)


# ---- flag words ---------------------------------------------------------------------------

def flag_word(raw: str, escape: str) -> str:
    """BuildKit's extractBuilderFlags for one word: quotes removed, escape token honoured."""
    out: list[str] = []
    quote = ""
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        i += 1
        if quote:
            if ch == quote:
                quote = ""
                continue
        elif ch in ("'", '"'):
            quote = ch
            continue
        if ch == escape:
            if i == n:
                break  # an escape at the end is dropped
            ch = raw[i]
            i += 1
        out.append(ch)
    return "".join(out)


_BYTE_SPACES = frozenset(b"\t\n\v\f\r \x85\xa0")


def _go_flags(args: str, escape: str) -> tuple[list[str], list[int], int, int]:
    """extractBuilderFlags exactly as Go runs it: byte by byte, so a non-ASCII flag word is
    split at bytes 0x85/0xA0 and its characters come out as Latin-1 (what BuildKit reports).

    Returns (flag words, their character offsets in ``args``, the offset where the arguments
    start, the offset of a terminating "--" word or -1).
    """
    data = args.encode("utf-8", "surrogateescape")
    esc = ord(escape)
    words: list[str] = []
    starts: list[int] = []
    pos, n = 0, len(data)

    def char_offset(byte_pos: int) -> int:
        return len(data[:byte_pos].decode("utf-8", "ignore"))

    while True:
        while pos < n and data[pos] in _BYTE_SPACES:
            pos += 1
        if pos >= n:
            return words, starts, len(args), -1
        if not (data[pos] == 0x2D and pos + 1 < n and data[pos + 1] == 0x2D):
            return words, starts, char_offset(pos), -1
        start = pos
        word = bytearray()
        blank_ok = False
        quote = 0
        while pos < n:
            b = data[pos]
            if quote:
                if b == quote:
                    quote = 0
                    pos += 1
                    continue
            else:
                if b in _BYTE_SPACES:
                    break
                if b in (0x22, 0x27):
                    quote, blank_ok = b, True
                    pos += 1
                    continue
            if b == esc:
                if pos + 1 == n:
                    pos += 1
                    break
                pos += 1
                b = data[pos]
            word.append(b)
            pos += 1
        text = word.decode("latin-1")
        if text == "--":
            return words, starts, (len(args) if pos >= n else char_offset(pos)), char_offset(start)
        if blank_ok or text:
            words.append(text)
            starts.append(char_offset(start))


def go_to_utf8(text: str) -> str:
    """Undo the Latin-1 view of a Go byte string (for pybuild's own, typed, flags)."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


# ---- heredocs ------------------------------------------------------------------------------

def _parse_heredoc_word(word: str) -> HeredocBody | None:
    """BuildKit's ParseHeredoc: ``[fd]<<[-][blanks]NAME`` as one word, or None."""
    match = _HEREDOC_WORD.match(word)
    if match is None or not match.group(3):
        return None
    rest = match.group(3)
    try:
        plain = process(rest, {}, keep_unset=True).words
        if len(plain) != 1:
            return None
        raw = process(rest, {}, keep_unset=True, keep_quotes=True).words
    except ExpansionError as exc:
        raise ParseError(exc.message) from None
    if len(raw) != len(plain):
        raise ParseError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    name = plain[0]
    quotes_plain = name.count("'") + name.count('"')
    quotes_raw = raw[0].count("'") + raw[0].count('"')
    return HeredocBody(name=name, fd=int(match.group(1) or 0), chomp=match.group(2) == "-",
                       expand=quotes_plain == quotes_raw)


def heredoc_marker(word: str) -> HeredocBody | None:
    """Whether a COPY/ADD argument is a heredoc marker (BuildKit's MustParseHeredoc)."""
    try:
        return _parse_heredoc_word(word)
    except ParseError:
        return None


def heredocs_in_line(line: str) -> list[HeredocBody]:
    """The heredocs a RUN/COPY/ADD line announces, in order (BuildKit's heredocsFromLine).

    The line is split the way the shell would (always with the backslash escape); a line the
    lexer cannot split (an unbalanced quote anywhere) announces none, as in BuildKit.
    """
    try:
        words = process(line, {}, keep_quotes=True, keep_escapes=True, keep_unset=True).words
    except ExpansionError:
        return []
    out: list[HeredocBody] = []
    for word in words:
        heredoc = _parse_heredoc_word(word)
        if heredoc is not None:
            out.append(heredoc)
    return out


# ---- building Nodes ------------------------------------------------------------------------

_FLAG_TYPES = frozenset({"FLAG", "FLAG_BT"})
_DASHDASH_TYPES = frozenset({"DASHDASH", "DASHDASH_BT"})


def _lead(text: str, chars: str) -> int:
    return len(text) - len(text.lstrip(chars))


def _build(item: tuple[str, list[Any]], line: str, escape: str, shift: int) -> Node:
    """Turn a callback tuple into a Node; ``shift`` maps lark offsets to logical-line offsets."""
    kind, children = item
    keyword_tok: lark.Token = children[0]
    node = Node(kind="" if kind == "unknown" else kind, keyword=keyword_tok.value,
                keyword_at=_pos(keyword_tok) + shift)
    i = 1
    while i < len(children) and isinstance(children[i], lark.Token) and children[i].type in _FLAG_TYPES:
        tok = children[i]
        lead = _lead(tok.value, GO_SPACES)
        node.flags.append(flag_word(tok.value[lead:], escape))
        node.flag_at.append(_pos(tok) + lead + shift)
        i += 1
    if i < len(children) and isinstance(children[i], lark.Token) and children[i].type in _DASHDASH_TYPES:
        i += 1
    rest = children[i:]
    if kind == "unknown":
        node.values = [""]  # BuildKit's parseIgnore
        return node
    if kind == "onbuild":
        if rest:
            node.trigger = _build(rest[0], line, escape, shift)
            node.values = [""]
        return node
    if kind == "healthcheck" and rest:
        type_tok: lark.Token = rest[0]
        lead = _lead(type_tok.value, GO_SPACES)
        node.values.append(type_tok.value[lead:])
        node.value_at.append(_pos(type_tok) + lead + shift)
        rest = rest[1:]
    if not rest:
        return node
    first = rest[0]
    if isinstance(first, _Exec):
        if any(value is _NON_STRING for value in first.values):
            raise ParseError(ERR_NOT_STRINGS)
        node.json = True
        for value, at in zip(first.values, first.offsets, strict=True):
            node.values.append(_SURROGATE.sub("\ufffd", value) if not value.isascii() else value)
            node.value_at.append(at + shift)
        return node
    tok = first
    if tok.type == "SHELL_TEXT":
        # after HEALTHCHECK's type word only ASCII blanks are skipped (a byte-wise scan)
        lead = _lead(tok.value, GO_SPACES if kind != "healthcheck" else _ASCII_WS)
        node.values.append(tok.value[lead:])
        node.value_at.append(_pos(tok) + lead + shift)
        return node
    if tok.type in ("WORD1", "WORD"):
        for word in rest:
            lead = _lead(word.value, GO_SPACES if word.type == "WORD1" else _K_WS)
            node.values.append(word.value[lead:])
            node.value_at.append(_pos(word) + lead + shift)
        return node
    # ENV, LABEL, ARG: quote-aware words (a trailing lone escape token is dropped)
    words: list[str] = []
    offsets: list[int] = []
    for word in rest:
        if word.type.startswith("TRAIL_ESC"):
            continue
        lead = _lead(word.value, GO_SPACES)
        words.append(word.value[lead:])
        offsets.append(_pos(word) + lead)
    if kind == "arg":
        node.values, node.value_at = words, [o + shift for o in offsets]
        return node
    _name_values(node, words, offsets, line, shift)
    return node


def _name_values(node: Node, words: list[str], offsets: list[int], line: str, shift: int) -> None:
    """BuildKit's parseNameVal for ENV and LABEL: legacy ``KEY value`` or ``k=v`` words."""
    name = node.kind.upper()
    if "=" not in words[0]:
        rest = line[offsets[0]:]
        parts = _SPLIT_K_WS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise ParseError(f"{name} must have two arguments")
        node.legacy = True
        node.values = [parts[0], parts[1]]
        node.value_at = [offsets[0] + shift, offsets[0] + len(rest) - len(parts[1]) + shift]
        return
    for word, at in zip(words, offsets, strict=True):
        key, sep, value = word.partition("=")
        if not sep:
            exc = ParseError(f"Syntax error - can't find = in {_go_quote(word)}. Must be of the form: "
                             "name=value", hint=f"write {word}=<value>, or quote a value that has blanks")
            exc.offset = at + shift
            raise exc
        node.values += [key, value]
        node.value_at += [at + shift, at + len(key) + 1 + shift]


def _go_quote(text: str) -> str:
    from grammar.errors import _go_quote as quote

    return quote(text)


def parse_line(logical: str, escape: str) -> Node:
    """Parse one logical line (continuations joined) into a Node.

    Raises ParseError with BuildKit's message for the few things its parser rejects (ENV
    without a value, a JSON array of non-strings, ...); offsets in the Node are relative to
    ``logical``. The caller adds line numbers.
    """
    text = logical.strip(GO_SPACES)
    shift = _lead(logical, GO_SPACES)
    if not text:
        # a logical line that is all blanks after a dangling continuation: BuildKit keeps an
        # instruction with an empty keyword
        return Node(kind="", keyword="", values=[""], keyword_at=shift)
    go_flags: list[tuple[list[str], list[int]]] | None = None
    moves: list[tuple[int, int]] = []
    if not text.isascii():
        # Go scans flags byte by byte: emulate that, and let the grammar parse the rest
        text, moves, go_flags = _strip_go_flags(text, escape)
    backtick = escape == "`"
    start = "start_bt" if backtick else "start"
    parser = _parser()
    item: Any
    try:
        item = parser.parse(text, start=start)
    except lark.exceptions.UnexpectedInput:
        # not one JSON array after all: shell form (BuildKit falls back silently)
        try:
            item = parser.parse(text, start="start_shell_bt" if backtick else "start_shell")
        except lark.exceptions.UnexpectedInput as exc:  # pragma: no cover - the grammar accepts any line
            raise ParseError(f"cannot parse instruction: {exc.__class__.__name__}") from None
    node = _build(item, text, escape, 0)
    if go_flags is not None:
        _move(node, moves)
        level: Node | None = node
        for words, offsets in go_flags:
            if level is None:
                break
            level.flags, level.flag_at = words, offsets
            level = level.trigger
    if shift:
        _move(node, [(0, shift)])
    return node


_Levels = list[tuple[list[str], list[int]]]


def _strip_go_flags(text: str, escape: str) -> tuple[str, list[tuple[int, int]], _Levels]:
    """For a line with non-ASCII text: take the flags off with Go's byte-wise scan, so that the
    grammar sees the keyword, a "--" (no more flags) and the arguments only; ONBUILD's
    trigger gets the same treatment.

    Returns (text for the grammar, offset moves [(from this grammar offset on, add this)],
    the flags of each level: ONBUILD's, its trigger's, ... as (words, offsets in ``text``)).
    """
    out = ""
    moves: list[tuple[int, int]] = []
    levels: list[tuple[list[str], list[int]]] = []
    current, base = text, 0
    while True:
        match = _SPLIT_K_WS.search(current)
        if match is None:
            moves.append((len(out), base - len(out)))
            return out + current, moves, levels
        keyword = current[:match.start()]
        args = current[match.end():]
        words, starts, rest_at, _ = _go_flags(args, escape)
        levels.append((words, [base + match.end() + at for at in starts]))
        moves.append((len(out), base - len(out)))
        out += keyword + " -- "
        rest = args[rest_at:]
        if not rest:
            return out.rstrip(), moves, levels
        base += match.end() + rest_at
        if keyword.replace("\u0130", "I").lower() != "onbuild":
            moves.append((len(out), base - len(out)))
            return out + rest, moves, levels
        lead = _lead(rest, GO_SPACES)
        current, base = rest[lead:], base + lead


def _move(node: Node, moves: list[tuple[int, int]]) -> None:
    """Map the offsets of ``node`` (and its trigger) from the grammar's text back."""
    def fix(at: int) -> int:
        delta = 0
        for after, move in moves:
            if at >= after:
                delta = move
        return at + delta
    node.keyword_at = fix(node.keyword_at)
    node.flag_at = [fix(at) for at in node.flag_at]
    node.value_at = [fix(at) for at in node.value_at]
    if node.trigger is not None:
        _move(node.trigger, moves)
