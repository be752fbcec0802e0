"""The line pass: physical lines -> logical instructions, as BuildKit's parser.Parse reads them: BOM,
parser directives at the very top, comments and blank lines, continuations (with either escape token)
and heredoc bodies (read once the announcing instruction is parsed). The Tree is BuildKit's parse
tree plus the physical lines, for error excerpts. Imports grammar.errors/transform/words (so lark)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from grammar.errors import DirectiveError, ParseError
from grammar.transform import Node, heredocs_in_line, parse_line
from grammar.words import GO_SPACES

MAX_LINE_BYTES = 64 * 1024  # bufio.MaxScanTokenSize: a line (with its newline) must fit
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
KNOWN_DIRECTIVES = ("syntax", "escape", "check")


@dataclass(slots=True)
class Tree:
    """BuildKit's parse result: the directives found and the instruction Nodes."""

    filename: str
    nodes: list[Node]
    lines: list[str]  # physical lines without their terminators (for error excerpts)
    directives: dict[str, str] = field(default_factory=dict)  # name -> value, as written
    directive_lines: dict[str, int] = field(default_factory=dict)
    positions: list[list[tuple[int, int, int]]] = field(default_factory=list)
    # per node: (offset in the logical line, physical line, 0-based column) for each piece

    def locate(self, index: int, offset: int) -> tuple[int, int]:
        """(line, 1-based column) of ``offset`` in node ``index``'s logical line."""
        pieces = self.positions[index]
        line, col0, start = pieces[0][1], pieces[0][2], pieces[0][0]
        for piece_start, piece_line, piece_col in pieces:
            if piece_start > offset:
                break
            start, line, col0 = piece_start, piece_line, piece_col
        return line, col0 + (offset - start) + 1

    def excerpt(self, line: int) -> str:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""

    def error(self, exc: ParseError, line: int, column: int = 0, end_line: int | None = None) -> ParseError:
        """``exc`` located in this file, with the physical line as its excerpt."""
        return exc.located(filename=self.filename, line=line, column=column, end_line=end_line,
                           excerpt=self.excerpt(line))


def decode(source: str | bytes) -> str:
    """Dockerfile bytes as text: UTF-8, undecodable bytes kept (surrogateescape)."""
    if isinstance(source, bytes):
        return source.decode("utf-8", "surrogateescape")
    return source


