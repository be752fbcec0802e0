"""The lifecycle verbs stay light (DESIGN C9): their --help, and `ps`/`volume ls`/`network ls`
on a store, import nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

HEAVY = {"requests", "urllib3", "lark", "zstandard", "cryptography", "isal"}
PROBE = """
import json, sys
from builder.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit:
    code = 0
print(json.dumps([code, sorted(m.split('.')[0] for m in sys.modules)]), file=sys.stderr)
"""
VERBS = ["ps", "logs", "exec", "stop", "kill", "start", "restart", "rm", "pause", "unpause", "stats", "top",
         "cp", "wait", "port", "container", "volume", "network"]


def _run(args: list[str]) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          check=False)
    code, mods = json.loads(proc.stderr.strip().splitlines()[-1])
    return int(code), set(mods)


@pytest.mark.parametrize("verb", VERBS)
def test_help_is_light(verb: str) -> None:
    code, mods = _run([verb, "--help"])
    assert code == 0
    assert not mods & HEAVY


@pytest.mark.parametrize("args", [["ps", "-a"], ["volume", "ls"], ["container", "ls"]])
def test_listing_is_light(tmp_path: Path, args: list[str]) -> None:
    code, mods = _run(["--root", str(tmp_path / "store"), *args])
    assert code == 0
    assert not mods & HEAVY
