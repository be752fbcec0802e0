"""The dependency direction of DESIGN §2.1, enforced (C14): which pybuild package may
import which, which third-party modules each may use, and click only in the CLI."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

ALLOWED = {
    "grammar": set(),
    "registry": set(),
    "runtime": {"registry"},
    "builder": {"grammar", "registry", "runtime"},
}
THIRD_PARTY = {
    "grammar": {"lark"},
    "registry": {"requests", "urllib3", "zstandard", "cryptography", "isal"},
    "runtime": set(),
    "builder": {"click"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in the file, function-local ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _files(pkg: str) -> list[Path]:
    return sorted((REPO_ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_package_respects_layering(pkg: str) -> None:
    problems = []
    for path in _files(pkg):
        rel = path.relative_to(REPO_ROOT)
        for line, top in _imports(path):
            if top in ALLOWED:
                if top != pkg and top not in ALLOWED[pkg]:
                    problems.append(f"{rel}:{line}: {pkg} must not import {top}")
            elif top not in sys.stdlib_module_names and top != "__future__" and top not in THIRD_PARTY[pkg]:
                problems.append(f"{rel}:{line}: unexpected dependency {top} in {pkg}")
    assert not problems, "\n".join(problems)


def test_click_only_in_cli() -> None:
    offenders = []
    for path in _files("builder"):
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel == "builder/cli.py" or rel.startswith("builder/commands/"):
            continue
        if any(top == "click" for _, top in _imports(path)):
            offenders.append(rel)
    assert not offenders, f"click imported outside the CLI: {offenders}"


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_error_bases_are_stdlib_only(pkg: str) -> None:
    path = REPO_ROOT / pkg / "errors.py"
    assert path.is_file(), f"{pkg}/errors.py is the package's error base (DESIGN C5)"
    tree = ast.parse(path.read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in top_level:
        mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        top = (mod or "").split(".")[0]
        assert top in sys.stdlib_module_names or top == "__future__" or top == pkg, \
            f"{path.name} of {pkg} imports {mod} at module scope"


def test_every_module_has_a_docstring() -> None:
    missing = [str(p.relative_to(REPO_ROOT)) for pkg in ALLOWED for p in _files(pkg)
               if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring stating their role: {missing}"
