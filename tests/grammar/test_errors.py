"""Every error message, golden: testdata/parser-errors/<case>/{Dockerfile,error.txt}.

error.txt is what the CLI prints: ``Dockerfile:LINE:COL: message``, the line with a caret,
and the hint. Errors that BuildKit's *parser* raises must also come out of the JSON export
(``pybuild parse --json``) with the same message; instruction-level errors must not (BuildKit's
parser accepts those files, its instruction layer rejects them).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import grammar
from tests.grammar._helpers import TESTDATA, check_golden, rendered

CASES = sorted(p for p in (TESTDATA / "parser-errors").iterdir() if (p / "Dockerfile").is_file())
_WHERE = re.compile(r"Dockerfile(?::(\d+))?(?::(\d+))?: ")
PARSER_LEVEL = {
    "empty-file", "only-comments", "env-without-value", "label-without-value", "env-missing-equals",
    "label-missing-equals", "json-not-strings", "json-number", "unterminated-heredoc",
    "unterminated-heredoc-second", "invalid-escape-token", "duplicate-escape-directive",
    "duplicate-syntax-directive", "line-too-long",
}


def _error(case: Path) -> grammar.ParseError:
    with pytest.raises(grammar.ParseError) as info:
        grammar.parse((case / "Dockerfile").read_bytes(), filename="Dockerfile")
    return info.value


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_error_golden(case: Path) -> None:
    exc = _error(case)
    text = rendered(exc)
    check_golden(case / "error.txt", text)
    match = _WHERE.match(text)
    assert match, text
    # the location in the message is the exception's own (line and column checked)
    assert int(match.group(1) or 0) == exc.line
    assert int(match.group(2) or 0) == exc.column
    if exc.line:
        lines = (case / "Dockerfile").read_bytes().decode().split("\n")
        assert exc.excerpt == lines[exc.line - 1].rstrip("\r")
    assert "Traceback" not in text


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_parser_level_errors_reach_the_json_export(case: Path) -> None:
    source = (case / "Dockerfile").read_bytes()
    if case.name in PARSER_LEVEL:
        with pytest.raises(grammar.ParseError) as info:
            grammar.to_buildkit_json(source)
        assert info.value.message == _error(case).message
    else:
        assert isinstance(grammar.to_buildkit_json(source), list)


def test_every_case_listed_as_parser_level_exists() -> None:
    assert {case.name for case in CASES} >= PARSER_LEVEL
