"""Rootless: `pybuild run` as an unprivileged user (created here with useradd, given an
/etc/subuid + /etc/subgid range, then removed). The same isolation probe and a build-style
step (files written and chowned in the writable layer) work through a user namespace mapped
with newuidmap/newgidmap, with the image's overlay mounted inside that namespace."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.runtime.sandboxkit import _cgroup_dirs, _mounts
from tests.runtime.test_sandbox import DOCKER_DEFAULT_CAPBND, PROBE
from tests.support.rootless import (
    SUBID_COUNT,
    RootlessUser,
    import_prelude,
    pybuild_as,
    python_as,
    rootless_user,
)

SUBID_START = 400000

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_userns, pytest.mark.slow]


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootlessUser]:
    with rootless_user(tmp_path_factory, "pbrl", subid_start=SUBID_START) as u:
        yield u


def _values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def test_rootless_probe(user: RootlessUser) -> None:
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


def test_rootless_build_style_step(user: RootlessUser) -> None:
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


def test_rootless_limits_fail_closed_on_cgroup_v1(user: RootlessUser) -> None:
    from runtime import cgroups

    if cgroups.detect() != "v1":
        pytest.skip("this checks the cgroup v1 refusal; on v2 a delegated subtree is used")
    r = pybuild_as(user, "run", "--rm", "--network", "none", "--memory", "32m", "busybox", "true")
    assert r.returncode == 125
    assert "rootless containers cannot use cgroup v1" in r.stderr


def test_rootless_file_action_owns_files_through_the_mapping(user: RootlessUser) -> None:
    """sandbox.apply as the user: the file action runs as root of a user namespace, so a
    COPY --chown=33:33 gives the host owner subuid start + 32."""
    root = user.work / "applyroot"
    code = (import_prelude() + "; from runtime import sandbox, idmap; "
            f"print(sandbox.apply({{'op': 'mkdir', 'path': '/made/deep', 'owner': [33, 33], 'mode': 0o750}}, "
            f"root={str(root)!r}, idmap=idmap.rootless_mapping()))")
    subprocess.run(["runuser", "-u", user.name, "--", "mkdir", str(root)], check=True)
    r = python_as(user, "-c", code, timeout=60)
    assert r.returncode == 0, r.stderr
    st = (root / "made" / "deep").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (SUBID_START + 32, SUBID_START + 32, 0o750)
