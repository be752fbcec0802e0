"""Golden parses: testdata/parser/<case>/Dockerfile -> grammar.dump() == ast.txt (DESIGN C13).

A case whose Dockerfile BuildKit rejects keeps the rendered error in ast.txt instead.
Regenerate after a deliberate change with PYBUILD_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import grammar
from tests.grammar._helpers import TESTDATA, check_golden, rendered

CASES = sorted(p for p in (TESTDATA / "parser").iterdir() if (p / "Dockerfile").is_file())


def _dump(case: Path) -> str:
    try:
        return grammar.dump(grammar.parse((case / "Dockerfile").read_bytes(), filename="Dockerfile"))
    except grammar.ParseError as exc:
        return "error: " + rendered(exc)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_parse_golden(case: Path) -> None:
    check_golden(case / "ast.txt", _dump(case))


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 20
