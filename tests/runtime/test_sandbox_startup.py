"""The fast-start machinery of the sandbox (issue 4's latency target) keeps its promises: a
pre-spawned child runs the container like a fresh one and vanishes when unused; a command
that exits before start() returns keeps its exit status; PID 1 joins its cgroup itself;
ephemeral (`run --rm`) snapshots mount overlay 'volatile', skip fsyncs and refuse to be
committed or mounted twice; the child's JSON writer is json.dumps'."""

from __future__ import annotations

import json
import os
import random
import select
import tempfile
import time
from pathlib import Path

import pytest

from runtime import nsinit, sandbox
from runtime.snapshots import OverlaySnapshotter, SnapshotStateError, single_use
from tests.runtime import sandboxkit as kit
from tests.runtime.sandboxkit import Rootfs, make_spec

busybox_chain, rootfs, no_leaks = kit.busybox_chain, kit.rootfs, kit.no_leaks

root_overlay = [pytest.mark.needs_root, pytest.mark.needs_overlay, pytest.mark.usefixtures("no_leaks")]


def _output(proc_out: int) -> str:
    os.lseek(proc_out, 0, os.SEEK_SET)
    return os.read(proc_out, 65536).decode()


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_prespawned_child_runs_the_container(rootfs: Rootfs) -> None:
    with tempfile.TemporaryFile() as out:
        child = sandbox.spawn_child((None, out.fileno(), out.fileno()))
        time.sleep(0.05)                      # the container is decided later
        spec = make_spec(rootfs, ["sh", "-c", "echo pid=$$; cat /proc/self/cgroup"])
        status = sandbox.run(spec, rootfs_mounts=rootfs.mounts, child=child, forward_signals=False)
        text = _output(out.fileno())
    assert status.exit_code == 0
    assert "pid=1" in text
    assert child.used
    if Path("/sys/fs/cgroup/pids/tasks").is_file():       # cgroup v1: PID 1 joined by itself
        assert "pids:/pybuild-" in text or "pids:/" in text and "pybuild-" in text


@pytest.mark.needs_root
def test_unused_prespawned_child_exits_and_is_reaped() -> None:
    child = sandbox.spawn_child((None, None, None))
    pid = child.popen.pid
    child.close()
    assert child.popen.returncode == 125            # EOF on its control pipe: it gave up
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)                  # reaped already, no zombie left
    child.close()                                    # idempotent


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_a_child_made_for_a_terminal_is_refused_for_plain_stdio(rootfs: Rootfs) -> None:
    child = sandbox.spawn_child((None, None, None), terminal=True)
    spec = make_spec(rootfs, ["true"])                # no tty
    with pytest.raises(sandbox.SandboxError, match="does not fit"):
        sandbox.start(spec, rootfs_mounts=rootfs.mounts, child=child)
    assert child.popen.returncode is not None         # consumed and cleaned up


