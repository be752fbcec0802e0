"""The help of every image verb imports nothing heavy (DESIGN C9), and every lazily loaded
verb and `image` subcommand answers --help."""

from __future__ import annotations

import pytest

from tests.cli.test_import_weight import HEAVY, _loaded
from tests.support.stores import run_cli

VERBS = [["images"], ["image"], ["image", "ls"], ["image", "prune"], ["image", "import"], ["inspect"],
         ["history"], ["tag"], ["rmi"], ["save"], ["load"], ["import"], ["system"], ["system", "df"],
         ["system", "prune"]]


@pytest.mark.parametrize("verb", [["images"], ["image"], ["save"], ["load"], ["import"], ["system", "df"]],
                         ids=" ".join)
def test_help_imports_nothing_heavy(verb: list[str]) -> None:
    heavy = _loaded([*verb, "--help"]) & HEAVY
    assert not heavy, f"`pybuild {' '.join(verb)} --help` imported {sorted(heavy)}"


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_works(verb: list[str], tmp_path) -> None:
    r = run_cli([*verb, "--help"], root=tmp_path)
    assert r.code == 0 and "Usage: pybuild" in r.stdout
