"""grammar: the Dockerfile language as BuildKit reads it (lark grammar, typed AST, word expansion,
errors). Public surface: parse, dump, to_buildkit_json, parse_mount, expands_words /
EXPANDING_INSTRUCTIONS, words, lint.undefined_vars, ParseError (detailed below). No I/O and no other
pybuild package; lark only, imported on the first parse (``import grammar`` stays light)."""

# parse(text, *, filename="Dockerfile") -> ast.Dockerfile
#     text is str or bytes. Raises ParseError (.filename .line .column .excerpt .hint; .message is
#     BuildKit's wording; .render() adds the line and a caret). The Dockerfile has directives (escape,
#     syntax, check), instructions (typed frozen dataclasses in file order, ARGs before the first FROM
#     included, each with span, keyword as spelled, original and raw flags), warnings
#     (ast.LintWarning: BuildKit rule name, message, span), and stages/meta_args.
# dump(df) -> str: the stable text form of the AST (testdata/parser/*/ast.txt).
# to_buildkit_json(text, *, filename) -> list[dict]: BuildKit's parse tree (before instruction
#     validation) as conformance records: cmd, sub_cmd, json, original, start_line, end_line, flags,
#     value, heredocs. Unknown keywords and flags are accepted here, as in BuildKit's parser.
# words: expand(word, env, escape=), expand_words, expand_heredoc, process (-> Expansion with
#     matched/unmatched names), referenced.
# expands_words(x) / EXPANDING_INSTRUCTIONS: which instructions expand $VAR (the builder does it).
# parse_mount(spec, *, expand=None) -> ast.Mount: a RUN --mount spec, values expanded first if asked.
# lint.undefined_vars(df, base_env=...): the UndefinedVar check once base environments are known.

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from grammar.errors import DirectiveError, ExpansionError, InstructionError, ParseError

if TYPE_CHECKING:
    from grammar import ast, lint, words
    from grammar.ast import Dockerfile, Instruction, Mount

__all__ = ["EXPANDING_INSTRUCTIONS", "DirectiveError", "ExpansionError", "InstructionError", "ParseError",
           "ast", "dump", "expands_words", "lint", "parse", "parse_mount", "to_buildkit_json", "words"]
_SUBMODULES = ("ast", "lint", "words")


def __getattr__(name: str) -> ModuleType:
    """``grammar.ast``, ``grammar.words`` and ``grammar.lint`` load on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"grammar.{name}")
    raise AttributeError(f"module 'grammar' has no attribute {name!r}")

# Instructions whose words the builder expands with the current ARG/ENV values. RUN, CMD,
# ENTRYPOINT, SHELL and HEALTHCHECK leave $VAR to the shell; MAINTAINER is taken as is;
# ONBUILD stores its trigger unexpanded, and the trigger expands when a child image runs it.
EXPANDING_INSTRUCTIONS = frozenset({"FROM", "ARG", "ENV", "LABEL", "ADD", "COPY", "WORKDIR", "EXPOSE",
                                    "VOLUME", "USER", "STOPSIGNAL"})


def parse(text: str | bytes, *, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile into the typed AST, with BuildKit's checks; raises ParseError."""
    from dataclasses import replace

    from grammar import lint
    from grammar._scan import parse_tree
    from grammar.ast import Dockerfile
    from grammar.instructions import build

    tree = parse_tree(text, filename)
    directives, instructions = build(tree)
    df = Dockerfile(filename=filename, directives=directives, instructions=instructions)
    return replace(df, warnings=lint.check(df, tree))


def dump(df: Dockerfile, *, warnings: bool = True) -> str:
    """The stable text form of ``df`` (one line per instruction, nested parts indented)."""
    from grammar.export import dump as _dump

    return _dump(df, warnings=warnings)


def to_buildkit_json(text: str | bytes, *, filename: str = "Dockerfile") -> list[dict[str, Any]]:
    """BuildKit's parse tree as JSON-ready records; raises ParseError for what its parser
    rejects (``.message`` is BuildKit's exact text)."""
    from grammar._scan import parse_tree
    from grammar.export import records

    return records(parse_tree(text, filename))


def expands_words(item: str | Instruction | type[Instruction]) -> bool:
    """Whether an instruction (a keyword, an instance or a class) expands ``$VAR`` itself."""
    kind = item.upper() if isinstance(item, str) else item.KIND
    return kind in EXPANDING_INSTRUCTIONS


def parse_mount(spec: str, *, expand: Callable[[str], str] | None = None) -> Mount:
    """A ``RUN --mount=`` value as a Mount; raises ParseError (no location)."""
    from grammar.instructions import parse_mount as _parse_mount

    return _parse_mount(spec, expand=expand)
