"""USER / -u / --chown resolution from the image's /etc/passwd and /etc/group (docker rules),
read safely inside the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.errors import UnsafePath
from runtime.users import ExecUser, UnknownUser, resolve_chown, resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
app:x:1000:1000::/home/app:/bin/sh
# a comment
broken line
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
wheel:x:10:root,app
www-data:x:33:
app:x:1000:
docker:x:999:app
nogroup:x:65534:
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(PASSWD)
    (r / "etc" / "group").write_text(GROUP)
    return r


@pytest.mark.parametrize(("spec", "want"), [
    ("", ExecUser(0, 0, (10,), "/root", "root")),
    ("root", ExecUser(0, 0, (10,), "/root", "root")),
    ("app", ExecUser(1000, 1000, (10, 999), "/home/app", "app")),
    ("www-data", ExecUser(33, 33, (), "/var/www", "www-data")),
    ("1000", ExecUser(1000, 1000, (10, 999), "/home/app", "app")),
    ("1234", ExecUser(1234, 0, (), "/", None)),
    ("1234:5", ExecUser(1234, 5, (), "/", None)),
    ("app:docker", ExecUser(1000, 999, (), "/home/app", "app")),
    ("app:33", ExecUser(1000, 33, (), "/home/app", "app")),
    ("33:app", ExecUser(33, 1000, (), "/var/www", "www-data")),
    ("nobody:nogroup", ExecUser(65534, 65534, (), "/nonexistent", "nobody")),
])
def test_resolve_user(root: Path, spec: str, want: ExecUser) -> None:
    assert resolve_user(root, spec) == want


def test_unknown_names_are_errors_naming_them(root: Path) -> None:
    with pytest.raises(UnknownUser, match="unable to find user ghost"):
        resolve_user(root, "ghost")
    with pytest.raises(UnknownUser, match="unable to find group ghosts"):
        resolve_user(root, "app:ghosts")
    with pytest.raises(UnknownUser, match="ghost"):
        resolve_chown(root, "ghost")


def test_no_passwd_file(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "") == ExecUser(0, 0)
    assert resolve_user(tmp_path, "42:7") == ExecUser(42, 7)
    with pytest.raises(UnknownUser):
        resolve_user(tmp_path, "app")


@pytest.mark.parametrize(("spec", "want"), [
    ("1000", (1000, 1000)), ("app", (1000, 1000)), ("www-data", (33, 33)),
    ("app:docker", (1000, 999)), ("5:6", (5, 6)), ("app:7", (1000, 7)),
])
def test_resolve_chown(root: Path, spec: str, want: tuple[int, int]) -> None:
    assert resolve_chown(root, spec) == want


def test_passwd_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "data").mkdir()
    (r / "data" / "passwd").write_text("svc:x:77:78::/:/bin/sh\n")
    os.symlink("/data/passwd", r / "etc" / "passwd")          # absolute: the image's /data
    assert resolve_user(r, "svc").uid == 77
    (r / "etc" / "passwd").unlink()
    os.symlink("/etc/shadow", r / "etc" / "passwd")           # host's /etc/shadow must not be read
    with pytest.raises(UnknownUser):
        resolve_user(r, "root")


def test_hostile_passwd_files_are_refused(tmp_path: Path) -> None:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    os.mkfifo(r / "etc" / "passwd")                           # would block a naive reader
    with pytest.raises(UnsafePath, match="not a regular file"):
        resolve_user(r, "root")
    (r / "etc" / "passwd").unlink()
    with open(r / "etc" / "passwd", "wb") as f:
        f.truncate(64 << 20)
    with pytest.raises(UnsafePath, match="limit"):
        resolve_user(r, "root")
