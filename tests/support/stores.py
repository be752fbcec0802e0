"""Fixtures for local stores: a fresh DirStore per test and an in-process CLI runner."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.store import DirStore


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], *, root: Path | None = None, stdin: bytes | None = None) -> CliResult:
    """Run `pybuild ARGS` in-process and capture its exit code, stdout and stderr."""
    from builder.cli import main

    argv = (["--root", str(root)] if root is not None else []) + list(args)
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
    finally:
        sys.stdin = old_stdin
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DirStore]:
    yield DirStore(tmp_path / "store")


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`cli("images", "-q")` runs pybuild in-process against a per-test store."""
    root = tmp_path / "store"

    def _run(*args: str, stdin: bytes | None = None) -> CliResult:
        return run_cli(list(args), root=root, stdin=stdin)

    _run.root = root  # type: ignore[attr-defined]
    return _run
