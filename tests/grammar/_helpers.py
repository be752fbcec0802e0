"""Shared bits of the grammar tests: paths, golden-file handling, the error rendering."""

from __future__ import annotations

import os
from pathlib import Path

import grammar

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTDATA = REPO_ROOT / "testdata"
UPDATE = bool(os.environ.get("PYBUILD_UPDATE_GOLDEN"))


def rendered(exc: grammar.ParseError) -> str:
    """The golden form of an error: the CLI's rendering plus its hint."""
    text = exc.render()
    if exc.hint:
        text += f"\nhint: {exc.hint}"
    return text + "\n"


def check_golden(path: Path, got: str) -> None:
    """Compare with (or, under PYBUILD_UPDATE_GOLDEN=1, rewrite) a golden file."""
    if UPDATE:
        path.write_text(got, encoding="utf-8", newline="")
    assert path.exists(), f"{path} is missing: run with PYBUILD_UPDATE_GOLDEN=1 and review it"
    assert got == path.read_text(encoding="utf-8")
