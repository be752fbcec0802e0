"""The namespace sandbox on a real busybox rootfs (overlay, mounted inside the sandbox): the
isolation probe of the issue's "Must show", exit codes, signals, USER, mounts, the network
namespace, --init, the pty, and the promise that nothing leaks (mounts, cgroups, stubs)."""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

import pytest

from runtime import sandbox
from runtime import spec as S
from runtime.errors import ExecDenied, ExecNotFound
from tests.runtime import sandboxkit as kit
from tests.runtime.sandboxkit import Rootfs, make_spec, run_in

# the kit's fixtures, made visible to this module
busybox_chain, rootfs, no_leaks = kit.busybox_chain, kit.rootfs, kit.no_leaks

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_overlay, pytest.mark.usefixtures("no_leaks")]

DOCKER_DEFAULT_CAPBND = "00000000a80425fb"   # docker's 14 default capabilities

PROBE = r"""
echo "pid=$$"
echo "hostname=$(hostname)"
echo "capbnd=$(grep CapBnd /proc/self/status | cut -f2)"
echo "capeff=$(grep CapEff /proc/self/status | cut -f2)"
echo "nonewprivs=$(grep NoNewPrivs /proc/self/status | cut -f2)"
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2)"
for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/latency_stats; do
  [ -e $f ] && echo "masked $f=$(cat $f 2>/dev/null | wc -c)"
done
for d in /proc/acpi /proc/scsi /sys/firmware /proc/asound; do
  [ -d $d ] && echo "maskeddir $d=$(ls -A $d | wc -l)"
done
touch /sys/probe 2>/dev/null; echo "sys_write=$?"
(echo probe > /proc/sys/kernel/domainname) 2>/dev/null; echo "procsys_write=$?"
grep -q ' /sys sysfs ro,' /proc/mounts && echo "sys_ro=1"
grep -q ' /proc/sys proc ro,' /proc/mounts && echo "procsys_ro=1"
mount -t tmpfs none /mnt 2>/dev/null; echo "mount=$?"
unshare -m true 2>/dev/null; echo "unshare_m=$?"
unshare -U true 2>/dev/null; echo "unshare_u=$?"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
(ls /proc/1/fd > /tmp/fds)  # a subshell: $(...) or a redirect would hold an fd in PID 1
echo "fds=$(tr '\n' ' ' < /tmp/fds)"
echo "netdevs=$(ls /sys/class/net | tr '\n' ' ')"
echo "lo=$(cat /sys/class/net/lo/flags)"
echo "etc_hostname=$(cat /etc/hostname)"
echo "resolv=$(cat /etc/resolv.conf)"
echo "devs=$(ls /dev | tr '\n' ' ')"
"""


def test_probe_shows_the_isolation(rootfs: Rootfs) -> None:
    r = run_in(rootfs, ["sh", "-c", PROBE], hostname="probe-host")
    assert r.code == 0, r.err
    v = r.values()
    assert v["pid"] == "1"
    assert v["hostname"] == "probe-host"
    assert v["capbnd"] == DOCKER_DEFAULT_CAPBND
    assert v["capeff"] == DOCKER_DEFAULT_CAPBND
    assert v["nonewprivs"] == "1"
    assert v["seccomp"] == "2"
    masked = {k: val for k, val in v.items() if k.startswith(("masked ", "maskeddir "))}
    assert masked, r.out                                   # at least some of them exist here
    assert all(val == "0" for val in masked.values()), masked
    assert v["sys_write"] != "0" and v.get("sys_ro") == "1"
    assert v["procsys_write"] != "0" and v.get("procsys_ro") == "1"
    assert v["mount"] != "0"
    assert v["unshare_m"] != "0"
    assert v["unshare_u"] != "0"                           # seccomp: no new user namespace either
    assert int(v["procs"]) <= 4                            # sh, ls, grep (+ the subshell): no host pids
    assert v["fds"].split() == ["0", "1", "2"]
    assert v["netdevs"].split() == ["lo"]
    assert int(v["lo"], 16) & 1                            # IFF_UP
    assert v["etc_hostname"] == "probe"                    # the state dir's file, bind-mounted
    assert v["resolv"] == "nameserver 192.0.2.53"
    assert set(v["devs"].split()) >= {"null", "zero", "full", "random", "urandom", "tty", "pts",
                                      "shm", "mqueue", "ptmx", "fd", "stdin", "stdout", "stderr"}


