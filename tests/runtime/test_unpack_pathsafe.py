"""runtime.pathsafe: resolution inside a root, with the kernel's openat2(RESOLVE_IN_ROOT) and
with the portable component walk; both must give the same answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import pathsafe
from runtime.errors import UnsafePath


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(pathsafe, "have_openat2", lambda: False)
    elif not pathsafe.have_openat2():
        pytest.skip("openat2 not available")
    return str(request.param)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "opt" / "app").mkdir(parents=True)
    (r / "usr" / "lib" / "libc.so").write_text("libc")
    os.symlink("usr/lib", r / "lib")                   # relative
    os.symlink("/opt/app", r / "usr" / "app")          # absolute: the root's /opt/app
    os.symlink("../../../../..", r / "opt" / "up")     # climbs past the root: clamped
    os.symlink("/", r / "slash")
    os.symlink("loop2", r / "loop1")
    os.symlink("loop1", r / "loop2")
    os.symlink("missing/deeper", r / "dangling")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    return r


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    os.close(fd)
    return st.st_dev, st.st_ino


def _ino(p: Path) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_dev, st.st_ino


def test_open_dir_follows_symlinks_inside_the_root(root: Path, resolver: str) -> None:
    rfd = pathsafe.open_root(root)
    try:
        assert _ident(pathsafe.open_dir(rfd, "lib")) == _ino(root / "usr" / "lib")
        assert _ident(pathsafe.open_dir(rfd, "usr/app")) == _ino(root / "opt" / "app")
        assert _ident(pathsafe.open_dir(rfd, "opt/up")) == _ino(root)
        assert _ident(pathsafe.open_dir(rfd, "slash/usr/lib")) == _ino(root / "usr" / "lib")
        assert _ident(pathsafe.open_dir(rfd, "opt/up/usr")) == _ino(root / "usr")
        with pytest.raises(UnsafePath, match="loop"):
            pathsafe.open_dir(rfd, "loop1/x")
        with pytest.raises(UnsafePath, match="symlink"):
            pathsafe.open_dir(rfd, "lib", follow=False)
        with pytest.raises(FileNotFoundError):
            pathsafe.open_dir(rfd, "nope")
        with pytest.raises(NotADirectoryError):
            pathsafe.open_dir(rfd, "usr/lib/libc.so")
    finally:
        os.close(rfd)


def test_resolve_in_root_final_component(root: Path, resolver: str) -> None:
    rfd = pathsafe.open_root(root)
    try:
        pfd, name = pathsafe.resolve_in_root(rfd, "/lib/libc.so")
        assert name == "libc.so" and _ident(pfd) == _ino(root / "usr" / "lib")
        pfd, name = pathsafe.resolve_in_root(rfd, "lib")            # not followed by default
        assert name == "lib" and _ident(pfd) == _ino(root)
        pfd, name = pathsafe.resolve_in_root(rfd, "lib", follow_last=True)
        assert name == "lib" and _ident(pfd) == _ino(root / "usr")
        pfd, name = pathsafe.resolve_in_root(rfd, "opt/up", follow_last=True)
        assert name == "" and _ident(pfd) == _ino(root)
        os.symlink("/usr/newfile", root / "dangling2")
        pfd, name = pathsafe.resolve_in_root(rfd, "dangling2", follow_last=True)
        assert name == "newfile" and _ident(pfd) == _ino(root / "usr")
        with pytest.raises(FileNotFoundError):       # the target's directory does not exist
            pathsafe.resolve_in_root(rfd, "dangling", follow_last=True)
        with pytest.raises(UnsafePath, match="'..'"):
            pathsafe.resolve_in_root(rfd, "../outside/secret")
        with pytest.raises(UnsafePath, match="loop"):
            pathsafe.resolve_in_root(rfd, "loop1", follow_last=True)
    finally:
        os.close(rfd)


def test_makedirs_creates_inside_the_root(root: Path, resolver: str) -> None:
    rfd = pathsafe.open_root(root)
    try:
        created: list[str] = []
        os.close(pathsafe.makedirs(rfd, "dangling/x", created=created))
        assert (root / "missing" / "deeper" / "x").is_dir()
        assert created == ["missing", "missing/deeper", "missing/deeper/x"]
        os.close(pathsafe.makedirs(rfd, "opt/up/new"))
        assert (root / "new").is_dir()
    finally:
        os.close(rfd)
    assert sorted(os.listdir(root.parent)) == ["outside", "root"]


def test_read_file(root: Path, resolver: str) -> None:
    os.symlink("/usr/lib/libc.so", root / "libc-link")
    os.symlink("../outside/secret", root / "escape")
    assert pathsafe.read_file(root, "libc-link") == b"libc"
    assert pathsafe.read_file(root, "escape") is None           # resolved in the root: missing
    assert pathsafe.read_file(root, "nothing/here") is None
    with pytest.raises(UnsafePath, match="limit"):
        pathsafe.read_file(root, "libc-link", limit=2)


def test_clean_name() -> None:
    assert pathsafe.clean_name("/a//b/./c/") == "a/b/c"
    assert pathsafe.clean_name("./") == ""
    for bad in ("..", "a/../b", "a/..", "x\0y"):
        with pytest.raises(UnsafePath):
            pathsafe.clean_name(bad)
