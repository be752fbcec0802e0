"""The typed Dockerfile AST: frozen dataclasses, one per instruction, each with a Span. Values stay as
written (quotes, escapes and $VAR unexpanded, where BuildKit keeps them): the builder expands per step
with the current ARG/ENV values, per ``EXPANDS_WORDS`` and ``EXPANDED_FIELDS`` (details below).
Stdlib only."""

# RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK leave $VAR to the shell. Each field named in
# EXPANDED_FIELDS expands word by word with grammar.words.expand(word, env, escape=df.escape), except:
# EXPOSE ports with expand_words (one word may give several), RUN mounts with
# grammar.parse_mount(m.raw, expand=...), and COPY/ADD inline sources whose expand is true with
# expand_heredoc.

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

_LEADING_TABS = re.compile(r"^\t+", re.M)


@dataclass(frozen=True, slots=True)
class Span:
    """Where a node is: 1-based line and column of its first character, last line included."""

    filename: str
    line: int
    column: int
    end_line: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}"


@dataclass(frozen=True, slots=True)
class Flag:
    """One builder flag as BuildKit keeps it: ``--chown="a b"`` -> name ``chown``, value ``a b``."""

    name: str
    value: str | None  # None for a bare ``--link`` (no "=")
    raw: str  # the word after quote removal: "--chown=a b"
    span: Span


@dataclass(frozen=True, slots=True)
class Heredoc:
    """A here-document attached to RUN, COPY or ADD (``<<EOF``, ``<<-EOF``, ``3<<'EOF'``)."""

    name: str  # the delimiter, quotes removed
    content: str  # the body as written: line terminators kept, tabs not yet stripped
    chomp: bool  # written <<-: leading tabs are stripped from every line (see ``data``)
    expand: bool  # False when the delimiter was quoted: no $VAR expansion in the body
    fd: int  # the N of N<<EOF, 0 when absent
    span: Span  # from the instruction's first line to the terminator line

    @property
    def data(self) -> str:
        """The body as it is used: with ``<<-`` leading tabs removed from every line."""
        return _LEADING_TABS.sub("", self.content) if self.chomp else self.content


@dataclass(frozen=True, slots=True)
class Mount:
    """A ``RUN --mount=...`` spec (BuildKit's CSV form), validated where it is literal.

    Values that contain ``$`` cannot be checked before expansion: they are listed in
    ``deferred`` and the builder calls ``grammar.parse_mount(mount.raw, expand=...)`` to get
    the final Mount. With ``deferred == ()`` the mount is final as it is.
    """

    raw: str
    type: Literal["bind", "cache", "tmpfs", "secret", "ssh"] = "bind"
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    id: str | None = None
    sharing: Literal["shared", "private", "locked"] | None = None
    readonly: bool = True  # BuildKit's default: read-only except cache and tmpfs
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None  # tmpfs size in bytes
    env: str | None = None  # secret exposed as this environment variable
    deferred: tuple[str, ...] = ()  # keys whose values still need expansion


