"""Word expansion (grammar.words) against BuildKit's shell-lexer tables and pybuild's own.

* ``envVarTest`` (single words) and ``wordsTest`` (field splitting), BuildKit's own data files,
  read as the upstream test does from their verbatim copies in testdata/buildkit-shell (checked
  against ../shared/conformance/dockerfile/shell when that is present); every case runs
  with the backslash escape and again with the backtick escape (the text with ``\\`` and
  ``` ` ``` swapped), since the escape token is the only thing ``# escape=`` changes.
* testdata/words.txt: pybuild's table, including the newer ``${V#p}`` ... ``${V//p/r}`` forms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from grammar import words
from grammar.errors import ExpansionError, ParseError
from tests.grammar._helpers import REPO_ROOT, TESTDATA

SHARED_SHELL = Path(os.environ.get("PYBUILD_CONFORMANCE_DIR",
                                   REPO_ROOT.parent / "shared" / "conformance" / "dockerfile")) / "shell"
SHELL = TESTDATA / "buildkit-shell"      # verbatim copies of SHARED_SHELL's tables (SOURCES.md)
_SWAP = str.maketrans({"\\": "`", "`": "\\"})


@dataclass(frozen=True)
class Case:
    source: str  # file:line, for the test id
    mode: str  # expand | words | heredoc
    text: str
    env: dict[str, str]
    expected: str | list[str] | None  # None: must fail
    error_part: str = ""
    escapes: tuple[str, ...] = ("\\", "`")


def _run(case: Case, escape: str) -> str | list[str]:
    text = case.text if escape == "\\" else case.text.translate(_SWAP)
    if case.mode == "words":
        return words.expand_words(text, case.env, escape=escape)
    if case.mode == "heredoc":
        return words.expand_heredoc(text, case.env, escape=escape)
    return words.expand(text, case.env, escape=escape)


def _check(case: Case, escape: str) -> None:
    if case.expected is None:
        with pytest.raises(ExpansionError) as info:
            _run(case, escape)
        assert case.error_part in str(info.value)
        assert isinstance(info.value, ParseError)
        return
    expected = case.expected
    if escape != "\\":
        expected = [w.translate(_SWAP) for w in expected] if isinstance(expected, list) \
            else expected.translate(_SWAP)
    assert _run(case, escape) == expected


# ---- BuildKit's tables ---------------------------------------------------------------------

def _env_var_cases() -> list[Case]:
    path = SHELL / "envVarTest"
    env = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        platform, text, expected = (part.strip() for part in line.split("|"))
        if platform == "W":  # Windows only (case-insensitive names)
            continue
        out.append(Case(f"envVarTest:{number}", "expand", text, env,
                        None if expected == "error" else expected))
    return out


def _words_cases() -> list[Case]:
    path = SHELL / "wordsTest"
    env: dict[str, str] = {}
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#"):
            continue
        if line.startswith("ENV "):
            name, _, value = line[4:].lstrip(" ").partition("=")
            env[name] = value
            continue
        text, expected = line.split("|")
        expected = expected.lstrip(" ")
        out.append(Case(f"wordsTest:{number}", "words", text.strip(), dict(env),
                        None if expected == "error" else expected.split(",")))
    return out


BUILDKIT = _env_var_cases() + _words_cases()


@pytest.mark.parametrize("escape", ["\\", "`"], ids=["backslash", "backtick"])
@pytest.mark.parametrize("case", BUILDKIT, ids=lambda c: c.source)
def test_buildkit_tables(case: Case, escape: str) -> None:
    _check(case, escape)


def test_buildkit_table_copies_match_the_shared_tree() -> None:
    if not SHARED_SHELL.is_dir():
        pytest.skip(f"no {SHARED_SHELL} to compare the copies in {SHELL} with (CI has no ../shared)")
    for name in ("envVarTest", "wordsTest", "envVarTest.json", "wordsTest.json"):
        assert (SHELL / name).read_bytes() == (SHARED_SHELL / name).read_bytes(), name


def test_buildkit_tables_are_complete() -> None:
    # 230 envVarTest cases (2 of them Windows-only) and 24 wordsTest cases, as the README counts
    env_cases = json.loads((SHELL / "envVarTest.json").read_text(encoding="utf-8"))["cases"]
    word_cases = json.loads((SHELL / "wordsTest.json").read_text(encoding="utf-8"))["cases"]
    assert len(_env_var_cases()) == sum(1 for c in env_cases if c["platform"] != "W")
    assert len(_words_cases()) == len(word_cases) == 24
    # and the JSON conversions agree with what was read from the text tables
    by_line = {int(c.source.split(":")[1]): c for c in _env_var_cases()}
    for c in env_cases:
        if c["platform"] != "W":
            assert by_line[c["line"]].text == c["input"]
            assert by_line[c["line"]].expected == (None if c.get("error") else c["expected"])


# ---- testdata/words.txt ------------------------------------------------------------------

def _decode(field: str) -> str:
    if field == "<empty>":
        return ""
    if field.startswith("json:"):
        value = json.loads(field[5:])
        assert isinstance(value, str)
        return value
    return field


def _table() -> list[Case]:
    out: list[Case] = []
    env: dict[str, str] = {}
    mode, escapes = "expand", ("\\", "`")
    path = TESTDATA / "words.txt"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("MODE "):
            mode = line[5:].strip()
        elif line.startswith("ESCAPE "):
            choice = line[7:].strip()
            escapes = ("\\", "`") if choice == "both" else (choice,)
        elif line.startswith("ENV "):
            name, _, value = line[4:].partition("=")
            env[name] = value
        elif line.strip() == "RESET":
            env = {}
        else:
            text, _, expected = line.partition("|")
            text, expected = _decode(text.strip()), expected.strip()
            source = f"words.txt:{number}"
            if expected == "error" or expected.startswith("error:"):
                out.append(Case(source, mode, text, dict(env), None, expected[6:].strip(), escapes))
            elif mode == "words":
                fields = [] if expected == "<empty>" else [_decode(w) for w in expected.split(" , ")]
                out.append(Case(source, mode, text, dict(env), fields, escapes=escapes))
            else:
                out.append(Case(source, mode, text, dict(env), _decode(expected), escapes=escapes))
    return out


TABLE = _table()
OWN = [(case, escape) for case in TABLE for escape in case.escapes]


@pytest.mark.parametrize(("case", "escape"), OWN,
                         ids=[f"{c.source}-{'bs' if e == chr(92) else 'bt'}" for c, e in OWN])
def test_own_table(case: Case, escape: str) -> None:
    if escape == "`" and case.escapes == ("`",):
        # a backtick-only line is written for the backtick escape already
        case = Case(case.source, case.mode, case.text.translate(_SWAP), case.env,
                    case.expected if not isinstance(case.expected, str) else case.expected.translate(_SWAP),
                    case.error_part, case.escapes)
    _check(case, escape)


def test_own_table_covers_the_newer_forms() -> None:
    texts = " ".join(c.text for c in TABLE)
    for form in ("${FILE#", "${FILE##", "${FILE%", "${FILE%%", "${X/", "${X//"):
        assert form in texts


# ---- the API beyond the tables -------------------------------------------------------------

def test_process_reports_matched_and_unmatched_names() -> None:
    result = words.process("${A}-${B:-$C}-$D", {"A": "1", "C": "3"})
    assert result.value == "1-3-"
    assert result.matched == {"A", "C"}
    assert result.unmatched == {"B", "D"}


def test_referenced_lists_every_name_without_an_env() -> None:
    assert words.referenced("$A ${B:-${C}} '$D' \\$E ${F:?x}") == {"A", "B", "C", "F"}


def test_expansion_error_carries_the_reason_and_the_word() -> None:
    with pytest.raises(ExpansionError) as info:
        words.expand("x${NEEDED:?set it}", {})
    assert info.value.reason == "NEEDED: set it"
    assert info.value.word == "x${NEEDED:?set it}"
    assert info.value.message == 'failed to process "x${NEEDED:?set it}": NEEDED: set it'
    located = info.value.located(filename="Dockerfile", line=3, column=5, excerpt="ENV A=x${NEEDED:?set it}")
    assert str(located).startswith("Dockerfile:3:5: failed to process")


def test_keep_options() -> None:
    assert words.process("'a' \"b\" $U", {}, keep_quotes=True, keep_unset=True).value == "'a' \"b\" $U"
    assert words.process("a\\ b", {}, keep_escapes=True).value == "a\\ b"
    assert words.expand_heredoc("say '$X'", {"X": "hi"}) == "say 'hi'"
