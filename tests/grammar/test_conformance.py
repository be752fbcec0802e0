"""Conformance with BuildKit's parse tree, in-process (what compare.py checks through the CLI).

Every ``<Dockerfile>.expected.json`` answer (BuildKit v0.12.5, see
../shared/conformance/dockerfile/README.md) is compared field by field with
``grammar.to_buildkit_json``. pybuild follows today's BuildKit where it deliberately changed
behaviour; a case may then carry ``<Dockerfile>.head.json`` with today's answer, and the
failures against v0.12.5 must be exactly those cases. The shared tree is used when present
(skipped with the reason otherwise); the copies under testdata/parser always run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import grammar
from tests.grammar._helpers import REPO_ROOT, TESTDATA

FIELDS = ("cmd", "sub_cmd", "json", "original", "start_line", "end_line", "flags", "value", "heredocs")
SHARED = Path(os.environ.get("PYBUILD_CONFORMANCE_DIR",
                             REPO_ROOT.parent / "shared" / "conformance" / "dockerfile"))
# cases of the shared tree where pybuild deliberately follows newer BuildKit (none today)
SHARED_DEVIATIONS: frozenset[str] = frozenset()


def _canon(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)  # type-strict: true != 1


def _answer(dockerfile: Path) -> list[dict[str, object]] | dict[str, str]:
    try:
        return grammar.to_buildkit_json(dockerfile.read_bytes(), filename=dockerfile.name)
    except grammar.ParseError as exc:
        return {"error": exc.message}


def differences(expected: object, got: object, *, strict_errors: bool = True) -> list[str]:
    """compare.py's verdict: an empty list when ``got`` matches ``expected``."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"expected the error {expected['error']!r}, got {len(got)} instructions"]  # type: ignore[arg-type]
        if strict_errors and got["error"] != expected["error"]:
            return [f"error message: expected {expected['error']!r}, got {got['error']!r}"]
        return []
    if isinstance(got, dict):
        return [f"unexpected error {got['error']!r}"]
    assert isinstance(expected, list) and isinstance(got, list)
    out = []
    for i, (exp, act) in enumerate(zip(expected, got, strict=False)):
        for field in FIELDS:
            if _canon(exp.get(field)) != _canon(act.get(field, "<missing>")):
                out.append(f"#{i + 1} ({exp.get('cmd')} line {exp.get('start_line')}) {field}: "
                           f"expected {exp.get(field)!r}, got {act.get(field)!r}")
        if out:
            break
    if len(expected) != len(got):
        out.append(f"instruction count: expected {len(expected)}, got {len(got)}")
    return out


def _load(dockerfile: Path, suffix: str) -> object:
    return json.loads(dockerfile.with_name(dockerfile.name + suffix).read_text(encoding="utf-8"))


def _cases(root: Path) -> list[Path]:
    return sorted(p.with_name(p.name[: -len(".expected.json")]) for p in root.rglob("*.expected.json"))


LOCAL = _cases(TESTDATA / "parser")


@pytest.mark.parametrize("dockerfile", LOCAL, ids=lambda p: p.parent.name)
def test_local_fixture(dockerfile: Path) -> None:
    expected = _load(dockerfile, ".expected.json")
    got = _answer(dockerfile)
    head = dockerfile.with_name(dockerfile.name + ".head.json")
    if head.exists():
        # today's BuildKit answers differently from v0.12.5 here: follow today's, and make
        # sure the v0.12.5 answer really differs (so the deviation list stays exact)
        assert differences(_load(dockerfile, ".head.json"), got) == []
        assert differences(expected, got) != []
    else:
        assert differences(expected, got) == []


def test_local_fixtures_cover_the_tricky_parts() -> None:
    texts = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in LOCAL)
    for feature in ("<<EOF", "<<-", "# escape=`", "ONBUILD", "\r\n", "HEALTHCHECK", "--mount", '["'):
        assert feature in texts, feature


def test_shared_tree() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"conformance tree not found at {SHARED} (set PYBUILD_CONFORMANCE_DIR); "
                    "the copies under testdata/parser still ran")
    cases = _cases(SHARED)
    assert len(cases) >= 390, f"only {len(cases)} cases under {SHARED}"
    failures = {}
    for dockerfile in cases:
        expected = _load(dockerfile, ".expected.json")
        diffs = differences(expected, _answer(dockerfile))
        if diffs:
            failures[str(dockerfile.relative_to(SHARED))] = diffs
    print(f"{len(cases) - len(failures)} passed, {len(failures)} failed (of {len(cases)})")
    assert set(failures) == SHARED_DEVIATIONS, json.dumps(failures, indent=1)[:4000]
