"""Rootless test users: an unprivileged user made with useradd (no automatic subordinate ids,
then exactly one /etc/subuid + /etc/subgid range of the test's own, or none), a world-readable
work area with a store, and pybuild (or any Python code) run as that user with runuser. The
user, whatever it left running and its files are removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.store import DirStore
from tests.conftest import skip_or_fail
from tests.support.images import build_busybox, have_busybox

REPO = Path(__file__).resolve().parents[2]
SUBID_COUNT = 65536
TOOLS = ("useradd", "userdel", "usermod", "runuser", "newuidmap", "newgidmap")


@dataclass
class RootlessUser:
    name: str
    uid: int
    gid: int
    base: Path          # the user's area (removed afterwards): store/ and work/
    store: Path
    work: Path
    python: str         # an interpreter the user may execute


def _others_can_run(path: str) -> bool:
    real = Path(path).resolve()
    return bool(real.stat().st_mode & 0o001) and all(p.stat().st_mode & 0o001 for p in real.parents)


def user_python() -> str:
    """An interpreter the user can execute (this venv's may live under root's private home),
    of the same minor version, so the venv's packages (click, ...) import as they are."""
    if _others_can_run(sys.executable):
        return sys.executable
    minor = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    found = shutil.which(minor, path="/usr/bin:/usr/local/bin")
    if found is None or not _others_can_run(found):
        skip_or_fail(f"no {minor} that an unprivileged user can execute")
    return found


def site_packages() -> str:
    """The venv's site-packages (put on the user's sys.path next to the repository)."""
    import click

    return str(Path(click.__file__).resolve().parent.parent)


def require_rootless_tools() -> None:
    """Skip (with the reason; under CI=true fail) where the tools or busybox-static are missing."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} not installed")
    if not have_busybox():
        skip_or_fail("busybox-static not installed")


def make_user(tmp_path_factory: pytest.TempPathFactory, prefix: str, *, subid_start: int | None,
              populate: Callable[[DirStore, Path], None] | None = None) -> RootlessUser:
    """A new user ``<prefix><hex>`` with the range subid_start.. (None: no range), and its area:
    store/ (busybox, or what ``populate(store, work)`` puts there) and work/, owned by it."""
    python = user_python()
    name = f"{prefix}{secrets.token_hex(3)}"
    # no automatic subordinate ids: the test gives exactly one range of its own
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-K", "SUB_UID_COUNT=0",
                    "-K", "SUB_GID_COUNT=0", name], check=True)
    base = Path(tmp_path_factory.mktemp(f"rootless-{prefix}"))
    user = RootlessUser(name, -1, -1, base, base / "store", base / "work", python)
    try:
        if subid_start is not None:
            last = subid_start + SUBID_COUNT - 1
            subprocess.run(["usermod", "--add-subuids", f"{subid_start}-{last}",
                            "--add-subgids", f"{subid_start}-{last}", name], check=True)
        import pwd

        pw = pwd.getpwnam(name)
        user.uid, user.gid = pw.pw_uid, pw.pw_gid
        base.chmod(0o755)
        for p in base.parents:
            if str(p).startswith("/tmp/") and p.stat().st_mode & 0o005 != 0o005:
                p.chmod(p.stat().st_mode | 0o005)
        user.work.mkdir()
        store = DirStore(user.store)
        if populate is None:
            build_busybox(store)
        else:
            populate(store, user.work)
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(base)], check=True)
    except BaseException:
        drop_user(user)
        raise
    return user


def drop_user(user: RootlessUser) -> None:
    """Kill what the user left running (by pid), then remove the user and its area."""
    left = subprocess.run(["pgrep", "-u", user.name], capture_output=True, text=True).stdout.split()
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(int(pid), 9)
    subprocess.run(["userdel", user.name], check=False, capture_output=True)
    shutil.rmtree(user.base, ignore_errors=True)


@contextlib.contextmanager
def rootless_user(tmp_path_factory: pytest.TempPathFactory, prefix: str, *, subid_start: int | None,
                  populate: Callable[[DirStore, Path], None] | None = None) -> Iterator[RootlessUser]:
    """``make_user`` for the duration of a ``with`` block (a module fixture's body)."""
    require_rootless_tools()
    user = make_user(tmp_path_factory, prefix, subid_start=subid_start, populate=populate)
    try:
        yield user
    finally:
        drop_user(user)


def python_as(user: RootlessUser, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``python ARGV...`` as the user, in its work directory, with a minimal environment."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(user.work), "LANG": "C.UTF-8"}
    return subprocess.run(["runuser", "-u", user.name, "--", user.python, *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=user.work, env=env, check=False)


def import_prelude() -> str:
    """Code that puts the repository and the venv's site-packages first on sys.path."""
    return f"import sys; sys.path[:0] = [{str(REPO)!r}, {site_packages()!r}]"


def pybuild_as(user: RootlessUser, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`pybuild --root STORE ARGS...` as the user (builder.cli.main from this checkout)."""
    boot = import_prelude() + "; from builder.cli import main; sys.exit(main(sys.argv[1:]))"
    return python_as(user, "-c", boot, "--root", str(user.store), *args, timeout=timeout)