CommandLine = str | tuple[str, ...]
"""Shell form (one string for the shell) or exec form (argv, from JSON)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """Fields every instruction has. ``keyword`` is as spelled (``run``, ``Copy``)."""

    KIND: ClassVar[str] = ""
    EXPANDS_WORDS: ClassVar[bool] = False
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ()

    span: Span
    keyword: str
    original: str  # the logical line, continuations joined (BuildKit's Node.Original)
    flags: tuple[Flag, ...] = ()

    def flag(self, name: str) -> Flag | None:
        """The last flag called ``name`` (without dashes), or None."""
        for f in reversed(self.flags):
            if f.name == name:
                return f
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class From(Instruction):
    KIND: ClassVar[str] = "FROM"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("image", "platform")

    image: str
    stage_name: str | None = None  # lowercased, as BuildKit compares stage names
    platform: str | None = None
    as_keyword: str | None = None  # "AS" as spelled, for the casing lint


@dataclass(frozen=True, slots=True, kw_only=True)
class Run(Instruction):
    KIND: ClassVar[str] = "RUN"
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("mounts",)

    command: CommandLine
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[Mount, ...] = ()
    network: Literal["default", "none", "host"] | None = None
    security: Literal["sandbox", "insecure"] | None = None

    @property
    def exec_form(self) -> bool:
        return isinstance(self.command, tuple)


@dataclass(frozen=True, slots=True, kw_only=True)
class Copy(Instruction):
    KIND: ClassVar[str] = "COPY"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("sources", "dest", "chown", "chmod", "from_", "exclude")

    sources: tuple[str, ...]  # paths and globs; heredoc markers are in inline_sources
    dest: str
    inline_sources: tuple[Heredoc, ...] = ()  # <<EOF sources: file name = name, data = body
    heredocs: tuple[Heredoc, ...] = ()  # every body read for this instruction
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()
    exec_form: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Add(Instruction):
    KIND: ClassVar[str] = "ADD"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("sources", "dest", "chown", "chmod", "checksum",
                                                  "exclude")

    sources: tuple[str, ...]
    dest: str
    inline_sources: tuple[Heredoc, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    keep_git_dir: bool = False
    checksum: str | None = None
    exclude: tuple[str, ...] = ()
    exec_form: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Env(Instruction):
    """``ENV k=v ...`` or the legacy ``ENV k v w`` (one pair; value is the rest of the line)."""

    KIND: ClassVar[str] = "ENV"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("pairs",)

    pairs: tuple[tuple[str, str], ...]  # raw words: quotes kept, expand() removes them
    legacy: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Label(Instruction):
    KIND: ClassVar[str] = "LABEL"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("pairs",)

    pairs: tuple[tuple[str, str], ...]
    legacy: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Arg(Instruction):
    KIND: ClassVar[str] = "ARG"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("args",)

    args: tuple[tuple[str, str | None], ...]  # (name, default as written or None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expose(Instruction):
    KIND: ClassVar[str] = "EXPOSE"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("ports",)

    ports: tuple[str, ...]  # as written, file order; expand each with words.expand_words


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume(Instruction):
    KIND: ClassVar[str] = "VOLUME"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("paths",)

    paths: tuple[str, ...]
    exec_form: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class User(Instruction):
    KIND: ClassVar[str] = "USER"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("user",)

    user: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Workdir(Instruction):
    KIND: ClassVar[str] = "WORKDIR"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("path",)

    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StopSignal(Instruction):
    KIND: ClassVar[str] = "STOPSIGNAL"
    EXPANDS_WORDS: ClassVar[bool] = True
    EXPANDED_FIELDS: ClassVar[tuple[str, ...]] = ("signal",)

    signal: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cmd(Instruction):
    KIND: ClassVar[str] = "CMD"

    command: CommandLine

    @property
    def exec_form(self) -> bool:
        return isinstance(self.command, tuple)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entrypoint(Instruction):
    KIND: ClassVar[str] = "ENTRYPOINT"

    command: CommandLine

    @property
    def exec_form(self) -> bool:
        return isinstance(self.command, tuple)


@dataclass(frozen=True, slots=True, kw_only=True)
class Shell(Instruction):
    KIND: ClassVar[str] = "SHELL"

    shell: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Healthcheck(Instruction):
    """HEALTHCHECK NONE, or CMD with options. Durations are nanoseconds (image config units)."""

    KIND: ClassVar[str] = "HEALTHCHECK"

    kind: Literal["NONE", "CMD", "CMD-SHELL"]
    command: CommandLine | None = None  # None for NONE
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    start_interval: int | None = None
    retries: int | None = None

    @property
    def test(self) -> tuple[str, ...]:
        """The image config's Healthcheck.Test: ("NONE",), ("CMD", argv...), ("CMD-SHELL", cmd)."""
        if self.command is None:
            return ("NONE",)
        if isinstance(self.command, tuple):
            return ("CMD", *self.command)
        return ("CMD-SHELL", self.command)


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintainer(Instruction):
    KIND: ClassVar[str] = "MAINTAINER"

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Onbuild(Instruction):
    """ONBUILD <trigger>. ``expression`` is what goes into the image config's OnBuild list."""

    KIND: ClassVar[str] = "ONBUILD"

    trigger: Instruction  # parsed and validated now; expanded when a child image runs it
    expression: str


INSTRUCTION_TYPES: tuple[type[Instruction], ...] = (
    Add, Arg, Cmd, Copy, Entrypoint, Env, Expose, From, Healthcheck, Label, Maintainer, Onbuild,
    Run, Shell, StopSignal, User, Volume, Workdir)
BY_KIND: dict[str, type[Instruction]] = {t.KIND: t for t in INSTRUCTION_TYPES}


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """The ``# check=skip=A,B;error=true`` directive (BuildKit's build-check settings)."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False

    def enabled(self, rule: str) -> bool:
        return not self.skip_all and rule not in self.skip


@dataclass(frozen=True, slots=True)
class Directives:
    """Parser directives from the top of the file."""

    escape: str = "\\"
    syntax: str | None = None  # recorded; pybuild always uses its built-in frontend
    check: CheckConfig = field(default_factory=CheckConfig)
    spans: tuple[tuple[str, Span], ...] = ()  # (name, where) for each directive found


@dataclass(frozen=True, slots=True)
class LintWarning:
    """A build-check finding, named like BuildKit's rules (``JSONArgsRecommended``)."""

    rule: str
    message: str
    span: Span
    url: str = ""

    def __str__(self) -> str:
        return f"{self.span.filename}:{self.span.line}: {self.rule}: {self.message}"


@dataclass(frozen=True, slots=True)
class Stage:
    """A FROM line and the instructions up to the next FROM."""

    index: int
    from_: From
    instructions: tuple[Instruction, ...]

    @property
    def name(self) -> str | None:
        return self.from_.stage_name


@dataclass(frozen=True, slots=True)
class Dockerfile:
    filename: str
    directives: Directives
    instructions: tuple[Instruction, ...]  # file order, ARGs before the first FROM included
    warnings: tuple[LintWarning, ...] = ()

    @property
    def escape(self) -> str:
        return self.directives.escape

    @property
    def meta_args(self) -> tuple[Arg, ...]:
        """ARG instructions before the first FROM (usable in FROM lines)."""
        out: list[Arg] = []
        for ins in self.instructions:
            if isinstance(ins, From):
                break
            if isinstance(ins, Arg):
                out.append(ins)
        return tuple(out)

    @property
    def stages(self) -> tuple[Stage, ...]:
        stages: list[Stage] = []
        current: From | None = None
        body: list[Instruction] = []
        for ins in self.instructions:
            if isinstance(ins, From):
                if current is not None:
                    stages.append(Stage(len(stages), current, tuple(body)))
                current, body = ins, []
            elif current is not None:
                body.append(ins)
        if current is not None:
            stages.append(Stage(len(stages), current, tuple(body)))
        return tuple(stages)
