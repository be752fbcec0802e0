"""The sandbox speaks OCI: the same config.json runs under pybuild's own sandbox and under runc
(`--runtime runc|crun`), and the isolation probe sees the same container under each. On a
hybrid cgroup host, which crun 1.x refuses, run_runtime hides the v2 mount from crun
(cgroups.hybrid_v2_mounts); a test below pins that."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from runtime import sandbox
from tests.runtime import sandboxkit as kit
from tests.runtime.sandboxkit import Rootfs, make_spec, run_in
from tests.runtime.test_sandbox import PROBE

busybox_chain, rootfs, no_leaks = kit.busybox_chain, kit.rootfs, kit.no_leaks

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_overlay, pytest.mark.usefixtures("no_leaks")]

SAME = ("pid", "hostname", "capbnd", "capeff", "nonewprivs", "seccomp", "sys_write", "procsys_write",
        "sys_ro", "procsys_ro", "mount", "unshare_m", "fds", "netdevs", "etc_hostname", "resolv")


def _under_runtime(runtime: str, rootfs: Rootfs, tmp_path: Path) -> tuple[int, dict[str, str], str]:
    spec = make_spec(rootfs, ["sh", "-c", PROBE], hostname="probe-host")
    spec["linux"]["cgroupsPath"] = f"/pybuild-{runtime}-{os.getpid()}"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = sandbox.run_runtime(spec, bundle=tmp_path / f"bundle-{runtime}",
                                   container_id=f"t{os.getpid()}",
                                   runtime=runtime, rootfs_mounts=rootfs.mounts, stdio=(None, out, err),
                                   state_root=str(tmp_path / f"state-{runtime}"))
        out.seek(0)
        err.seek(0)
        text, etext = out.read().decode(), err.read().decode()
    values = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            values[k.strip()] = v.strip()
    return code, values, etext


@pytest.mark.needs_peer("runc")
def test_probe_matches_runc(rootfs: Rootfs, tmp_path: Path) -> None:
    ours = run_in(rootfs, ["sh", "-c", PROBE], hostname="probe-host")
    code, theirs, err = _under_runtime("runc", rootfs, tmp_path)
    assert code == 0, err
    ov = ours.values()
    diffs = {k: (ov.get(k), theirs.get(k)) for k in SAME if ov.get(k) != theirs.get(k)}
    assert not diffs, diffs
    masked = sorted(k for k in ov if k.startswith("masked"))
    assert masked == sorted(k for k in theirs if k.startswith("masked"))
    assert all(theirs[k] == "0" for k in masked)
    # the bundle runc read is the one we wrote
    assert (tmp_path / "bundle-runc" / "config.json").is_file()


@pytest.mark.needs_peer("runc")
def test_runc_exit_code_passes_through(rootfs: Rootfs, tmp_path: Path) -> None:
    spec = make_spec(rootfs, ["sh", "-c", "exit 23"])
    spec["linux"]["cgroupsPath"] = f"/pybuild-runc-x{os.getpid()}"
    with open(os.devnull, "wb") as null:
        code = sandbox.run_runtime(spec, bundle=tmp_path / "b", container_id=f"x{os.getpid()}",
                                   rootfs_mounts=rootfs.mounts, stdio=(None, null, null),
                                   state_root=str(tmp_path / "state"))
    assert code == 23


@pytest.mark.needs_peer("crun")
def test_probe_matches_crun(rootfs: Rootfs, tmp_path: Path) -> None:
    ours = run_in(rootfs, ["sh", "-c", PROBE], hostname="probe-host")
    code, theirs, err = _under_runtime("crun", rootfs, tmp_path)
    assert code == 0, err
    ov = ours.values()
    assert {k: ov.get(k) for k in SAME} == {k: theirs.get(k) for k in SAME}


@pytest.mark.needs_peer("crun")
def test_crun_applies_a_memory_limit(rootfs: Rootfs, tmp_path: Path) -> None:
    spec = make_spec(rootfs, ["sh", "-c", "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
                              "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"])
    spec["linux"]["cgroupsPath"] = f"/pybuild-crun-m{os.getpid()}"
    spec["linux"]["resources"] = {"memory": {"limit": 64 << 20}}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = sandbox.run_runtime(spec, bundle=tmp_path / "b", container_id=f"m{os.getpid()}",
                                   runtime="crun", rootfs_mounts=rootfs.mounts, stdio=(None, out, err),
                                   state_root=str(tmp_path / "state"))
        out.seek(0)
        err.seek(0)
        assert code == 0, err.read().decode()
        assert out.read().decode().strip() == str(64 << 20)


def test_hybrid_v2_mounts_from_mountinfo(tmp_path: Path) -> None:
    from runtime import cgroups

    v2 = tmp_path / "unified"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("hugetlb\n")
    info = tmp_path / "mountinfo"
    v1 = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    unified = f"31 25 0:27 / {v2} rw - cgroup2 cgroup2 rw\n"
    info.write_text(v1 + unified)
    assert cgroups.hybrid_v2_mounts(info) == [str(v2)]
    (v2 / "cgroup.controllers").write_text("\n")          # an empty v2 tree is harmless
    assert cgroups.hybrid_v2_mounts(info) == []
    info.write_text(unified)                               # pure v2: nothing to hide
    (v2 / "cgroup.controllers").write_text("memory pids\n")
    assert cgroups.hybrid_v2_mounts(info) == []