def test_devices_outside_the_allowlist_cannot_be_opened(rootfs: Rootfs) -> None:
    r = run_in(rootfs, ["sh", "-c", "mknod /tmp/disk b 8 0 && head -c1 /tmp/disk; echo rc=$?; "
                                     "head -c4 /dev/zero | wc -c"])
    assert "rc=1" in r.out, r.out + r.err
    assert r.out.strip().endswith("4")


def test_exit_code_passes_through(rootfs: Rootfs) -> None:
    assert run_in(rootfs, ["sh", "-c", "exit 42"]).code == 42


def test_command_not_found_is_127(rootfs: Rootfs) -> None:
    with pytest.raises(ExecNotFound) as info:
        run_in(rootfs, ["no-such-command"])
    assert info.value.exit_code == 127
    assert "no-such-command" in str(info.value)
    with pytest.raises(ExecNotFound):
        run_in(rootfs, ["/bin/missing"])


def test_not_executable_is_126(rootfs: Rootfs) -> None:
    with pytest.raises(ExecDenied) as info:
        run_in(rootfs, ["/etc/passwd"])
    assert info.value.exit_code == 126
    with pytest.raises(ExecDenied):
        run_in(rootfs, ["/tmp"])


def test_killed_by_signal_is_128_plus_n(rootfs: Rootfs) -> None:
    spec = make_spec(rootfs, ["sleep", "30"])
    with open(os.devnull, "wb") as null:
        proc = sandbox.start(spec, rootfs_mounts=rootfs.mounts, stdio=(None, null, null))
        proc.kill()
        st = proc.wait()
    assert (st.exit_code, st.signal) == (137, 9)


def test_signals_reach_pid1(rootfs: Rootfs, tmp_path: Path) -> None:
    spec = make_spec(rootfs, ["sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; "
                                          "while :; do sleep 0.05; done"])
    r, w = os.pipe()
    try:
        proc = sandbox.start(spec, rootfs_mounts=rootfs.mounts, stdio=(None, w, w))
    finally:
        os.close(w)
    assert select.select([r], [], [], 10)[0]
    assert os.read(r, 100).startswith(b"ready")
    proc.signal(signal.SIGTERM)
    st = proc.wait()
    rest = os.read(r, 100)
    os.close(r)
    assert st.exit_code == 42 and b"got-term" in rest


def test_pid1_without_handler_ignores_sigterm_like_docker(rootfs: Rootfs) -> None:
    spec = make_spec(rootfs, ["sleep", "30"])
    with open(os.devnull, "wb") as null:
        proc = sandbox.start(spec, rootfs_mounts=rootfs.mounts, stdio=(None, null, null))
        proc.signal(signal.SIGTERM)
        time.sleep(0.2)
        assert proc.popen.poll() is None        # still running: PID 1 has no handler
        proc.kill()
        assert proc.wait().exit_code == 137


@pytest.mark.parametrize(("user", "expect"), [
    ("", "uid=0(root) gid=0(root) groups=0(root),10(wheel)"),
    ("www-data", "uid=33(www-data) gid=33(www-data) groups=33(www-data)"),
    ("1234", "uid=1234 gid=0(root) groups=0(root)"),
    ("nobody:wheel", "uid=65534(nobody) gid=10(wheel) groups=10(wheel)"),
    ("33:1", "uid=33(www-data) gid=1(daemon) groups=1(daemon)"),
])
def test_user_resolution(rootfs: Rootfs, user: str, expect: str) -> None:
    r = run_in(rootfs, ["sh", "-c", "id; echo HOME=$HOME; grep CapEff /proc/self/status"], user=user)
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == expect
    if user in ("", "nobody:wheel"):
        assert ("HOME=/root" if not user else "HOME=/home") in r.out
    # a non-root user keeps no effective capabilities after exec (docker's behaviour)
    assert r.out.strip().endswith("0000000000000000") == (user not in ("",))


