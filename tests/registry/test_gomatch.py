"""registry.gomatch: Go's path.Match semantics (the table follows Go's match_test.go cases
that apply to '/'-separated paths), shared by .dockerignore/COPY (builder) and the
in-sandbox COPY glob walk (runtime)."""

from __future__ import annotations

import pytest

from registry import gomatch

MATCHES = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", False), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("ab[c]", "abc", True), ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False), ("ab[^b-d]", "abe", True),
    ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True), ("a?b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "z", False), ("*x", "xxx", True),
]
BAD = ["[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "\\", "a\\", "[\\",
       "[z-a]"]


@pytest.mark.parametrize(("pattern", "name", "want"), MATCHES)
def test_glob_regex_matches_like_go(pattern: str, name: str, want: bool) -> None:
    assert bool(gomatch.glob_regex(pattern).match(name)) is want


@pytest.mark.parametrize("pattern", BAD)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        gomatch.glob_regex(pattern)
    with pytest.raises(ValueError):
        gomatch.check(pattern)


def test_builder_reports_a_bad_pattern_with_its_text() -> None:
    from builder.dockerignore import glob_regex
    from builder.errors import ContextError

    with pytest.raises(ContextError, match=r"bad pattern '\[z-a\]': bad range z-a"):
        glob_regex("[z-a]")
