"""`pybuild --help` and the help of light verbs import nothing heavy (DESIGN C9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"requests", "urllib3", "lark", "zstandard", "cryptography", "isal"}

PROBE = """
import json, sys
from builder.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)), file=sys.stderr)
"""


def _loaded(args: list[str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, check=False)
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["images", "--help"], ["run", "--help"],
                                  ["build", "--help"], ["push", "--help"], ["--version"]],
                         ids=lambda a: " ".join(a))
def test_light_commands_import_nothing_heavy(args: list[str]) -> None:
    heavy = _loaded(args) & HEAVY
    assert not heavy, f"`pybuild {' '.join(args)}` imported {sorted(heavy)}"
