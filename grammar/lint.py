"""Build checks named after BuildKit's rules, each with a Span: ``check(df, tree)`` needs only the
Dockerfile (run by grammar.parse); ``undefined_vars(df, base_env=...)`` needs each stage's base env
(parse runs it where that is known offline, the builder again with real images). ``# check=skip=``
is honoured by both. Imports grammar (ast, errors, instructions, words)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from grammar import ast, words
from grammar.errors import ExpansionError
from grammar.instructions import suggest

if TYPE_CHECKING:
    from grammar._scan import Tree

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# ARGs that BuildKit defines for every build (usable in FROM without a declaration)
PLATFORM_ARGS = frozenset({"BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT", "TARGETPLATFORM",
                           "TARGETOS", "TARGETARCH", "TARGETVARIANT", "TARGETSTAGE"})
RESERVED_STAGE_NAMES = frozenset({"scratch", "context"})
_WINDOWS_ABS = re.compile(r"[A-Za-z]:[\\/]")
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:apikey|auth|credentials?|key|password|pword|passwd|secret|token)(?:_|$)", re.I)
_SECRET_EXCEPTIONS = re.compile(r"(?:^|_)(?:public|file|path|dir|url|id|name|type)(?:_|$)", re.I)


def _url(rule: str) -> str:
    kebab = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", rule).lower()
    return f"https://docs.docker.com/go/dockerfile/rule/{kebab}/"


def _warn(rule: str, message: str, span: ast.Span) -> ast.LintWarning:
    return ast.LintWarning(rule=rule, message=message, span=span, url=_url(rule))


def check(df: ast.Dockerfile, tree: Tree) -> tuple[ast.LintWarning, ...]:
    """All parse-time checks, filtered by ``# check=skip=``, in file order."""
    found = list(_static_checks(df, tree))
    found += undefined_vars(df, base_env=_known_base_env, _filter=False)
    found.sort(key=lambda w: (w.span.line, w.span.column, w.rule))
    return tuple(w for w in found if df.directives.check.enabled(w.rule))


def _static_checks(df: ast.Dockerfile, tree: Tree) -> Iterator[ast.LintWarning]:
    directives = dict(df.directives.spans)
    if df.directives.syntax is not None:
        yield _warn("SyntaxDirectiveIgnored",
                    f"the syntax directive ({df.directives.syntax}) is recorded but ignored: pybuild "
                    "always uses its built-in Dockerfile frontend", directives["syntax"])
    for node, ins in zip(tree.nodes, df.instructions, strict=True):
        if node.empty_continuation:
            yield _warn("NoEmptyContinuation", "empty continuation line (it will become an error in a "
                        "future release): remove the blank line or end the previous line", ins.span)
    yield from _casing(df)
    names: dict[str, ast.From] = {}
    for stage in df.stages:
        frm = stage.from_
        if frm.stage_name is not None and frm.as_keyword is not None:
            written = frm.original.split()[-1] if frm.original.split() else frm.stage_name
            if _case(frm.keyword) and _case(frm.as_keyword) and _case(frm.keyword) != _case(frm.as_keyword):
                yield _warn("FromAsCasing", f"'{frm.as_keyword}' and '{frm.keyword}' keywords' casing do "
                            "not match", frm.span)
            if written != written.lower():
                yield _warn("StageNameCasing", f"stage name '{written}' should be lowercase", frm.span)
            if frm.stage_name in RESERVED_STAGE_NAMES:
                yield _warn("ReservedStageName", f"stage name should not use the same name as reserved "
                            f"stage '{frm.stage_name}'", frm.span)
            if frm.stage_name in names:
                first = names[frm.stage_name]
                yield _warn("DuplicateStageName", f"duplicate stage name '{frm.stage_name}' (first defined "
                            f"at line {first.span.line}), stage names should be unique", frm.span)
            else:
                names[frm.stage_name] = frm
        yield from _stage_checks(stage)
    for ins in df.instructions:
        if isinstance(ins, ast.Maintainer):
            yield _warn("MaintainerDeprecated", "MAINTAINER is deprecated: use "
                        'LABEL org.opencontainers.image.authors="..." instead', ins.span)
        if isinstance(ins, ast.Env | ast.Label) and ins.legacy:
            yield _warn("LegacyKeyValueFormat", f'"{ins.KIND} key=value" should be used instead of the '
                        f'legacy "{ins.KIND} key value" format', ins.span)
        if isinstance(ins, ast.Arg | ast.Env):
            pairs: Iterable[tuple[str, object]] = ins.args if isinstance(ins, ast.Arg) else ins.pairs
            for name, _ in pairs:
                if _SECRET_NAME.search(name) and not _SECRET_EXCEPTIONS.search(name):
                    yield _warn("SecretsUsedInArgOrEnv", f"do not use ARG or ENV for sensitive data "
                                f"({ins.KIND} \"{name}\"): use RUN --mount=type=secret", ins.span)
    yield from _undefined_args_in_from(df)


def _case(word: str) -> str:
    if word.isupper():
        return "upper"
    if word.islower():
        return "lower"
    return ""


