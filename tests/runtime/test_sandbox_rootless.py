"""Rootless: `pybuild run` as an unprivileged user (created here with useradd, given an
/etc/subuid + /etc/subgid range, then removed). The same isolation probe and a build-style
step (files written and chowned in the writable layer) work through a user namespace mapped
with newuidmap/newgidmap, with the image's overlay mounted inside that namespace."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.store import DirStore
from tests.runtime.sandboxkit import _cgroup_dirs, _mounts
from tests.runtime.test_sandbox import DOCKER_DEFAULT_CAPBND, PROBE
from tests.support.images import build_busybox, have_busybox

REPO = Path(__file__).resolve().parents[2]
SUBID_START, SUBID_COUNT = 400000, 65536

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_userns, pytest.mark.slow]


@dataclass
class User:
    name: str
    uid: int
    gid: int
    store: Path
    workdir: Path


def _others_can_run(path: str) -> bool:
    real = Path(path).resolve()
    if not real.stat().st_mode & 0o001:
        return False
    return all(p.stat().st_mode & 0o001 for p in real.parents)


def _python() -> str:
    """An interpreter the user can execute (this venv's may live under root's private home);
    the same minor version, so the venv's packages (click, ...) import as they are."""
    if _others_can_run(sys.executable):
        return sys.executable
    minor = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    found = shutil.which(minor, path="/usr/bin:/usr/local/bin")
    if found is None or not _others_can_run(found):
        pytest.skip(f"no {minor} that an unprivileged user can execute")
    return found


