"""cgroups: the limits really hold (OOM -> 137 + OOMKilled, a fork bomb held by pids, CPU
throttling), the v1 and v2 drivers write what docker would, and nothing is left behind.

This host runs cgroup v1 (controllers at /sys/fs/cgroup/<controller>) plus an empty cgroup2
mount at /sys/fs/cgroup/unified. The v2 driver is exercised for real on that mount (create,
join, kill, remove, a container run) and for the limit files against a fake cgroup2 tree,
since no controller can be enabled in it here."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from runtime import cgroups, sandbox
from runtime.cgroups import CgroupError, CgroupV1, CgroupV2, Resources, shares_to_weight
from tests.conftest import skip_or_fail
from tests.runtime import sandboxkit as kit
from tests.runtime.sandboxkit import Rootfs, make_spec, run_in

busybox_chain, rootfs, no_leaks = kit.busybox_chain, kit.rootfs, kit.no_leaks

UNIFIED = Path("/sys/fs/cgroup/unified")
MiB = 1024 * 1024


def _any_cgroups() -> None:
    """The limit tests run on whichever version the host has (the driver's stats are the same
    keys on v1 and v2)."""
    if cgroups.detect() is None:
        skip_or_fail("no cgroup hierarchy (v1 or v2) is mounted on this host")


def _v1_only() -> None:
    """For the tests that read v1's own file names; the v2 names are pinned by the fake-tree
    tests below and exercised for real by the tests that use _any_cgroups on a v2 host."""
    if cgroups.detect() != "v1":
        pytest.skip(f"reads cgroup v1 file names (this host has {cgroups.detect()})")


# -- the must-shows, on real cgroups ------------------------------------------------------------------
@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
class TestLimits:
    def test_memory_limit_oom_kill_is_137_and_recorded(self, rootfs: Rootfs) -> None:
        _any_cgroups()
        # tail keeps the whole 100 MB "line" of zeros in memory: the OOM killer ends it
        r = run_in(rootfs, ["sh", "-c", "dd if=/dev/zero bs=1M count=100 2>/dev/null | tail"],
                   resources=Resources(memory=32 * MiB))
        assert r.code == 137
        assert r.status.oom_killed
        assert r.status.stats["memory_max_usage"] <= 32 * MiB

    def test_pid1_oom_killed_is_signal_9(self, rootfs: Rootfs) -> None:
        _any_cgroups()
        r = run_in(rootfs, ["sh", "-c", "x=$(dd if=/dev/zero bs=1M count=100 2>/dev/null | tr '\\0' a);"
                                        " echo ${#x}"], resources=Resources(memory=32 * MiB))
        assert (r.code, r.status.signal, r.status.oom_killed) == (137, 9, True)

    def test_within_the_limit_no_oom(self, rootfs: Rootfs) -> None:
        _any_cgroups()
        r = run_in(rootfs, ["sh", "-c", "dd if=/dev/zero bs=1M count=8 2>/dev/null | tail | wc -c"],
                   resources=Resources(memory=32 * MiB))
        assert (r.code, r.status.oom_killed) == (0, False)
        assert r.out.strip() == str(8 * MiB)

    def test_pids_limit_holds_a_fork_bomb(self, rootfs: Rootfs) -> None:
        _any_cgroups()
        bomb = ("(f() { f | f & }; f) 2>/dev/null & sleep 1.5; "
                "echo procs=$(ls /proc | grep -c '^[0-9]'); kill -9 -1 2>/dev/null; echo done")
        t0 = time.monotonic()
        r = run_in(rootfs, ["sh", "-c", bomb], resources=Resources(pids_limit=20))
        assert time.monotonic() - t0 < 30
        v = r.values()
        assert 1 < int(v["procs"]) <= 20
        assert r.status.stats["pids_max_events"] > 0      # the kernel refused forks

    def test_cpus_half_shows_throttling(self, rootfs: Rootfs) -> None:
        _any_cgroups()
        r = run_in(rootfs, ["sh", "-c", "timeout 1 sh -c 'while :; do :; done'; true"],
                   resources=Resources(cpu_quota=50_000))
        st = r.status.stats
        assert st["nr_throttled"] > 0 and st["throttled_ns"] > 0
        # 0.5 CPU for ~1 s: well below a full second of CPU time
        assert st["cpu_usage_ns"] < 0.8e9

    def test_the_container_sees_its_own_cgroup_read_only(self, rootfs: Rootfs) -> None:
        _v1_only()
        r = run_in(rootfs, ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
                                        "cat /sys/fs/cgroup/pids/pids.max; "
                                        "echo 1 > /sys/fs/cgroup/pids/pids.max; echo w=$?"],
                   resources=Resources(memory=48 * MiB, pids_limit=50))
        assert r.out.split() == [str(48 * MiB), "50", "w=1"]

    def test_limits_are_written_where_the_kernel_reads_them(self, rootfs: Rootfs) -> None:
        _v1_only()
        res = Resources(memory=64 * MiB, memory_swap=96 * MiB, cpu_quota=25_000, cpu_shares=512,
                        pids_limit=33)
        spec = make_spec(rootfs, ["sleep", "30"], resources=res)
        with open(os.devnull, "wb") as null:
            proc = sandbox.start(spec, rootfs_mounts=rootfs.mounts, stdio=(None, null, null))
            try:
                assert isinstance(proc.cgroup, CgroupV1)
                d = proc.cgroup.dirs
                assert int((d["memory"] / "memory.limit_in_bytes").read_text()) == 64 * MiB
                if (d["memory"] / "memory.memsw.limit_in_bytes").exists():
                    assert int((d["memory"] / "memory.memsw.limit_in_bytes").read_text()) == 96 * MiB
                assert (d["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
                assert (d["cpu"] / "cpu.shares").read_text().strip() == "512"
                assert (d["pids"] / "pids.max").read_text().strip() == "33"
                assert str(proc.pid) in (d["pids"] / "cgroup.procs").read_text().split()
                assert "freezer" in d                       # pause/unpause need it
                assert "c 1:3 rwm" in (d["devices"] / "devices.list").read_text()
            finally:
                proc.kill()
                proc.wait()
        assert not d["memory"].exists()                      # removed with the container


# -- the v2 driver -------------------------------------------------------------------------------------
def _fake_v2(tmp_path: Path, name: str, controllers: str = "cpu memory pids") -> Path:
    parent = tmp_path / "cg"
    parent.mkdir()
    (parent / "cgroup.controllers").write_text(controllers + "\n")
    (parent / "cgroup.subtree_control").write_text("")
    child = parent / name
    child.mkdir()
    for f in ("memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max", "cgroup.procs"):
        (child / f).write_text("")
    return parent


def test_v2_driver_writes_limit_files(tmp_path: Path) -> None:
    parent = _fake_v2(tmp_path, "pybuild-x")
    res = Resources(memory=32 * MiB, memory_swap=48 * MiB, cpu_quota=50_000, cpu_shares=1024,
                    pids_limit=20)
    cg = CgroupV2.create("pybuild-x", res, parent=parent)
    d = parent / "pybuild-x"
    assert (d / "memory.max").read_text() == str(32 * MiB)
    assert (d / "memory.swap.max").read_text() == str(16 * MiB)    # v2 counts swap alone
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "cpu.weight").read_text() == "39"
    assert (d / "pids.max").read_text() == "20"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (d / "cpu.stat").write_text("usage_usec 500000\nnr_periods 10\nnr_throttled 9\nthrottled_usec 4000\n")
    assert cg.oom_kills() == 1
    st = cg.stats()
    assert (st["nr_throttled"], st["throttled_ns"], st["cpu_usage_ns"]) == (9, 4_000_000, 500_000_000)


def test_v2_unlimited_swap_and_pids(tmp_path: Path) -> None:
    parent = _fake_v2(tmp_path, "pybuild-y")
    CgroupV2.create("pybuild-y", Resources(memory=32 * MiB, memory_swap=-1, pids_limit=-1), parent=parent)
    assert (parent / "pybuild-y" / "memory.swap.max").read_text() == "max"
    assert (parent / "pybuild-y" / "pids.max").read_text() == "max"


def test_v2_missing_controller_fails_closed(tmp_path: Path) -> None:
    parent = _fake_v2(tmp_path, "pybuild-z", controllers="cpu")
    with pytest.raises(CgroupError, match="memory"):
        CgroupV2.create("pybuild-z", Resources(memory=32 * MiB), parent=parent)


@pytest.mark.needs_root
def test_v2_driver_on_the_real_unified_hierarchy() -> None:
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified on this host")
    cg = CgroupV2.create(f"pybuild-t{os.getpid()}", Resources(), parent=UNIFIED)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cg.add(sleeper.pid)
        assert cg.pids() == [sleeper.pid]
        cg.kill()                                   # cgroup.kill
        assert sleeper.wait(timeout=5) == -9
    finally:
        sleeper.kill()
        sleeper.wait()
        cg.destroy()
    assert not cg.path.exists()


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_container_in_a_v2_cgroup_gets_nodev_devices(rootfs: Rootfs) -> None:
    """A container whose cgroup is v2: it gets a cgroup namespace and a read-only cgroup2 at
    /sys/fs/cgroup; with no devices controller (that needs BPF) it falls back to host device
    nodes bind-mounted into a nodev /dev and a nodev rootfs: mknod'ed nodes cannot be opened,
    so the device policy still holds."""
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified on this host")
    cg = CgroupV2.create(f"pybuild-c{os.getpid()}", Resources(), parent=UNIFIED)
    spec = make_spec(rootfs, ["sh", "-c", "cat /proc/self/cgroup | grep '^0::'; "
                                          "grep -c . /sys/fs/cgroup/cgroup.procs; "
                                          "grep ' /sys/fs/cgroup ' /proc/mounts | cut -d' ' -f3,4; "
                                          "mknod /tmp/d c 1 3 && echo x > /tmp/d; echo mknod_open=$?; "
                                          "echo x > /dev/null; echo null=$?; "
                                          "grep -c nodev /proc/mounts"])
    out_r, out_w = os.pipe()
    try:
        proc = sandbox.start(spec, rootfs_mounts=rootfs.mounts, stdio=(None, out_w, out_w), cgroup=cg)
    finally:
        os.close(out_w)
    st = proc.wait()
    text = os.read(out_r, 65536).decode()
    os.close(out_r)
    assert st.exit_code == 0
    lines = text.splitlines()
    assert lines[0] == "0::/"                       # a cgroup namespace rooted at its cgroup
    assert int(lines[1]) >= 1                       # ... whose procs it sees at /sys/fs/cgroup
    assert lines[2].startswith("cgroup2 ro,")
    assert "mknod_open=1" in text and "null=0" in text
    assert not cg.path.exists()


# -- v1 details and validation ---------------------------------------------------------------------------
def test_v1_missing_controller_with_a_limit_fails_closed(tmp_path: Path) -> None:
    mounts = {"memory": (tmp_path / "memory", "/")}
    (tmp_path / "memory").mkdir()
    with pytest.raises(CgroupError, match="pids controller is not mounted"):
        CgroupV1.create("pybuild-q", Resources(pids_limit=5), mounts=mounts, parents={})


@pytest.mark.parametrize(("res", "msg"), [
    (Resources(memory=1024), "below the 6 MiB minimum"),
    (Resources(memory_swap=64 * MiB), "needs --memory"),
    (Resources(memory=64 * MiB, memory_swap=32 * MiB), "at least --memory"),
    (Resources(cpu_shares=1), "out of range"),
    (Resources(cpu_quota=10), "kernel minimum"),
])
def test_resource_validation(res: Resources, msg: str) -> None:
    with pytest.raises(CgroupError, match=msg):
        res.validate()


def test_shares_to_weight_matches_runc() -> None:
    assert [shares_to_weight(s) for s in (2, 1024, 262144)] == [1, 39, 10000]


def test_oci_round_trip() -> None:
    res = Resources(memory=1 << 26, memory_swap=-1, cpu_quota=50000, cpu_shares=512, pids_limit=10)
    assert Resources.from_oci(res.to_oci()) == res
    assert res.to_oci()["pids"] == {"limit": 10}


def test_no_cgroups_and_no_limits_is_fine(tmp_path: Path) -> None:
    assert cgroups.create("pybuild-none", Resources(), root=tmp_path) is None
    with pytest.raises(CgroupError):
        cgroups.create("pybuild-none", Resources(memory=64 * MiB), root=tmp_path)