class _SlowSelect:
    """select.select that first gives the container time to exit (the race being tested)."""

    def __getattr__(self, name: str) -> object:
        return getattr(select, name)

    @staticmethod
    def select(*args: object) -> object:
        time.sleep(0.3)
        return select.select(*args)  # type: ignore[call-overload]


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_exit_of_a_command_gone_before_start_returns_is_kept(rootfs: Rootfs,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`true` can exit (and its shim report it) before start() has looked for setup errors;
    that message must reach wait(), not be swallowed (it used to give exit 255)."""
    monkeypatch.setattr(sandbox, "select", _SlowSelect())
    spec = make_spec(rootfs, ["sh", "-c", "exit 7"])
    with open(os.devnull, "wb") as null:
        proc = sandbox.start(spec, rootfs_mounts=rootfs.mounts, stdio=(None, null, null))
        assert proc.wait().exit_code == 7


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_fast_commands_always_report_their_status(rootfs: Rootfs) -> None:
    spec = make_spec(rootfs, ["true"])
    codes = [sandbox.run(spec, rootfs_mounts=rootfs.mounts, stdio=(None, None, None),
                         forward_signals=False).exit_code for _ in range(15)]
    assert codes == [0] * 15


# -- ephemeral snapshots ------------------------------------------------------------------------
@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_ephemeral_snapshot_is_volatile_and_single_use(busybox_chain: tuple[OverlaySnapshotter, str],
                                                       tmp_path: Path) -> None:
    sn, top = busybox_chain
    key = f"eph-{os.getpid()}-{tmp_path.name}"
    mounts = sn.prepare(key, top, ephemeral=True)
    try:
        info = sn.stat(key)
        assert info.ephemeral and info.kind == "active"
        meta = json.loads((sn.root / str(info.id) / "meta.json").read_text())
        assert meta["ephemeral"] is True
        assert mounts[0].type == "overlay" and "volatile" not in mounts[0].options
        assert sn.mounts(key) == mounts            # others (volume copy-up, cp) mount it plainly
        once = single_use(mounts)                  # the owner's one mount
        assert "volatile" in once[0].options and once[0].options[:-1] == mounts[0].options
        assert single_use(sn.mounts(top)) == sn.mounts(top)      # no upper: unchanged
        with pytest.raises(SnapshotStateError, match="ephemeral"):
            sn.commit(f"{key}-c", key)
        target = tmp_path / "root"
        target.mkdir()
        state = tmp_path / "state"
        state.mkdir()
        for name in ("hosts", "hostname", "resolv.conf"):
            (state / name).write_text("x\n")
        rf = Rootfs(sn, key, mounts, target, state)
        spec = make_spec(rf, ["sh", "-c", "echo data > /written; grep ' / ' /proc/self/mountinfo"])
        with tempfile.TemporaryFile() as out:
            assert sandbox.run(spec, rootfs_mounts=once, stdio=(None, out.fileno(), out.fileno()),
                               forward_signals=False).exit_code == 0
            text = _output(out.fileno())
        assert "volatile" in text
        assert (sn.upper_dir(key) / "written").read_text() == "data\n"     # data is there
        # mounted once: a second mount is refused by the kernel, with an explanation
        spec = make_spec(rf, ["true"])
        with pytest.raises(sandbox.SetupFailed, match="mounted already"):
            sandbox.run(spec, rootfs_mounts=mounts, stdio=(None, None, None), forward_signals=False)
    finally:
        sn.remove(key)
    assert not sn.exists(key)


def test_durable_snapshot_metadata_is_still_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only ephemeral snapshots skip fsync; layers and build steps stay crash-safe."""
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    sn = OverlaySnapshotter(tmp_path / "snaps")
    sn.prepare("durable", None)
    assert synced, "a durable snapshot's metadata must be fsynced"
    synced.clear()
    sn.prepare("eph", None, ephemeral=True)
    assert synced == []
    assert sn.stat("eph").ephemeral and not sn.stat("durable").ephemeral


def test_remove_of_an_active_snapshot_does_not_read_every_snapshot(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sn = OverlaySnapshotter(tmp_path / "snaps")
    for i in range(5):
        sn.prepare(f"base-{i}", None)
        sn.commit(f"layer-{i}", f"base-{i}")
    sn.prepare("work", "layer-0")
    walked: list[int] = []
    real_walk = sn.walk

    def counting_walk():  # type: ignore[no-untyped-def]
        walked.append(1)
        return real_walk()

    monkeypatch.setattr(sn, "walk", counting_walk)
    sn.remove("work")
    assert walked == []
    from runtime.snapshots import SnapshotInUse

    sn.prepare("work2", "layer-1")
    with pytest.raises(SnapshotInUse):
        sn.remove("layer-1")                     # a committed parent: still checked
    assert walked


# -- the child's message encoder ----------------------------------------------------------------
def test_child_json_writer_matches_json_dumps() -> None:
    rng = random.Random(7)
    docs: list[object] = [
        {"type": "error", "stage": "exec", "errno": 2, "argv0": "x\"y\\z\n\t\x01\x7f\b\f",
         "message": "é ☃ 𝄞 \udc80", "exit": 127},
        {"a": [1, -2, None, True, False, "s", 1.5], "b": {"c": []}, "n": 2**70},
    ]
    for _ in range(3000):
        text = "".join(chr(rng.choice((rng.randint(0, 0x7F), rng.randint(0x80, 0x10FFFF))))
                       for _ in range(rng.randint(0, 20)))
        docs.append({"k": text, "v": [rng.randint(-10**9, 10**9)]})
    for doc in docs:
        line = nsinit.dumps(doc)
        assert line == json.dumps(doc, separators=(",", ":"))
        assert json.loads(line) == doc
    with pytest.raises(TypeError):
        nsinit.dumps({"x": object()})


def test_control_frames_carry_json_types_only() -> None:
    r, w = os.pipe()
    try:
        sandbox._send_frame(w, {"spec": {"args": ("sh", "-c"), "n": 1, "none": None}})
        assert nsinit.recv_frame(r) == {"spec": {"args": ["sh", "-c"], "n": 1, "none": None}}
        with pytest.raises(TypeError):
            sandbox._send_frame(w, {"path": Path("/x")})
    finally:
        os.close(r)
        os.close(w)


def test_the_child_interpreter_stays_light() -> None:
    """Every container start waits for runtime.nsinit's imports: no json/re/enum/typing."""
    import subprocess
    import sys

    code = ("import sys; sys.path.append(sys.argv[1]); import runtime.nsinit; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, sandbox.PKG_ROOT], capture_output=True,
                         text=True, check=True, cwd="/").stdout.split()
    assert "runtime.nsinit" in out
    assert not {"json", "re", "enum", "typing", "signal", "pathlib"} & set(out)


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_prestart_finishes_before_the_command_runs(rootfs: Rootfs, tmp_path: Path) -> None:
    """The hook runs while PID 1 mounts its rootfs, but the command starts only after it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    seen: list[int] = []

    def prestart(pid: int) -> None:
        seen.append(pid)
        assert Path(f"/proc/{pid}/ns/net").exists()
        time.sleep(0.2)                       # slower than PID 1's own setup
        (shared / "flag").write_text("ready\n")

    spec = make_spec(rootfs, ["cat", "/mnt/flag"])
    spec["mounts"].append({"destination": "/mnt", "type": "bind", "source": str(shared),
                           "options": ["rbind", "rw"]})
    with tempfile.TemporaryFile() as out:
        status = sandbox.run(spec, rootfs_mounts=rootfs.mounts, stdio=(None, out.fileno(), out.fileno()),
                             prestart=prestart, forward_signals=False)
        text = _output(out.fileno())
    assert (status.exit_code, text) == (0, "ready\n")
    assert len(seen) == 1


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_setup_error_during_prestart_is_reported(rootfs: Rootfs) -> None:
    spec = make_spec(rootfs, ["true"], workdir="/etc/passwd/x")     # PID 1 fails at chdir
    with pytest.raises(sandbox.SandboxError) as info:
        sandbox.run(spec, rootfs_mounts=rootfs.mounts, stdio=(None, None, None),
                    prestart=lambda pid: time.sleep(0.2), forward_signals=False)
    assert "working directory" in str(info.value) or "Not a directory" in str(info.value)


@pytest.mark.needs_root
def test_child_gets_its_stdio_and_pipes_and_nothing_else(tmp_path: Path) -> None:
    """posix_spawn replaced subprocess: stdio entries (None, DEVNULL, fd, file object) land on
    0-2, the handshake pipes on 3..5, an inheritable fd of ours is not kept, cwd is /."""
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)
    with open(tmp_path / "out", "wb") as out:
        child = sandbox.spawn_child((sandbox.DEVNULL, out, out.fileno()))
        try:
            deadline = time.monotonic() + 5
            fds: dict[int, str] = {}
            while time.monotonic() < deadline:     # until nsinit has tidied up its fds
                try:
                    fds = {int(n): os.readlink(f"/proc/{child.popen.pid}/fd/{n}")
                           for n in os.listdir(f"/proc/{child.popen.pid}/fd")}
                except FileNotFoundError:          # an fd of the starting interpreter went
                    continue
                if max(fds) <= 5 and os.readlink(f"/proc/{child.popen.pid}/cwd") == "/":
                    break
                time.sleep(0.01)
            assert sorted(fds) == [0, 1, 2, 3, 4, 5]
            assert fds[0] == "/dev/null"
            assert fds[1] == fds[2] == str(tmp_path / "out")
            assert all(fds[n].startswith("pipe:") for n in (3, 4, 5))
            assert child.popen.poll() is None
            with pytest.raises(TimeoutError):
                child.popen.wait(timeout=0.05)
        finally:
            child.close()
            os.close(leak_r)
            os.close(leak_w)
    assert child.popen.returncode == 125


@pytest.mark.needs_root
def test_child_process_reports_signals_as_popen_does() -> None:
    child = sandbox.spawn_child((None, None, None))
    child.popen.kill()
    assert child.popen.wait() == -9
    child.used = True                     # nothing left to close but our pipe ends
    for fd in (child.ctl_w, child.msg_r, child.fifo_r):
        os.close(fd)


def test_file_action_errors_keep_their_type_message_and_hint() -> None:
    from runtime.errors import UnsafePath
    from runtime.fileops import FileActionError
    from runtime.users import UnknownUser

    def raised(err: dict[str, object]) -> BaseException:
        with pytest.raises(sandbox.SandboxError) as info:
            sandbox._apply_error(err)
        return info.value

    e = raised({"kind": "UnknownUser", "stage": "action", "message": "unable to find user bob: gone",
                "fields": {"what": "user", "name": "bob", "hint": "create bob first"}})
    assert isinstance(e, UnknownUser) and (e.what, e.name) == ("user", "bob")
    assert str(e) == "unable to find user bob: gone" and e.hint == "create bob first"
    e = raised({"kind": "FileActionError", "stage": "action", "message": "copy: no such source",
                "fields": {"hint": "check the path"}})
    assert isinstance(e, FileActionError) and str(e) == "copy: no such source" and e.hint == "check the path"
    e = raised({"kind": "UnsafePath", "message": "x", "fields": {"entry": "../a", "why": "escapes"}})
    assert isinstance(e, UnsafePath)
    e = raised({"kind": "OSError", "stage": "action", "message": "disk full",
                "fields": {"hint": "free space"}})
    assert type(e) is sandbox.SandboxError
    assert str(e) == "file action failed (action): disk full" and e.hint == "free space"


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.usefixtures("no_leaks")
def test_bind_mode_devices_cannot_change_the_hosts_nodes(rootfs: Rootfs) -> None:
    """Without a devices cgroup (cgroup v2 hosts, the builder's RUN) /dev holds bind mounts of
    the host's nodes: they work, but root in the container cannot chmod/chown/touch the
    host's inodes through them."""
    before = os.stat("/dev/null")
    spec = make_spec(rootfs, ["sh", "-c", "echo x > /dev/null; echo write=$?; "
                                          "head -c 3 /dev/zero | wc -c; "
                                          "chmod 600 /dev/null 2>/dev/zero; echo chmod=$?; "
                                          "chown 1 /dev/null 2>/dev/zero; echo chown=$?; "
                                          "touch /dev/null 2>/dev/zero; echo touch=$?"],
                     devices_cgroup=False)
    assert not (spec["linux"].get("resources") or {}).get("devices")
    with tempfile.TemporaryFile() as out:
        status = sandbox.run(spec, rootfs_mounts=rootfs.mounts, stdio=(None, out.fileno(), out.fileno()),
                             forward_signals=False)
        text = _output(out.fileno())
    assert status.exit_code == 0
    assert "write=0" in text and "3" in text.split()
    assert "chmod=0" not in text and "chown=0" not in text and "touch=0" not in text
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_uid, after.st_ctime_ns) == (before.st_mode, before.st_uid,
                                                                before.st_ctime_ns)
