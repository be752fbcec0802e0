"""`pybuild parse [--json] PATH`: the readable listing, BuildKit's parse tree as JSON, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grammar
from tests.cli.test_import_weight import HEAVY, _loaded
from tests.grammar._helpers import REPO_ROOT, TESTDATA
from tests.support.stores import run_cli

GOOD = "FROM alpine AS build\nRUN echo hi\nMAINTAINER me\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return path


def test_help_imports_nothing_heavy() -> None:
    loaded = _loaded(["parse", "--help"])
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_help_works(tmp_path: Path) -> None:
    r = run_cli(["parse", "--help"], root=tmp_path)
    assert r.code == 0 and "--json" in r.stdout and "PATH" in r.stdout


def test_readable_listing_and_warnings(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    r = run_cli(["parse", str(path)], root=tmp_path)
    assert r.code == 0, r.stderr
    df = grammar.parse(GOOD, filename=str(path))
    assert r.stdout == grammar.dump(df, warnings=False)
    assert "warning: " in r.stderr and "MaintainerDeprecated" in r.stderr
    assert "3:1-3 MAINTAINER" in r.stdout


def test_json_is_buildkits_parse_tree(tmp_path: Path) -> None:
    case = TESTDATA / "parser" / "heredocs" / "Dockerfile"
    r = run_cli(["parse", "--json", str(case)], root=tmp_path)
    assert r.code == 0, r.stderr
    records = json.loads(r.stdout)
    assert records == json.loads((case.parent / "Dockerfile.expected.json").read_text())
    assert list(records[0]) == ["cmd", "sub_cmd", "json", "original", "start_line", "end_line", "flags",
                                "value", "heredocs"]


def test_json_accepts_what_only_the_instruction_layer_rejects(tmp_path: Path) -> None:
    path = _write(tmp_path, "FROM x\nRUNN echo\nCOPY --bogus a b\n")
    r = run_cli(["parse", "--json", str(path)], root=tmp_path)
    assert r.code == 0 and [rec["cmd"] for rec in json.loads(r.stdout)] == ["FROM", "RUNN", "COPY"]
    r = run_cli(["parse", str(path)], root=tmp_path)
    assert r.code == 1
    assert r.stderr.startswith(f"error: {path}:2:1: unknown instruction: RUNN\n")
    assert "hint: did you mean RUN?" in r.stderr and r.stdout == ""


def test_parse_error_json_and_exit_code(tmp_path: Path) -> None:
    path = _write(tmp_path, "FROM x\nENV ONLYKEY\n")
    r = run_cli(["parse", "--json", str(path)], root=tmp_path)
    assert r.code == 1
    assert json.loads(r.stdout) == {"error": "ENV must have two arguments", "file": str(path), "line": 2,
                                    "column": 1}
    assert f"error: {path}:2:1: ENV must have two arguments" in r.stderr
    assert "   2 | ENV ONLYKEY\n" in r.stderr and "Traceback" not in r.stderr


def test_stdin(tmp_path: Path) -> None:
    r = run_cli(["parse", "--json", "-"], root=tmp_path, stdin=GOOD.encode())
    assert r.code == 0 and len(json.loads(r.stdout)) == 3
    r = run_cli(["parse", "-"], root=tmp_path, stdin=b"FROM x\nRUNN y\n")
    assert r.code == 1 and "Dockerfile:2:1: unknown instruction: RUNN" in r.stderr


def test_missing_file(tmp_path: Path) -> None:
    r = run_cli(["parse", "--json", str(tmp_path / "nope")], root=tmp_path)
    assert r.code == 1 and "cannot read" in json.loads(r.stdout)["error"]
    r = run_cli(["parse", str(tmp_path / "nope")], root=tmp_path)
    assert r.code == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_whole_process(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    proc = subprocess.run([sys.executable, "-m", "builder", "parse", "--json", str(path)],
                          capture_output=True, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[1]["value"] == ["echo hi"]
