"""The typed AST and the public API the builder relies on (grammar/__init__.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import grammar
from grammar import ast, lint
from grammar.instructions import go_duration
from tests.grammar._helpers import REPO_ROOT, TESTDATA


def parse(text: str) -> ast.Dockerfile:
    return grammar.parse(text, filename="Dockerfile")


def only(df: ast.Dockerfile, kind: type[ast.Instruction]) -> list[ast.Instruction]:
    return [i for i in df.instructions if isinstance(i, kind)]


def test_stages_meta_args_and_spans() -> None:
    df = parse("ARG A=1\nARG B\n\nFROM x:$A AS one\nRUN a \\\n  b\nFROM one\n  USER u\n")
    assert [a.args for a in df.meta_args] == [(("A", "1"),), (("B", None),)]
    assert [s.name for s in df.stages] == ["one", None]
    assert [len(s.instructions) for s in df.stages] == [1, 1]
    run = df.stages[0].instructions[0]
    assert run.span == ast.Span("Dockerfile", 5, 1, 6)
    assert isinstance(run, ast.Run) and run.command == "a   b" and not run.exec_form
    assert df.instructions[-1].span.column == 3  # indented keyword
    assert df.escape == "\\"


def test_run_exec_form_mounts_and_modes() -> None:
    df = parse('FROM x\nRUN --mount=type=cache,target=/c,id=$ID --network=none ["make", "all"]\n')
    (run,) = only(df, ast.Run)
    assert isinstance(run, ast.Run)
    assert run.command == ("make", "all") and run.exec_form
    assert run.network == "none" and run.security is None
    (mount,) = run.mounts
    assert (mount.type, mount.target, mount.id, mount.readonly) == ("cache", "/c", "$ID", False)
    assert mount.deferred == ("id",)
    final = grammar.parse_mount(mount.raw, expand=lambda w: w.replace("$ID", "gomod"))
    assert (final.id, final.deferred) == ("gomod", ())
    assert [f.name for f in run.flags] == ["mount", "network"]
    assert run.flag("network") is not None and run.flag("network").value == "none"  # type: ignore[union-attr]


def test_copy_sources_heredocs_and_flags() -> None:
    df = parse("FROM x\nCOPY --from=build --link --exclude=a --exclude=b <<-'A' src/ /dst/\n\tone\n\tA\n")
    (copy,) = only(df, ast.Copy)
    assert isinstance(copy, ast.Copy)
    assert copy.sources == ("src/",) and copy.dest == "/dst/"
    assert (copy.from_, copy.link, copy.exclude, copy.parents) == ("build", True, ("a", "b"), False)
    (inline,) = copy.inline_sources
    assert (inline.name, inline.content, inline.data) == ("A", "\tone\n", "one\n")
    assert inline.chomp and not inline.expand
    assert inline.span.end_line == 4


def test_env_label_arg_keep_words_as_written() -> None:
    df = parse('FROM x\nENV A="a b" B=$A\nLABEL k=v\nARG N=\'q\' M\nENV OLD the rest\n')
    env, label, arg, old = df.instructions[1:]
    assert isinstance(env, ast.Env) and env.pairs == (("A", '"a b"'), ("B", "$A")) and not env.legacy
    assert isinstance(label, ast.Label) and label.pairs == (("k", "v"),)
    assert isinstance(arg, ast.Arg) and arg.args == (("N", "'q'"), ("M", None))
    assert isinstance(old, ast.Env) and old.legacy and old.pairs == (("OLD", "the rest"),)
    assert grammar.words.expand(env.pairs[0][1], {}) == "a b"


def test_healthcheck_options_and_test() -> None:
    df = parse("FROM x\nHEALTHCHECK --interval=1m30s --retries=2 CMD curl -f localhost\n"
               "FROM y\nHEALTHCHECK NONE\nFROM z\nHEALTHCHECK CMD [\"true\"]\n")
    a, b, c = only(df, ast.Healthcheck)
    assert all(isinstance(h, ast.Healthcheck) for h in (a, b, c))
    assert (a.kind, a.interval, a.retries, a.timeout) == ("CMD-SHELL", 90 * 10**9, 2, None)
    assert a.test == ("CMD-SHELL", "curl -f localhost")
    assert b.test == ("NONE",) and c.test == ("CMD", "true")


def test_onbuild_trigger_is_typed_and_expression_kept() -> None:
    df = parse("FROM x\nONBUILD COPY --chown=a . /src\nONBUILD RUN <<EOF\nmake\nEOF\n")
    first, second = only(df, ast.Onbuild)
    assert isinstance(first, ast.Onbuild) and isinstance(second, ast.Onbuild)
    assert isinstance(first.trigger, ast.Copy) and first.trigger.chown == "a"
    assert first.expression == "COPY --chown=a . /src"
    assert first.trigger.span.column == 9
    assert isinstance(second.trigger, ast.Run) and second.trigger.heredocs[0].content == "make\n"
    assert second.expression == "RUN <<EOF\nmake\nEOF"


def test_keywords_any_case_bytes_crlf_and_bom() -> None:
    text = "\ufefffrom x\r\nrUn echo hi\r\n"
    df = grammar.parse(text.encode())
    assert df == grammar.parse(text)
    run = df.instructions[1]
    assert isinstance(run, ast.Run) and run.keyword == "rUn" and run.command == "echo hi"


def test_expands_words_matches_the_classes() -> None:
    for kind in ast.INSTRUCTION_TYPES:
        expected = kind.KIND in grammar.EXPANDING_INSTRUCTIONS
        assert grammar.expands_words(kind) == kind.EXPANDS_WORDS == expected
    assert grammar.expands_words("copy") and not grammar.expands_words("RUN")
    assert {t.KIND for t in ast.INSTRUCTION_TYPES if t.EXPANDS_WORDS} == {
        "FROM", "ARG", "ENV", "LABEL", "ADD", "COPY", "WORKDIR", "EXPOSE", "VOLUME", "USER", "STOPSIGNAL"}


def test_expanded_fields_name_real_fields() -> None:
    for kind in ast.INSTRUCTION_TYPES:
        names = {f.name for f in dataclasses.fields(kind)}
        assert set(kind.EXPANDED_FIELDS) <= names, kind


def _walk(value: object) -> list[object]:
    out = [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            out += _walk(getattr(value, f.name))
    elif isinstance(value, tuple | list | frozenset):
        for item in value:
            out += _walk(item)
    return out


@pytest.mark.parametrize("case", sorted(p for p in (TESTDATA / "parser").iterdir() if p.is_dir()),
                         ids=lambda p: p.name)
def test_no_lark_type_escapes(case: Path) -> None:
    try:
        df = grammar.parse((case / "Dockerfile").read_bytes())
    except grammar.ParseError:
        return
    for value in _walk(df):
        assert not type(value).__module__.startswith("lark"), (case.name, type(value))
        if isinstance(value, str):
            assert type(value) is str  # not a lark Token (a str subclass)


def test_lint_rules_and_check_directive() -> None:
    df = parse("FROM x AS a\nMAINTAINER me\nCMD run me\nFROM y as a\n")
    assert [w.rule for w in df.warnings] == ["MaintainerDeprecated", "JSONArgsRecommended",
                                             "DuplicateStageName", "FromAsCasing"]
    assert all(w.url.startswith("https://docs.docker.com/go/dockerfile/rule/") for w in df.warnings)
    assert df.warnings[0].span.line == 2
    quiet = parse("# check=skip=MaintainerDeprecated,FromAsCasing;error=true\nFROM x AS a\nMAINTAINER me\n")
    assert quiet.warnings == () and quiet.directives.check.error
    assert parse("# check=skip=all\nFROM x\nMAINTAINER me\n").warnings == ()


def test_undefined_vars_with_known_base_env() -> None:
    df = parse("FROM base AS b\nENV HOME_DIR=$HOME/x\nWORKDIR $HOM\nFROM b\nUSER $HOME_DIR\n")
    assert not [w for w in df.warnings if w.rule == "UndefinedVar"]  # base env unknown at parse time
    found = lint.undefined_vars(df, base_env=lambda stage: {"HOME": "/root"})
    assert [(w.span.line, w.message) for w in found] == [
        (3, "usage of undefined variable '$HOM' (did you mean $HOME?)")]


def test_errors_carry_location_and_hint() -> None:
    with pytest.raises(grammar.InstructionError) as info:
        grammar.parse("FROM x\nCOPY --chmod=644 --chwon=a b c\n", filename="sub/Containerfile")
    err = info.value
    assert (err.filename, err.line, err.column) == ("sub/Containerfile", 2, 18)
    assert err.hint == "did you mean --chown?"
    assert err.message == "unknown flag: chwon"
    assert str(err) == "sub/Containerfile:2:18: unknown flag: chwon"
    assert err.render().splitlines()[1:] == ["   2 | COPY --chmod=644 --chwon=a b c",
                                             "     |                  ^"]
    assert isinstance(err, grammar.ParseError) and err.exit_code == 1


@pytest.mark.parametrize(("text", "ns"), [("0", 0), ("1ns", 1), ("1.5s", 1_500_000_000),
                                          ("1h2m3s", 3723 * 10**9),
                                          ("-2ms", -2_000_000), (".5us", 500), ("1µs", 1000)])
def test_go_duration(text: str, ns: int) -> None:
    assert go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1.s.", "+"])
def test_go_duration_errors(text: str) -> None:
    with pytest.raises(ValueError, match="^time: "):
        go_duration(text)


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, check=False)


def test_import_grammar_stays_light() -> None:
    proc = _python("import sys, grammar, grammar.errors; print('lark' in sys.modules)")
    assert proc.stdout.strip() == "False", proc.stderr


def test_grammar_cache_is_written_and_reused(tmp_path: Path) -> None:
    code = "import grammar; grammar.parse('FROM x\\n')"
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert _python(code, env).returncode == 0
    files = sorted(p.name for p in (tmp_path / "pybuild").iterdir())
    assert any(name.startswith("dockerfile-lalr-") and name.endswith(".cache") for name in files), files
    assert _python(code, env).returncode == 0  # and loads from it


def test_unusable_cache_dir_falls_back_to_no_cache(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    proc = _python("import grammar; print(len(grammar.parse('FROM x\\n').instructions))",
                   {"XDG_CACHE_HOME": str(not_a_dir)})
    assert proc.stdout.strip() == "1", proc.stderr