def _site_packages() -> str:
    import click

    return str(Path(click.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not have_busybox():
        pytest.skip("busybox-static not installed")
    name = f"pbrl{secrets.token_hex(3)}"
    # no automatic subordinate ids: the test gives exactly one range of its own
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-K", "SUB_UID_COUNT=0",
                    "-K", "SUB_GID_COUNT=0", name], check=True)
    try:
        subprocess.run(["usermod", "--add-subuids", f"{SUBID_START}-{SUBID_START + SUBID_COUNT - 1}",
                        "--add-subgids", f"{SUBID_START}-{SUBID_START + SUBID_COUNT - 1}", name], check=True)
        import pwd

        pw = pwd.getpwnam(name)
        base = tmp_path_factory.mktemp("rootless")
        base.chmod(0o755)
        for p in base.parents:
            if str(p).startswith("/tmp/") and p.stat().st_mode & 0o005 != 0o005:
                p.chmod(p.stat().st_mode | 0o005)
        store = base / "store"
        build_busybox(DirStore(store))
        work = base / "work"
        work.mkdir()
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(base)], check=True)
        yield User(name, pw.pw_uid, pw.pw_gid, store, work)
        shutil.rmtree(base, ignore_errors=True)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def pybuild_as(user: User, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    boot = (f"import sys, importlib.util; sys.path[:0] = [{str(REPO)!r}, {_site_packages()!r}]; "
            "from builder.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(user.workdir), "LANG": "C.UTF-8"}
    return subprocess.run(["runuser", "-u", user.name, "--", _python(), "-c", boot,
                           "--root", str(user.store), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=user.workdir, env=env,
                          check=False)


def _values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def test_rootless_probe(user: User) -> None:
    mounts, cgroups = _mounts(user.store), _cgroup_dirs()
    probe = PROBE + 'echo "uidmap=$(cat /proc/self/uid_map | tr -s " " | tr "\\n" ";")"\n' \
                    'echo "rootfs=$(grep " / " /proc/mounts | cut -d" " -f3)"\n' \
                    'echo "rootvolatile=$(grep " / " /proc/mounts | grep -c volatile)"\n'
    r = pybuild_as(user, "run", "--rm", "--network", "none", "--hostname", "probe-host",
                   "busybox", "sh", "-c", probe)
    assert r.returncode == 0, r.stderr
    v = _values(r.stdout)
    assert v["pid"] == "1" and v["hostname"] == "probe-host"
    assert v["capbnd"] == DOCKER_DEFAULT_CAPBND and v["nonewprivs"] == "1"
    assert all(val == "0" for k, val in v.items() if k.startswith("masked"))
    assert v["sys_write"] != "0" and v["procsys_write"] != "0"
    assert v["mount"] != "0" and v["unshare_m"] != "0"
    assert int(v["procs"]) <= 4 and v["fds"].split() == ["0", "1", "2"]
    # container root is the user; ids 1.. come from the subordinate range
    assert f" 0 {user.uid} 1;" in " " + v["uidmap"]
    assert f"{SUBID_START} {SUBID_COUNT}" in v["uidmap"]
    assert v["rootfs"] == "overlay"                      # overlayfs inside the user namespace
    assert v["rootvolatile"] == "1"                      # a --rm layer: no sync at unmount
    assert _mounts(user.store) == mounts and _cgroup_dirs() == cgroups
    assert not list((user.store / "containers").glob("[0-9a-f]*"))   # --rm removed the record


def test_rootless_build_style_step(user: User) -> None:
    """A RUN-like command writes and chowns files in the writable layer; on the host they are
    owned by the mapped ids (root -> the user, 33 -> subuid start + 32)."""
    script = ("mkdir -p /opt/app && echo built > /opt/app/out.txt && chown 33:33 /opt/app/out.txt && "
              "rm /etc/group && echo ok")
    r = pybuild_as(user, "run", "--name", "step", "--network", "none", "busybox", "sh", "-c", script)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr
    cdir = next(p for p in (user.store / "containers").iterdir() if (p / "container.json").is_file())
    record = json.loads((cdir / "container.json").read_text())
    state = json.loads((cdir / "state.json").read_text())
    assert state["status"] == "exited" and state["exit_code"] == 0
    from runtime.snapshots import OverlaySnapshotter

    upper = OverlaySnapshotter(user.store / "snapshots").upper_dir(record["snapshot_key"])
    out = upper / "opt" / "app" / "out.txt"
    assert out.read_text() == "built\n"
    st = out.stat()
    assert (st.st_uid, st.st_gid) == (SUBID_START + 32, SUBID_START + 32)
    assert (upper / "opt").stat().st_uid == user.uid
    assert not (upper / "etc" / "hosts").exists()         # mount stubs are gone
    r = pybuild_as(user, "rm", "step")
    assert r.returncode == 0, r.stderr


def test_rootless_limits_fail_closed_on_cgroup_v1(user: User) -> None:
    from runtime import cgroups

    if cgroups.detect() != "v1":
        pytest.skip("this checks the cgroup v1 refusal; on v2 a delegated subtree is used")
    r = pybuild_as(user, "run", "--rm", "--network", "none", "--memory", "32m", "busybox", "true")
    assert r.returncode == 125
    assert "rootless containers cannot use cgroup v1" in r.stderr


def test_rootless_file_action_owns_files_through_the_mapping(user: User) -> None:
    """sandbox.apply as the user: the file action runs as root of a user namespace, so a
    COPY --chown=33:33 gives the host owner subuid start + 32."""
    root = user.workdir / "applyroot"
    code = (f"import sys, importlib.util; sys.path[:0] = [{str(REPO)!r}, {_site_packages()!r}]; "
            "from runtime import sandbox, idmap; "
            f"print(sandbox.apply({{'op': 'mkdir', 'path': '/made/deep', 'owner': [33, 33], 'mode': 0o750}}, "
            f"root={str(root)!r}, idmap=idmap.rootless_mapping()))")
    subprocess.run(["runuser", "-u", user.name, "--", "mkdir", str(root)], check=True)
    r = subprocess.run(["runuser", "-u", user.name, "--", _python(), "-c", code], capture_output=True,
                       text=True, cwd=user.workdir, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    st = (root / "made" / "deep").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (SUBID_START + 32, SUBID_START + 32, 0o750)
