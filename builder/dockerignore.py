""".dockerignore parsing and matching with docker's semantics (moby ignorefile + patternmatcher, as
BuildKit walks a context): '#' comments, trimmed lines, '!' exceptions, Go-cleaned patterns without a
leading '/', '*'/'?' never cross '/', '**' spans components, later patterns win, a directory's match
covers everything below it. Imports builder.errors and registry.gomatch (Go's path.Match)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import ContextError
from registry import gomatch

_BOM = "\ufeff"
_REGEX_SPECIAL = set(".+()|{}$")


def go_clean(path: str) -> str:
    """Go's path.Clean: collapse '//', drop '.', resolve '..' lexically, no trailing '/'."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


@dataclass(frozen=True, slots=True)
class Pattern:
    """One cleaned pattern. ``line`` is its 1-based line in ``source`` (0 when not from a file)."""

    text: str
    exclusion: bool
    line: int = 0
    source: str = ""
    dirs: int = 0
    kind: str = "exact"          # exact | prefix | suffix | regexp (patternmatcher's fast paths)
    regex: re.Pattern[str] | None = None

    @classmethod
    def compile(cls, raw: str, *, line: int = 0, source: str = "") -> Pattern:
        text = go_clean(raw.strip())
        exclusion = text.startswith("!")
        if exclusion:
            text = text[1:]
            if not text:
                raise ContextError(f"{source or '.dockerignore'}:{line}: illegal exclusion pattern: \"!\"")
        try:
            gomatch.check(text)
        except ValueError as exc:
            raise ContextError(f"{source or '.dockerignore'}:{line}: bad pattern {raw.strip()!r}: {exc}",
                               hint="see https://docs.docker.com/build/concepts/context/#dockerignore-files"
                               ) from None
        kind, regex = _translate(text)
        return cls(text, exclusion, line, source, len(text.split("/")), kind,
                   re.compile(regex) if regex is not None else None)

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regex is not None
        return self.regex.match(path) is not None

    def __str__(self) -> str:
        return ("!" if self.exclusion else "") + self.text

    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.source else "(pattern)"


def _translate(text: str) -> tuple[str, str | None]:
    """The match kind and, for 'regexp', the anchored Python regex (patternmatcher's compile)."""
    out = "^"
    kind = "exact"
    i, n, index = 0, len(text), 0
    while i < n:
        ch = text[i]
        if ch == "*":
            if i + 1 < n and text[i + 1] == "*":
                i += 2
                if i < n and text[i] == "/":
                    i += 1
                if i >= n:
                    # '**' at the end accepts everything below (gitignore alignment)
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out += ".*"
                        kind = "regexp"
                else:
                    out += "(.*/)?"
                    kind = "regexp"
                if index == 0:
                    kind = "suffix"
                index += 1
                continue
            out += "[^/]*"
            kind = "regexp"
        elif ch == "?":
            out += "[^/]"
            kind = "regexp"
        elif ch in _REGEX_SPECIAL:
            out += "\\" + ch
        elif ch == "\\":
            if i + 1 < n:
                out += re.escape(text[i + 1])
                kind = "regexp"
                i += 1
            else:
                out += "\\\\"
        elif ch == "[":
            cls, i = gomatch.class_regex(text, i + 1)
            out += cls
            kind = "regexp"
            index += 1
            continue
        else:
            out += re.escape(ch) if ch in "^]" else ch
        i += 1
        index += 1
    if kind != "regexp":
        return kind, None
    return kind, out + "$"


def glob_regex(text: str) -> re.Pattern[str]:
    """Go's filepath.Match as a regex (registry.gomatch); a bad pattern is a ContextError."""
    try:
        return gomatch.glob_regex(text)
    except ValueError as exc:
        raise ContextError(f"bad pattern {text!r}: {exc}") from None


def parse_ignore(text: str, *, source: str = ".dockerignore") -> list[Pattern]:
    """Parse .dockerignore content (ignorefile.ReadAll + patternmatcher.New)."""
    patterns: list[Pattern] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw[1:] if lineno == 1 and raw.startswith(_BOM) else raw
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = go_clean(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append(Pattern.compile(("!" if invert else "") + line, line=lineno, source=source))
    return patterns


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a path is excluded, and the pattern that decided it (None: no pattern matched)."""

    excluded: bool
    pattern: Pattern | None = None
    inherited_from: str | None = None   # the parent directory whose match carried down


@dataclass(frozen=True, slots=True)
class MatchState:
    """Per-pattern match results of a directory, inherited by its children."""

    matched: tuple[bool, ...] = ()
    origin: tuple[str | None, ...] = ()
    path: str = ""


@dataclass
class Matcher:
    patterns: Sequence[Pattern] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.has_exclusions = any(p.exclusion for p in self.patterns)
        chars = set("*[]?^\\")
        self.only_prefix_exceptions = not any(
            p.exclusion and chars & set(_without_trailing_glob(p.text)) for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def decide(self, path: str, parent: MatchState | None = None) -> tuple[Decision, MatchState]:
        """Evaluate ``path`` given its parent directory's state (MatchesUsingParentResults)."""
        pats = self.patterns
        pm = parent.matched if parent and parent.matched else ()
        po = parent.origin if parent and parent.origin else ()
        excluded = False
        decided: Pattern | None = None
        origin_of: str | None = None
        matched: list[bool] = [False] * len(pats)
        origin: list[str | None] = [None] * len(pats)
        for i, pat in enumerate(pats):
            match = pm[i] if pm else False
            org = (po[i] or parent.path) if match and parent else None
            if not match:
                if pat.exclusion != excluded:
                    continue
                match = pat.match(path)
                org = None
                if not match and not pm and "/" in path:
                    parts = path.split("/")[:-1]
                    for j in range(len(parts)):
                        prefix = "/".join(parts[: j + 1])
                        if pat.match(prefix):
                            match, org = True, prefix
                            break
            matched[i] = match
            origin[i] = org if match else None
            if match:
                excluded = not pat.exclusion
                decided = pat
                origin_of = org
        return Decision(excluded, decided, origin_of), MatchState(tuple(matched), tuple(origin), path)

    def may_skip_dir(self, path: str) -> bool:
        """An excluded directory can be skipped when no exception could match inside it."""
        if not self.has_exclusions:
            return True
        if not self.only_prefix_exceptions:
            return False
        dir_slash = path + "/"
        return not any(p.exclusion and (_without_trailing_glob(p.text) + "/").startswith(dir_slash)
                       for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Path-only evaluation (MatchesOrParentMatches), for a single lookup."""
        return self.decide(path)[0].excluded


def _without_trailing_glob(text: str) -> str:
    for suffix in ("/**", "/*"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return text


def ignore_file_for(context_dir: Path, dockerfile: Path | None) -> Path | None:
    """The ignore file that applies: ``<Dockerfile>.dockerignore`` next to the Dockerfile wins
    over ``<context>/.dockerignore``; None when neither exists."""
    if dockerfile is not None:
        specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
        if specific.is_file():
            return specific
    default = context_dir / ".dockerignore"
    return default if default.is_file() else None


def load_matcher(context_dir: Path, dockerfile: Path | None = None) -> tuple[Matcher, Path | None]:
    path = ignore_file_for(context_dir, dockerfile)
    if path is None:
        return Matcher([]), None
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ContextError(f"cannot read {path}: {exc.strerror}") from None
    return Matcher(parse_ignore(text, source=path.name)), path