def test_unknown_user_fails_setup(rootfs: Rootfs) -> None:
    with pytest.raises(sandbox.SetupFailed) as info:
        run_in(rootfs, ["id"], user="nosuchuser")
    assert "unable to find user nosuchuser" in str(info.value)
    assert info.value.exit_code == 125


def test_environment_and_workdir(rootfs: Rootfs) -> None:
    r = run_in(rootfs, ["sh", "-c", "echo $FOO; echo $HOSTNAME; echo $PATH; pwd"],
               env=("FOO=bar",), workdir="/var/new/dir")
    assert r.out.split() == ["bar", "probe", S.DEFAULT_PATH, "/var/new/dir"]


def test_stubs_do_not_reach_the_writable_layer(rootfs: Rootfs) -> None:
    """/etc/hosts etc. and mount points created for the run are removed afterwards: a build
    step's diff contains only what the command wrote."""
    r = run_in(rootfs, ["sh", "-c", "echo data > /root/file; ls /etc/hosts /data"],
               mounts=(S.tmpfs_mount("/data"),))
    assert r.code == 0, r.err
    upper = rootfs.upper
    found = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert found in (["root", "root/file"], ["etc", "root", "root/file"]), found
    if "etc" in found:
        # /etc was copied up for the /etc/hosts mount point: its metadata is the lower's again
        lower = rootfs.snapshotter.parent_paths(rootfs.key)[0] / "etc"
        a, b = (upper / "etc").stat(), lower.stat()
        assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == (b.st_mode, b.st_uid, b.st_gid,
                                                                   b.st_mtime_ns)
        assert not list((upper / "etc").iterdir())


def test_read_only_rootfs_and_tmpfs(rootfs: Rootfs) -> None:
    r = run_in(rootfs, ["sh", "-c", "touch /x; echo a=$?; touch /run/x; echo b=$?; "
                                    "grep ' /run ' /proc/mounts"],
               read_only=True, mounts=(S.tmpfs_mount("/run", ["size=1m"]),))
    v = r.values()
    assert v["a"] != "0" and v["b"] == "0"
    assert "nosuid,nodev,noexec" in r.out


def test_bind_mounts_rw_and_ro(rootfs: Rootfs, tmp_path: Path) -> None:
    host = tmp_path / "vol"
    host.mkdir()
    (host / "in.txt").write_text("from-host")
    r = run_in(rootfs, ["sh", "-c", "cat /v/in.txt; echo out > /v/out.txt; echo > /r/x; echo r=$?"],
               mounts=(S.bind_mount(str(host), "/v"), S.bind_mount(str(host), "/r", readonly=True)))
    assert r.out.startswith("from-host")
    assert (host / "out.txt").read_text() == "out\n"
    assert "r=1" in r.out