def _casing(df: ast.Dockerfile) -> Iterator[ast.LintWarning]:
    """Keywords should be all upper or all lower case, like the majority (ARGs before the
    first FROM are not counted, as in BuildKit)."""
    stage_ins = [ins for stage in df.stages for ins in (stage.from_, *stage.instructions)]
    upper = sum(1 for i in stage_ins if _case(i.keyword) == "upper")
    lower = sum(1 for i in stage_ins if _case(i.keyword) == "lower")
    majority = "lowercase" if lower > upper else "uppercase"
    for ins in stage_ins:
        wanted = ins.keyword.lower() if majority == "lowercase" else ins.keyword.upper()
        if ins.keyword != wanted:
            yield _warn("ConsistentInstructionCasing", f"command '{ins.keyword}' should match the case of "
                        f"the command majority ({majority})", ins.span)


def _stage_checks(stage: ast.Stage) -> Iterator[ast.LintWarning]:
    last: dict[str, ast.Instruction] = {}
    shell_set = False
    absolute_workdir = False
    for ins in stage.instructions:
        if isinstance(ins, ast.Shell):
            shell_set = True
        if isinstance(ins, ast.Cmd | ast.Entrypoint) and not ins.exec_form and ins.command and not shell_set:
            yield _warn("JSONArgsRecommended", f"JSON arguments recommended for {ins.KIND} to prevent "
                        "unintended behavior related to OS signals: "
                        f'{ins.KIND} ["executable", "param"]', ins.span)
        if isinstance(ins, ast.Cmd | ast.Entrypoint | ast.Healthcheck):
            if ins.KIND in last:
                yield _warn("MultipleInstructionsDisallowed", f"multiple {ins.KIND} instructions should not "
                            "be used in the same stage because only the last one will be used (this one "
                            f"is overridden at line {ins.span.line})", last[ins.KIND].span)
            last[ins.KIND] = ins
        if isinstance(ins, ast.Workdir):
            if ins.path.startswith(("/", "$", "\\")) or _WINDOWS_ABS.match(ins.path):
                absolute_workdir = True
            elif not absolute_workdir:
                yield _warn("WorkdirRelativePath", f"relative workdir '{ins.path}' can have unexpected "
                            "results if the base image changes", ins.span)


def _undefined_args_in_from(df: ast.Dockerfile) -> Iterator[ast.LintWarning]:
    declared = set(PLATFORM_ARGS)
    declared.update(name for arg in df.meta_args for name, _ in arg.args)
    for ins in df.instructions:
        if isinstance(ins, ast.From):
            for field in (ins.image, ins.platform):
                if not field:
                    continue
                for name in sorted(_referenced(field, df.escape)):
                    if name not in declared:
                        guess = suggest(name, sorted(declared), fold=False)
                        extra = f" (did you mean {guess}?)" if guess else ""
                        yield _warn("UndefinedArgInFrom", f"FROM argument '{name}' is not declared{extra}",
                                    ins.span)


def _referenced(text: str, escape: str) -> frozenset[str]:
    try:
        return words.referenced(text, escape=escape)
    except ExpansionError:
        return frozenset()


def _known_base_env(stage: ast.Stage) -> Mapping[str, str] | None:
    """Base env of a stage when it is known without a registry: scratch only."""
    return {"PATH": DEFAULT_PATH} if stage.from_.image == "scratch" else None


def _expanded_texts(ins: ast.Instruction) -> Iterator[str]:
    """The raw words of ``ins`` that the builder expands (its EXPANDED_FIELDS)."""
    for name in ins.EXPANDED_FIELDS:
        value = getattr(ins, name)
        if value is None:
            continue
        if isinstance(value, str):
            yield value
        elif name == "mounts":
            for mount in value:
                yield mount.raw
        else:
            for item in value:
                if isinstance(item, tuple):
                    yield from (part for part in item if part is not None)
                else:
                    yield item


def undefined_vars(df: ast.Dockerfile, *, base_env: Callable[[ast.Stage], Mapping[str, str] | None],
                   _filter: bool = True) -> list[ast.LintWarning]:
    """UndefinedVar: a word uses a variable that no ARG, ENV or base image defines.

    ``base_env(stage)`` returns the base image's environment, or None when unknown (the
    stage is then skipped). A stage built FROM an earlier stage inherits that stage's ENV;
    an ARG is known once declared in the stage (build args alone do not count, as in BuildKit).
    """
    found: list[ast.LintWarning] = []
    stage_env: dict[str, dict[str, str] | None] = {}
    for stage in df.stages:
        parent = stage_env.get(stage.from_.image.lower())
        env: dict[str, str] | None
        if parent is not None:
            env = dict(parent)
        else:
            base = base_env(stage)
            env = dict(base) if base is not None else None
        if env is not None:
            found += _stage_undefined(stage, env, df.escape)
        if stage.name:
            stage_env[stage.name] = env
    if _filter:
        found = [w for w in found if df.directives.check.enabled(w.rule)]
    return found


def _stage_undefined(stage: ast.Stage, env: dict[str, str], escape: str) -> list[ast.LintWarning]:
    found: list[ast.LintWarning] = []
    args: set[str] = set()
    for ins in stage.instructions:
        known = set(env) | args
        reported: set[str] = set()
        for text in _expanded_texts(ins):
            for name in sorted(_referenced(text, escape)):
                if name in known or name in reported or not (name[0].isalpha() or name[0] == "_"):
                    continue
                reported.add(name)
                guess = suggest(name, sorted(known), fold=False)
                extra = f" (did you mean ${guess}?)" if guess else ""
                found.append(_warn("UndefinedVar", f"usage of undefined variable '${name}'{extra}", ins.span))
        if isinstance(ins, ast.Arg):
            args.update(name for name, _ in ins.args)
        elif isinstance(ins, ast.Env):
            for key, value in ins.pairs:
                env[key] = value
    return found
