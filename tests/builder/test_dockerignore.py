""".dockerignore semantics: table tests from Docker's documentation and moby/patternmatcher's
behaviour (exceptions, '**', ordering, cleaning, inheritance), plus the context walk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from builder.context import BuildContext
from builder.dockerignore import Matcher, go_clean, parse_ignore
from builder.errors import ContextError


def excluded(patterns: str, path: str) -> bool:
    return Matcher(parse_ignore(patterns)).excluded(path)


@pytest.mark.parametrize(("raw", "clean"), [
    ("", "."), (".", "."), ("./foo", "foo"), ("foo/", "foo"), ("a//b", "a/b"), ("/a/../b", "/b"),
    ("../x", "../x"), ("a/./b/..", "a"), ("/..", "/"), ("//x", "/x"),
])
def test_go_clean(raw: str, clean: str) -> None:
    assert go_clean(raw) == clean


# (patterns, path, excluded?) -- the examples of docs.docker.com (build context, .dockerignore)
DOCS = [
    ("*/temp*", "somedir/temporary.txt", True),
    ("*/temp*", "somedir/temp", True),
    ("*/temp*", "temp", False),
    ("*/temp*", "a/b/temp", False),           # '*' never crosses '/'
    ("*/*/temp*", "somedir/subdir/temporary.txt", True),
    ("*/*/temp*", "somedir/temporary.txt", False),
    ("temp?", "tempa", True),
    ("temp?", "tempab", False),
    ("temp?", "dir/tempa", False),
    ("**/*.go", "main.go", True),
    ("**/*.go", "a/b/c/x.go", True),
    ("**/*.go", "a/b/c/x.gox", False),
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md", "CHANGES.md", True),
    ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),
    ("*.md\n!README*.md\nREADME-secret.md", "README-public.md", False),
    ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False),
    ("*.md\nREADME-secret.md\n!README*.md", "other.md", True),
]


@pytest.mark.parametrize(("patterns", "path", "want"), DOCS)
def test_docs_examples(patterns: str, path: str, want: bool) -> None:
    assert excluded(patterns, path) is want


MORE = [
    ("/foo", "foo", True),                     # a leading / is dropped
    ("./foo/", "foo/bar", True),               # cleaned, and a dir's match is inherited
    ("foo", "foo/bar/baz", True),
    ("foo/**", "foo/x/y", True),               # prefix match
    ("foo/**", "foo", False),
    ("**", "anything/at/all", True),
    ("**/foo", "foo", True),                   # '**/' matches zero components
    ("**/foo", "a/b/foo", True),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/xb", False),
    ("*", "x", True),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "dx", False),
    ("[^a-c]x", "dx", True),
    ("\\*x", "*x", True),
    ("\\*x", "ax", False),
    ("a.b", "axb", False),                     # '.' is literal
    ("# comment\nfoo", "# comment", False),
    ("  foo  ", "foo", True),                  # trimmed
    ("\ufefffoo", "foo", True),                # BOM on the first line
    ("dir\n!dir/keep", "dir/keep", False),
    ("dir\n!dir/keep", "dir/other", True),
    ("dir\n!dir/keep", "dir/keep/inner", False),
    ("!x\nx", "x", True),
    ("x\n!x", "x", False),
]


@pytest.mark.parametrize(("patterns", "path", "want"), MORE)
def test_semantics(patterns: str, path: str, want: bool) -> None:
    assert excluded(patterns, path) is want


@pytest.mark.parametrize("bad", ["!", "! ", "[", "a[", "[]", "x\\", "[z-a]"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(ContextError):
        parse_ignore(bad)


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


def test_walk_with_exceptions_and_why(tmp_path: Path) -> None:
    _tree(tmp_path, {"a.txt": "a", "docs/keep.md": "k", "docs/drop.md": "d", "node_modules/x/y.js": "y",
                     "src/main.py": "m", "src/tmp/t": "t", ".dockerignore": "docs\nnode_modules\n"
                     "!docs/keep.md\nsrc/tmp\n"})
    ctx = BuildContext(tmp_path)
    sent = set(ctx.entries())
    assert sent == {"", ".dockerignore", "a.txt", "docs", "docs/keep.md", "src", "src/main.py"}
    d = ctx.decide("docs/drop.md")
    assert d.excluded and str(d.pattern) == "docs" and d.pattern.line == 1
    assert d.inherited_from == "docs"
    k = ctx.decide("docs/keep.md")
    assert not k.excluded and str(k.pattern) == "!docs/keep.md" and k.pattern.line == 3
    assert ctx.decide("a.txt").pattern is None
    assert "excluded by .dockerignore:4" in (ctx.why_missing("src/tmp/t") or "")


def test_dockerfile_specific_ignore_wins(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": "1", "b": "2", ".dockerignore": "a\n", "build/app.Dockerfile": "FROM x\n",
                     "build/app.Dockerfile.dockerignore": "b\n"})
    ctx = BuildContext(tmp_path, dockerfile=tmp_path / "build" / "app.Dockerfile")
    assert "a" in ctx.entries() and "b" not in ctx.entries()
    plain = BuildContext(tmp_path, dockerfile=tmp_path / "Dockerfile")
    assert "a" not in plain.entries() and "b" in plain.entries()


def test_symlinks_not_followed_in_walk_but_followed_as_source(tmp_path: Path) -> None:
    _tree(tmp_path, {"real/f": "x"})
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "out").symlink_to("/etc")
    ctx = BuildContext(tmp_path)
    assert ctx.entries()["link"].kind == "symlink"
    assert "link/f" not in ctx.entries()
    (src,) = ctx.sources("link")
    assert src.target == "real" and src.entry.kind == "dir"
    # a link pointing outside the context resolves inside it (the context is the root)
    assert ctx.sources("out") == []


def test_stat_cache_skips_rereads_and_sees_changes(tmp_path: Path) -> None:
    ctxdir, cache = tmp_path / "ctx", tmp_path / "statcache"
    _tree(ctxdir, {"f1": "one", "d/f2": "two"})
    old = 1_600_000_000
    for p in (ctxdir / "f1", ctxdir / "d" / "f2"):
        os.utime(p, (old, old))
    time.sleep(0.15)  # past the "racy" window: entries hashed right after a change are not kept
    ctx = BuildContext(ctxdir, stat_cache_dir=cache)
    first = ctx.tree_digest("")
    ctx.close()
    assert ctx.bytes_hashed == 6
    again = BuildContext(ctxdir, stat_cache_dir=cache)
    assert again.tree_digest("") == first and again.bytes_hashed == 0
    # touching an mtime: re-read, same digest
    os.utime(ctxdir / "f1", (old + 5, old + 5))
    time.sleep(0.15)
    touched = BuildContext(ctxdir, stat_cache_dir=cache)
    assert touched.tree_digest("") == first and touched.bytes_hashed == 3
    (ctxdir / "d" / "f2").write_text("TWO")
    changed = BuildContext(ctxdir, stat_cache_dir=cache)
    assert changed.tree_digest("") != first


def test_globs_match_one_level(tmp_path: Path) -> None:
    _tree(tmp_path, {"a.txt": "", "b.txt": "", "sub/c.txt": "", "x.md": ""})
    ctx = BuildContext(tmp_path)
    assert [s.path for s in ctx.sources("*.txt")] == ["a.txt", "b.txt"]
    assert [s.path for s in ctx.sources("*/*.txt")] == ["sub/c.txt"]
    assert [s.path for s in ctx.sources("/./sub/../x.md")] == ["x.md"]