def test_bind_destination_symlink_stays_inside_the_rootfs(rootfs: Rootfs, tmp_path: Path) -> None:
    """A hostile image whose mount point is a symlink to a host path cannot make the sandbox
    mount over that host path: the target is resolved inside the rootfs (openat2)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (rootfs.upper / "evil").symlink_to(str(victim))
    host = tmp_path / "vol"
    host.mkdir()
    (host / "marker").write_text("x")
    r = run_in(rootfs, ["sh", "-c", f"ls {victim}"], mounts=(S.bind_mount(str(host), "/evil"),))
    assert r.out.split() == ["marker"]         # it landed inside the container ...
    assert list(victim.iterdir()) == []        # ... and the host directory never saw it


def test_host_network(rootfs: Rootfs) -> None:
    """--network host: the container is in the host's network namespace (the same inode), so
    it sees the host's devices. Compared by namespace identity: the host's device list may
    change meanwhile (another run's bridge being torn down in the background)."""
    before = set(os.listdir("/sys/class/net"))
    r = run_in(rootfs, ["sh", "-c", "readlink /proc/self/ns/net; ls /sys/class/net"], network="host")
    after = set(os.listdir("/sys/class/net"))
    ns, *devs = r.out.split()
    assert ns == os.readlink("/proc/self/ns/net")
    assert before & after <= set(devs) <= before | after


def test_init_reaps_and_forwards(rootfs: Rootfs) -> None:
    r = run_in(rootfs, ["sh", "-c", "echo pid=$$; (sleep 0.1 &) ; sleep 0.3; "
                                    "echo zombies=$(grep -l '^State:.Z' /proc/[0-9]*/status | wc -l); "
                                    "exit 7"], init=True)
    v = r.values()
    assert v["pid"] != "1" and v["zombies"] == "0"
    assert r.code == 7


def test_init_reports_signal_deaths_as_128_plus_n(rootfs: Rootfs) -> None:
    r = run_in(rootfs, ["sh", "-c", "kill -KILL $$"], init=True)
    assert r.code == 137


def test_privileged_and_cap_changes(rootfs: Rootfs) -> None:
    r = run_in(rootfs, ["sh", "-c", "grep CapBnd /proc/self/status | cut -f2"],
               cap_drop=("ALL",), cap_add=("NET_BIND_SERVICE",))
    assert r.out.strip() == f"{1 << 10:016x}"
    r = run_in(rootfs, ["sh", "-c", "grep CapBnd /proc/self/status | cut -f2; "
                                    "grep NoNewPrivs /proc/self/status | cut -f2; "
                                    "mount -t tmpfs none /tmp && echo mounted"], privileged=True)
    lines = r.out.split()
    assert int(lines[0], 16) & (1 << 21)        # CAP_SYS_ADMIN
    assert lines[1:] == ["0", "mounted"]


def test_tty_is_a_real_pty(rootfs: Rootfs) -> None:
    spec = make_spec(rootfs, ["sh", "-c", "tty; stty size; read line; echo got:$line"], tty=True)
    proc = sandbox.start(spec, rootfs_mounts=rootfs.mounts, stdio=(None, None, None))
    assert proc.console is not None
    try:
        proc.resize(33, 101)
        os.write(proc.console, b"hello\n")
        out = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not select.select([proc.console], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(proc.console, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        st = proc.wait()
    finally:
        proc.close()
    text = out.decode().replace("\r", "")
    assert st.exit_code == 0
    assert "/dev/pts/0" in text and "got:hello" in text
    assert "33 101" in text


def test_setup_failure_names_the_step(rootfs: Rootfs, tmp_path: Path) -> None:
    with pytest.raises(sandbox.SetupFailed) as info:
        run_in(rootfs, ["true"], mounts=(S.bind_mount(str(tmp_path / "missing"), "/x"),))
    assert "mount /x" in str(info.value)


def test_a_killed_parent_takes_the_container_and_its_cgroup_down(rootfs: Rootfs, tmp_path: Path) -> None:
    """SIGKILL the process that started the container: PID 1 dies (PDEATHSIG chain) and the
    shim removes the cgroup, so nothing is left behind even without the parent's cleanup."""
    import json
    import subprocess
    import sys

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec(rootfs, ["sleep", "60"])))
    mounts = json.dumps([m.to_dict() for m in rootfs.mounts])
    code = ("import json, sys, time; from runtime import sandbox; "
            f"spec = json.load(open({str(spec_file)!r})); "
            f"p = sandbox.start(spec, rootfs_mounts=json.loads({mounts!r})); "
            "print(json.dumps([p.pid, p.cgroup.paths() if p.cgroup else {}]), flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert parent.stdout is not None
    pid1, paths = json.loads(parent.stdout.readline())
    assert Path(f"/proc/{pid1}").exists()
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (Path(f"/proc/{pid1}").exists()
                                           or any(Path(p).exists() for p in paths.values())):
        time.sleep(0.05)
    assert not Path(f"/proc/{pid1}").exists()
    assert paths and not any(Path(p).exists() for p in paths.values())