def _split_lines(text: str) -> tuple[list[str], bool]:
    """Physical lines with their "\\n" (bufio.ScanLines keeping endings); stops at a line
    longer than the scanner's buffer, as BuildKit does. Returns (lines, too_long)."""
    lines = text.split("\n")
    out = [piece + "\n" for piece in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    for i, raw in enumerate(out):
        if len(raw) * 4 > MAX_LINE_BYTES and len(raw.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
            return out[:i], True
    return out, False


def _continues(text: str, escape: str) -> tuple[str, bool]:
    """BuildKit's trimContinuationCharacter: (line without the escape, ends the instruction?).

    The escape token, then only spaces and tabs, continues the line unless the character
    before it is the escape token too; a line holding just the escape token continues.
    """
    stripped = text.rstrip(" \t")
    if stripped.endswith(escape) and (len(stripped) == 1 or stripped[-2] != escape):
        return stripped[:-1], False
    return text, True


def _is_comment(text: str) -> bool:
    return text.lstrip(GO_SPACES).startswith("#")


class _Directives:
    """The run of directive lines at the top of the file (BuildKit's DirectiveParser)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.done = False
        self.values: dict[str, str] = {}
        self.lines: dict[str, int] = {}

    def feed(self, text: str, line: int) -> None:
        """``text`` is the line with its newline and leading blanks removed."""
        if self.done:
            return
        if not text.startswith("#"):
            self.done = True
            return
        match = _DIRECTIVE.match(text[1:].lstrip(GO_SPACES))
        if match is None or match.group(1).lower() not in KNOWN_DIRECTIVES:
            self.done = True
            return
        name = match.group(1).lower()
        if name in self.values:
            raise DirectiveError(f"only one {name} parser directive can be used", filename=self.filename,
                                 line=line, column=1, excerpt=text,
                                 hint=f"remove the second `# {name}=` line")
        value = match.group(2)
        if name == "escape" and value not in ("\\", "`"):
            raise DirectiveError(f"invalid escape token '{value}' does not match ` or \\",
                                 filename=self.filename, line=line, column=1, excerpt=text,
                                 hint="use `# escape=\\` (the default) or `# escape=``")
        self.values[name] = value
        self.lines[name] = line

    @property
    def escape(self) -> str:
        return self.values.get("escape", "\\")

def parse_tree(source: str | bytes, filename: str = "Dockerfile") -> Tree:
    """Read a whole Dockerfile into BuildKit's parse tree (no instruction validation).

    Raises ParseError (located) for what BuildKit's parser rejects: bad directives, an
    unterminated heredoc, ENV/LABEL without a value, a JSON array of non-strings, an
    over-long line, a file with no instructions.
    """
    text = decode(source)
    if text.startswith("\ufeff"):
        text = text[1:]
    raw_lines, too_long = _split_lines(text)
    tree = Tree(filename=filename, nodes=[], lines=[raw.rstrip("\r\n") for raw in text.split("\n")])
    directives = _Directives(filename)
    count = len(raw_lines)
    i = 0
    current = 0
    while i < count:
        token = raw_lines[i].rstrip("\r\n")
        i += 1
        stripped = token.lstrip(GO_SPACES)
        lead = len(token) - len(stripped)
        current += 1
        directives.feed(stripped, current)
        if stripped.startswith("#"):
            continue  # a comment (or a directive) line
        start = current
        escape = directives.escape
        line, done = _continues(stripped, escape)
        if done and not line:
            continue
        pieces = [line]
        positions = [(0, current, lead)]
        length = len(line)
        empty_continuation = False
        while not done and i < count:
            token = raw_lines[i].rstrip("\r\n")
            i += 1
            current += 1
            if _is_comment(token):
                continue
            if not token.lstrip(GO_SPACES):
                empty_continuation = True
                continue
            token, done = _continues(token, escape)
            positions.append((length, current, 0))
            pieces.append(token)
            length += len(token)
        logical = "".join(pieces)
        tree.positions.append(positions)
        try:
            node = parse_line(logical, escape)
        except ParseError as exc:
            if exc.offset is not None:
                where, column = tree.locate(len(tree.positions) - 1, exc.offset)
                raise tree.error(exc, where, column, current) from None
            raise tree.error(exc, start, positions[0][2] + 1, current) from None
        node.original, node.start_line, node.empty_continuation = logical, start, empty_continuation
        if node.can_contain_heredoc and "<<" in logical:
            try:
                heredocs = heredocs_in_line(logical)
            except ParseError as exc:
                raise tree.error(exc, start, positions[0][2] + 1, current) from None
            for heredoc in heredocs:
                body: list[str] = []
                terminated = False
                while i < count:
                    raw = raw_lines[i]
                    i += 1
                    current += 1
                    candidate = raw.rstrip("\r\n")
                    if heredoc.chomp:
                        candidate = candidate.lstrip("\t")
                    if candidate == heredoc.name:
                        terminated = True
                        break
                    body.append(raw)
                if not terminated:
                    raise tree.error(ParseError("unterminated heredoc",
                                                hint=f"end the heredoc with a line that is exactly "
                                                     f"{heredoc.name!r}"),
                                     start, positions[0][2] + 1, current)
                heredoc.content = "".join(body)
                heredoc.end_line = current
                node.heredocs.append(heredoc)
        node.end_line = current
        tree.nodes.append(node)
    if not tree.nodes:
        raise tree.error(ParseError("file with no instructions",
                                    hint="a Dockerfile needs at least a FROM instruction"),
                         max(current, 1) if raw_lines else 0)
    if too_long:
        raise tree.error(ParseError(f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES - 1}"),
                         current + 1)
    tree.directives, tree.directive_lines = directives.values, directives.lines
    return tree
