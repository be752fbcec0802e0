"""Shared helpers for builder tests: write a context, build in-process, read the last record."""

from __future__ import annotations

from pathlib import Path

from builder.records import BuildRecord, Records
from registry.store import DirStore
from tests.support.stores import CliResult, run_cli


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def build(store_root: Path, context: Path, *args: str) -> CliResult:
    result = run_cli(["build", "--progress", "plain", *args, str(context)], root=store_root)
    return result


def must_build(store_root: Path, context: Path, *args: str) -> tuple[str, BuildRecord]:
    result = build(store_root, context, *args)
    assert result.code == 0, result.stderr
    image_id = result.stdout.strip().splitlines()[-1]
    assert image_id.startswith("sha256:"), result.stdout
    rec = Records(DirStore(store_root)).last()
    assert rec is not None
    return image_id, rec


def statuses(rec: BuildRecord) -> list[tuple[str, str]]:
    """(status, instruction) of every step that has a cache key (not FROM/metadata)."""
    return [(s.status, s.instruction) for s in rec.steps if s.status in ("RAN", "CACHED", "FAILED")
            and not s.instruction.upper().startswith("FROM")]


def ran(rec: BuildRecord) -> list[str]:
    return [s.instruction for s in rec.steps if s.status == "RAN"]
