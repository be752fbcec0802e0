"""Container lifecycle operations over the state store: start, stop, kill, rm, pause/unpause,
stats, top, cp, prune and the docker-shaped views (ps rows, inspect).

Every operation takes the container's flock (``Container.locked``) for its state transition,
and checks liveness by pid + start time, never by pid alone. Stdlib + registry (store helpers,
registry.timefmt for docker's durations) + runtime only; no printing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.timefmt import human_duration
from runtime.containers import (
    LIVE,
    ZERO_TIME,
    Container,
    ContainerError,
    ContainerState,
    ContainerStateError,
    ContainerStore,
    is_alive,
    parse_rfc3339,
    process_start_time,
)
from runtime.errors import SandboxError

STOP_GRACE_AFTER_KILL = 10.0


def container_store(root: Path) -> ContainerStore:
    return ContainerStore(root / "containers")


def parse_signal(text: str | int) -> signal.Signals:
    """``9``, ``KILL``, ``SIGKILL``, ``sigterm`` -> the signal."""
    if isinstance(text, int) or str(text).isdigit():
        try:
            return signal.Signals(int(text))
        except ValueError:
            raise ContainerError(f"invalid signal {text}") from None
    name = str(text).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise ContainerError(f"invalid signal {text!r}",
                             hint="use a name such as SIGTERM, or a number") from None


def _signal(st: ContainerState, sig: int) -> bool:
    if st.pid and is_alive(st.pid, st.pid_start):
        try:
            os.kill(st.pid, sig)
            return True
        except ProcessLookupError:
            return False
    return False


def wait_stopped(c: Container, timeout: float | None) -> ContainerState:
    """Poll until the container is no longer live (or the timeout passes); returns the state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        st = c.state()
        if st.status not in LIVE:
            return st
        if st.status != "restarting" and st.pid and not is_alive(st.pid, st.pid_start) \
                and not c.monitor_alive(st):
            return c.state()
        if deadline is not None and time.monotonic() >= deadline:
            return st
        time.sleep(0.02)


def wait_monitor_gone(c: Container, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = c.raw_state()
        if not st.monitor_pid or not is_alive(st.monitor_pid, st.monitor_start):
            return
        time.sleep(0.02)


# -- start / stop / kill --------------------------------------------------------------------------

def start_container(root: Path, c: Container) -> int:
    """Start a created or exited container under a new monitor (same writable layer); returns
    the container's pid. Starting a running container is a no-op that returns its pid."""
    from runtime.monitor import spawn

    with c.locked():
        st = c.state()
        if st.status in LIVE:
            if st.status == "paused":
                raise ContainerStateError(f"container {c.name} is paused",
                                          hint=f"unpause it with `pybuild unpause {c.name}`")
            return st.pid
        c.update_state(stop_requested=False, restart_count=0 if st.status == "created" else st.restart_count)
        return spawn(root, c)


def stop_container(c: Container, timeout: float | None = None) -> ContainerState:
    """Send the stop signal (the image's STOPSIGNAL, SIGTERM by default), wait ``timeout``
    seconds (the record's stop timeout by default), then SIGKILL. The restart policy does not
    bring a stopped container back."""
    r = c.record
    grace = r.stop_timeout if timeout is None else timeout
    st = c.state()
    if st.status not in LIVE:
        return st
    c.update_state(stop_requested=True)
    if st.status == "paused":
        unpause_container(c)
    sig = parse_signal(r.stop_signal or "SIGTERM")
    _signal(st, sig)
    st = wait_stopped(c, max(grace, 0))
    if st.status in LIVE:
        _signal(c.raw_state(), signal.SIGKILL)
        st = wait_stopped(c, STOP_GRACE_AFTER_KILL)
    wait_monitor_gone(c, 5.0)
    return c.state()


def kill_container(c: Container, sig: str | int = "SIGKILL") -> None:
    st = c.state()
    if st.status not in ("running", "paused"):
        raise ContainerStateError(f"cannot kill container {c.name}: it is not running")
    s = parse_signal(sig)
    c.update_state(stop_requested=True)      # docker: a killed container counts as stopped by hand
    if not _signal(st, s):
        raise ContainerStateError(f"cannot kill container {c.name}: its process is gone")
    if st.status == "paused" and s == signal.SIGKILL:
        with contextlib.suppress(SandboxError):
            unpause_container(c)       # frozen tasks die only once thawed


def restart_container(root: Path, c: Container, timeout: float | None = None) -> int:
    stop_container(c, timeout)
    wait_monitor_gone(c)
    return start_container(root, c)


# -- rm / prune -----------------------------------------------------------------------------------

def _copyfileobj(fin: Any, fout: Any) -> None:
    """shutil.copyfileobj, with shutil imported only by `cp` (it pulls bz2/lzma: ~2 ms that
    every `run --rm` would pay, since it removes its container through this module)."""
    import shutil

    shutil.copyfileobj(fin, fout, 1 << 20)


def _remove_snapshot(root: Path, c: Container) -> None:
    r = c.record
    if not r.snapshot_key:
        return
    import importlib

    try:
        snapshots = importlib.import_module("runtime.snapshots")
    except ImportError:
        return
    opener = getattr(snapshots, "open_snapshotter", None)
    if opener is not None:
        sn = opener(root / "snapshots", r.snapshotter or None)
    else:
        cls = getattr(snapshots, "CopySnapshotter" if r.snapshotter == "copy" else "OverlaySnapshotter")
        sn = cls(root / "snapshots")
    with contextlib.suppress(KeyError, FileNotFoundError, SandboxError):
        sn.remove(r.snapshot_key)


def _destroy_cgroups(st: ContainerState) -> None:
    for path in st.cgroup.values():
        p = Path(path)
        for pid in _read_pids(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while p.exists():
            try:
                p.rmdir()
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    break
                time.sleep(0.01)


def _read_pids(cg: Path) -> list[int]:
    try:
        return [int(x) for x in (cg / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_container(root: Path, c: Container, *, force: bool = False, volumes: bool = False,
                     monitor: bool = False) -> None:
    """``rm [-f] [-v]``: kill (with -f), then remove the network endpoint, cgroups, the
    writable layer, the anonymous volumes (with -v) and the record. ``monitor`` is True when the
    monitor itself removes its container (``--rm``)."""
    from runtime.network import detach_container

    st = c.state()
    if st.status in LIVE and not monitor:
        if not force:
            raise ContainerStateError(f"cannot remove container {c.name}: it is {st.status}",
                                      hint="stop it first, or use `rm -f`")
        c.update_state(stop_requested=True)
        if st.status == "paused":
            with contextlib.suppress(SandboxError):
                unpause_container(c)
        _signal(c.raw_state(), signal.SIGKILL)
        wait_stopped(c, STOP_GRACE_AFTER_KILL)
        wait_monitor_gone(c)
    if not monitor:
        wait_monitor_gone(c)      # an exiting monitor finishes its teardown and last state write
    st = c.raw_state()
    if st.pid and is_alive(st.pid, st.pid_start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(st.pid, signal.SIGKILL)
    c.update_state(status="removing")
    # `rm` returns with nothing of the container left on the host (its monitor's background
    # teardown included); the container's own run (--rm) leaves that to the background
    detach_container(root, c, wait=not monitor)
    _destroy_cgroups(st)
    _remove_snapshot(root, c)
    if volumes and any(m.type == "volume" for m in c.record.mounts):
        from runtime.volumes import VolumeStore, remove_anonymous, volumes_in_use

        vstore = VolumeStore(root / "volumes")
        remove_anonymous(vstore, c.record.mounts, volumes_in_use(c.store), c.id)
    c.store.remove(c)


def prune_containers(root: Path) -> list[str]:
    """Remove every stopped container; returns their IDs."""
    removed = []
    for c in container_store(root).list_all():
        try:
            if c.state().status in LIVE:
                continue
            remove_container(root, c)
            removed.append(c.id)
        except ContainerError:
            continue
    return removed


# -- pause / unpause ------------------------------------------------------------------------------

def _freezer(c: Container, st: ContainerState) -> tuple[Path, str, str]:
    if "freezer" in st.cgroup:
        return Path(st.cgroup["freezer"]) / "freezer.state", "FROZEN", "THAWED"
    if "" in st.cgroup:
        return Path(st.cgroup[""]) / "cgroup.freeze", "1", "0"
    path = _adopt_into_freezer(c, st)
    return path / "freezer.state", "FROZEN", "THAWED"


def _v1_freezer_root() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        rf = right.split()
        if len(rf) >= 3 and rf[0] == "cgroup" and "freezer" in rf[2].split(","):
            return Path(left.split()[4])
    return None


def _adopt_into_freezer(c: Container, st: ContainerState) -> Path:
    """cgroup v1 without a freezer cgroup for the container: make one and move every process
    of the container into it (until none is left outside: a fork during the move is caught by
    the next pass), record it in the state so rm removes it."""
    base = _v1_freezer_root()
    if base is None or not st.pid:
        raise ContainerStateError("pause: no freezer cgroup is available for this container",
                                  hint="cgroups are unavailable here (rootless on cgroup v1?)")
    path = base / f"pybuild-{c.id}"
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise ContainerStateError(f"pause: cannot create {path}: {exc.strerror}") from None
    for _ in range(100):
        inside = set(_read_pids(path))
        outside = [p for p in container_pids(c) if p not in inside]
        if not outside:
            break
        for pid in outside:
            with contextlib.suppress(OSError):
                (path / "cgroup.procs").write_text(str(pid))
    c.update_state(cgroup={**st.cgroup, "freezer": str(path)})
    return path


def _set_freeze(c: Container, frozen: bool) -> None:
    st = c.state()
    if st.status not in ("running", "paused"):
        raise ContainerStateError(f"container {c.name} is not running")
    path, on, off = _freezer(c, st)
    try:
        path.write_text(on if frozen else off)
    except OSError as exc:
        raise ContainerStateError(f"{'pause' if frozen else 'unpause'} {c.name}: {exc.strerror}") from None
    if path.name == "freezer.state":
        want = "FROZEN" if frozen else "THAWED"
        deadline = time.monotonic() + 5
        while path.read_text().strip() != want and time.monotonic() < deadline:
            time.sleep(0.01)
    c.update_state(status="paused" if frozen else "running")


def pause_container(c: Container) -> None:
    if c.state().status == "paused":
        raise ContainerStateError(f"container {c.name} is already paused")
    _set_freeze(c, True)


def unpause_container(c: Container) -> None:
    if c.state().status != "paused":
        raise ContainerStateError(f"container {c.name} is not paused")
    _set_freeze(c, False)


# -- stats / top ----------------------------------------------------------------------------------

def _read_int(p: Path) -> int | None:
    try:
        t = p.read_text().strip()
    except OSError:
        return None
    if t == "max":
        return None
    try:
        return int(t)
    except ValueError:
        return None


@dataclass(frozen=True)
class Stats:
    cpu_percent: float
    mem_usage: int
    mem_limit: int
    pids: int

    @property
    def mem_percent(self) -> float:
        return 100.0 * self.mem_usage / self.mem_limit if self.mem_limit else 0.0


def _host_memory() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_ns(st: ContainerState) -> int | None:
    if "cpuacct" in st.cgroup:
        return _read_int(Path(st.cgroup["cpuacct"]) / "cpuacct.usage")
    if "" in st.cgroup:
        with contextlib.suppress(OSError):
            for line in (Path(st.cgroup[""]) / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) * 1000
    return None


def container_stats(c: Container, *, interval: float = 0.5) -> Stats:
    """One sample (two reads of the CPU counter ``interval`` apart), as `stats --no-stream`."""
    st = c.state()
    if st.status not in ("running", "paused"):
        return Stats(0.0, 0, 0, 0)
    cg = st.cgroup
    t0, c0 = time.monotonic(), _cpu_ns(st)
    time.sleep(interval)
    t1, c1 = time.monotonic(), _cpu_ns(st)
    cpu = 0.0
    if c0 is not None and c1 is not None and t1 > t0:
        cpu = 100.0 * (c1 - c0) / ((t1 - t0) * 1e9)
    host = _host_memory()
    if "memory" in cg:
        m = Path(cg["memory"])
        usage = _read_int(m / "memory.usage_in_bytes") or 0
        limit = _read_int(m / "memory.limit_in_bytes") or host
        # v1 reports "unlimited" as a huge page-aligned number
        limit = host if host and limit > host else limit
    elif "" in cg:
        m = Path(cg[""])
        usage = _read_int(m / "memory.current") or 0
        limit = _read_int(m / "memory.max") or host
    else:
        usage, limit = 0, host
    if "pids" in cg:
        pids = _read_int(Path(cg["pids"]) / "pids.current") or 0
    elif "" in cg:
        pids = _read_int(Path(cg[""]) / "pids.current") or 0
    else:
        pids = len(container_pids(c))
    return Stats(cpu, usage, limit, pids)


def container_pids(c: Container) -> list[int]:
    """Host pids of every process in the container's PID namespace. A container sharing our
    PID namespace (no isolation) gets its init and that process's descendants only, never
    the host's processes."""
    st = c.state()
    if not st.pid or not is_alive(st.pid, st.pid_start):
        return []
    try:
        ns = Path(f"/proc/{st.pid}/ns/pid").readlink()
        shared = ns == Path("/proc/self/ns/pid").readlink()
    except OSError:
        return []
    members: list[int] = []
    parents: dict[int, int] = {}
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if shared:
                stat_text = Path(f"/proc/{e.name}/stat").read_text()
                parents[int(e.name)] = int(stat_text.rsplit(")", 1)[1].split()[1])
            elif Path(f"/proc/{e.name}/ns/pid").readlink() == ns:
                members.append(int(e.name))
    if not shared:
        return sorted(members)
    tree, frontier = {st.pid}, [st.pid]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sorted(tree)


def _clk() -> int:
    return os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def container_top(c: Container) -> tuple[list[str], list[list[str]]]:
    """``top``: the container's processes seen from the host (ps -ef columns)."""
    import pwd

    header = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    rows = []
    clk, boot = _clk(), _boot_time()
    for pid in container_pids(c):
        try:
            data = Path(f"/proc/{pid}/stat").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            uid = Path(f"/proc/{pid}").stat().st_uid
        except OSError:
            continue
        comm = data[data.find(b"(") + 1: data.rfind(b")")].decode(errors="replace")
        f = data[data.rfind(b")") + 2:].split()
        ppid, utime, stime, start = int(f[1]), int(f[11]), int(f[12]), int(f[19])
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        cputime = (utime + stime) // clk
        started = time.strftime("%H:%M", time.localtime(boot + start / clk))
        argv = " ".join(a.decode(errors="replace") for a in cmd if a) or f"[{comm}]"
        rows.append([user, str(pid), str(ppid), "0", started, "?",
                     f"{cputime // 3600:02d}:{cputime // 60 % 60:02d}:{cputime % 60:02d}", argv])
    return header, rows


# -- cp -------------------------------------------------------------------------------------------

def _root_fd(c: Container) -> int:
    """An O_PATH fd of the container's root as its processes see it (volumes included)."""
    st = c.state()
    if st.status not in ("running", "paused") or not st.pid:
        raise ContainerStateError(f"cp: container {c.name} is not running")
    return os.open(f"/proc/{st.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _in_stopped_root(root: Path, c: Container, fn: Callable[[int], None]) -> None:
    """Run ``fn(root_fd)`` with the stopped container's filesystem (its writable layer over
    the image, plus its volumes and binds) mounted in the private mount namespace of a forked
    child: nothing is mounted on the host. Root only."""
    import importlib

    from runtime.rootfs import in_private_root
    from runtime.volumes import VolumeStore, host_source

    if os.geteuid() != 0:
        raise ContainerStateError(f"cp: container {c.name} is not running",
                                  hint="rootless: start it first (a stopped container's files are "
                                       "only reachable through its user namespace)")
    r = c.record
    if not r.snapshot_key:
        raise ContainerStateError(f"cp: container {c.name} has no filesystem")
    run_mod = importlib.import_module("runtime.run")
    mounts = run_mod.open_snapshotter(root, r.snapshotter or None).mounts(r.snapshot_key)
    vstore = VolumeStore(root / "volumes")
    binds = [(str(host_source(vstore, m)), m.destination, m.readonly) for m in r.mounts
             if m.type in ("bind", "volume")]
    try:
        in_private_root(mounts, fn, binds=binds)
    except SandboxError as exc:
        raise ContainerError(str(exc), hint=exc.hint) from None


def _copy_fd_tree(src_dir: int, dst: Path) -> None:
    """Copy the directory open at ``src_dir`` into the (existing) host directory ``dst``,
    never following a symlink on the container side."""
    for name in sorted(os.listdir(src_dir)):
        st = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
        target = dst / name
        if stat.S_ISDIR(st.st_mode):
            target.mkdir(exist_ok=True)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
            try:
                _copy_fd_tree(fd, target)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(st.st_mode):
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            target.symlink_to(os.readlink(name, dir_fd=src_dir))
            continue
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
            with os.fdopen(fd, "rb") as fin, target.open("wb") as fout:
                _copyfileobj(fin, fout)
        else:
            continue
        target.chmod(stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_from_container(c: Container, src: str, dest: Path, *, root: Path | None = None) -> None:
    """``cp CONTAINER:SRC DEST``: ``src`` resolved inside the container's root (a stopped
    container's filesystem is mounted privately for the copy; ``root`` is the store root)."""
    if c.state().status in ("running", "paused"):
        rfd = _root_fd(c)
        try:
            _copy_out(c, rfd, src, dest)
        finally:
            os.close(rfd)
        return
    _in_stopped_root(root or c.store.root.parent, c, lambda rfd: _copy_out(c, rfd, src, dest))


def _copy_out(c: Container, root: int, src: str, dest: Path) -> None:
    from runtime import pathsafe

    parent, name = pathsafe.resolve_in_root(root, src, follow_last=True)
    try:
        if not name:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
        else:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        raise ContainerError(f"cp: no such file or directory in {c.name}: {src}") from None
    finally:
        os.close(parent)
    with contextlib.closing(_Fd(fd)):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            target = dest / (name or "root") if dest.is_dir() else dest
            target.mkdir(exist_ok=True)
            _copy_fd_tree(fd, target)
            target.chmod(stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            target = dest / name if dest.is_dir() else dest
            with os.fdopen(os.dup(fd), "rb") as fin, target.open("wb") as fout:
                _copyfileobj(fin, fout)
            target.chmod(stat.S_IMODE(st.st_mode))
        else:
            raise ContainerError(f"cp: {src} in {c.name} is not a regular file or directory")


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _write_into(dst_dir: int, name: str, src: Path) -> None:
    st = src.lstat()
    if stat.S_ISDIR(st.st_mode):
        try:
            os.mkdir(name, stat.S_IMODE(st.st_mode), dir_fd=dst_dir)
        except FileExistsError:
            pass
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst_dir)
        try:
            for child in sorted(src.iterdir()):
                _write_into(fd, child.name, child)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)
        return
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(name, dir_fd=dst_dir)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(str(src.readlink()), name, dir_fd=dst_dir)
        return
    if not stat.S_ISREG(st.st_mode):
        return
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 stat.S_IMODE(st.st_mode), dir_fd=dst_dir)
    with os.fdopen(fd, "wb") as fout, src.open("rb") as fin:
        _copyfileobj(fin, fout)
        os.fchmod(fout.fileno(), stat.S_IMODE(st.st_mode))


def copy_to_container(c: Container, src: Path, dest: str, *, root: Path | None = None) -> None:
    """``cp SRC CONTAINER:DEST``: ``dest`` resolved inside the container's root; into an
    existing directory when it is one, else as that name."""
    if not src.exists() and not src.is_symlink():
        raise ContainerError(f"cp: no such file or directory: {src}")
    if c.state().status in ("running", "paused"):
        rfd = _root_fd(c)
        try:
            _copy_in(rfd, src, dest)
        finally:
            os.close(rfd)
        return
    _in_stopped_root(root or c.store.root.parent, c, lambda rfd: _copy_in(rfd, src, dest))


def _copy_in(root: int, src: Path, dest: str) -> None:
    from runtime import pathsafe

    parent, name = pathsafe.resolve_in_root(root, dest, follow_last=True)
    try:
        try:
            is_dir = not name or stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            is_dir = False
        if is_dir:
            fd = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
            try:
                _write_into(fd, src.name, src)
            finally:
                os.close(fd)
        else:
            pfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
            try:
                _write_into(pfd, name, src)
            finally:
                os.close(pfd)
    finally:
        os.close(parent)


# -- views ----------------------------------------------------------------------------------------

def status_text(st: ContainerState, now: float | None = None) -> str:
    """The STATUS column: ``Up 3 seconds``, ``Exited (137) 2 seconds ago``, ``Created``..."""
    now = time.time() if now is None else now
    if st.status in ("running", "paused"):
        started = parse_rfc3339(st.started_at) or now
        text = f"Up {human_duration(now - started)}"
        return text + " (Paused)" if st.status == "paused" else text
    if st.status == "restarting":
        fin = parse_rfc3339(st.finished_at) or now
        return f"Restarting ({st.exit_code}) {human_duration(now - fin)} ago"
    if st.status == "exited":
        fin = parse_rfc3339(st.finished_at) or now
        return f"Exited ({st.exit_code}) {human_duration(now - fin)} ago"
    if st.status == "removing":
        return "Removal In Progress"
    if st.status == "dead":
        return "Dead"
    return "Created"


def ports_text(st: ContainerState) -> str:
    parts = []
    for settings in st.networks.values():
        for p in settings.get("Ports", ()):
            parts.append(f"{p['HostIp']}:{p['HostPort']}->{p['ContainerPort']}/{p['Proto']}")
    return ", ".join(parts)


def command_text(argv: tuple[str, ...], width: int = 20) -> str:
    cmd = " ".join(argv)
    return '"' + (cmd if len(cmd) <= width else cmd[: width - 1] + "…") + '"'


def ps_row(c: Container, now: float | None = None) -> dict[str, Any]:
    """One `ps` row with docker's `--format json` keys."""
    r, st = c.record, c.state()
    now = time.time() if now is None else now
    created = parse_rfc3339(r.created) or now
    return {"ID": c.short_id, "Image": r.image, "Command": command_text(r.argv),
            "CreatedAt": r.created, "RunningFor": f"{human_duration(now - created)} ago",
            "Status": status_text(st, now), "State": st.status, "Ports": ports_text(st),
            "Names": r.name, "Labels": ",".join(f"{k}={v}" for k, v in sorted(r.labels.items())),
            "Mounts": ",".join(m.source or m.destination for m in r.mounts),
            "Networks": ",".join(st.networks) or r.network}


def inspect_container(root: Path, c: Container) -> dict[str, Any]:
    """`inspect` for a container, docker-shaped."""
    from runtime.volumes import VolumeStore, host_source

    r, st = c.record, c.state()
    vstore = VolumeStore(root / "volumes")
    mounts = []
    for m in r.mounts:
        src = ""
        with contextlib.suppress(SandboxError):
            src = str(host_source(vstore, m)) if m.type in ("bind", "volume") else ""
        mounts.append({"Type": m.type, "Name": m.source if m.type == "volume" else None,
                       "Source": src, "Destination": m.destination, "Driver": "local"
                       if m.type == "volume" else None, "Mode": "", "RW": not m.readonly,
                       "Propagation": "rprivate" if m.type == "bind" else ""})
    ports: dict[str, Any] = {}
    for settings in st.networks.values():
        for p in settings.get("Ports", ()):
            ports.setdefault(f"{p['ContainerPort']}/{p['Proto']}", []).append(
                {"HostIp": p["HostIp"], "HostPort": str(p["HostPort"])})
    nets = {k: {kk: vv for kk, vv in v.items() if kk != "Ports"} for k, v in st.networks.items()}
    first = next(iter(nets.values()), {})
    return {
        "Id": c.id,
        "Created": r.created,
        "Path": r.argv[0] if r.argv else "",
        "Args": list(r.argv[1:]),
        "State": {"Status": st.status, "Running": st.status in ("running", "paused"),
                  "Paused": st.status == "paused", "Restarting": st.status == "restarting",
                  "OOMKilled": st.oom_killed, "Dead": st.status == "dead",
                  "Pid": st.pid if st.status in ("running", "paused") else 0,
                  "ExitCode": st.exit_code, "Error": st.error, "StartedAt": st.started_at,
                  "FinishedAt": st.finished_at},
        "Image": r.image_id,
        "LogPath": str(c.log_path),
        "Name": "/" + r.name,
        "RestartCount": st.restart_count,
        "Driver": r.snapshotter or "overlay",
        "Platform": "linux",
        "HostConfig": {"NetworkMode": r.network, "RestartPolicy": {
            "Name": r.restart_policy()[0], "MaximumRetryCount": r.restart_policy()[1]},
            "AutoRemove": r.auto_remove, "PortBindings": {
                f"{p.container_port}/{p.proto}": [{"HostIp": p.host_ip, "HostPort": str(p.host_port)}]
                for p in r.ports} or None,
            "Binds": [f"{m.source}:{m.destination}" + (":ro" if m.readonly else "")
                      for m in r.mounts if m.type == "bind"] or None,
            "Memory": int(r.resources.get("memory") or 0),
            "MemorySwap": int(r.resources.get("memory_swap") or 0),
            "NanoCpus": int(float(r.resources.get("cpus") or 0) * 1e9),
            "CpuShares": int(r.resources.get("cpu_shares") or 0),
            "PidsLimit": r.resources.get("pids_limit")},
        "Mounts": mounts,
        "Config": {"Hostname": r.hostname or c.short_id, "User": r.user, "Tty": r.tty,
                   "OpenStdin": r.interactive, "Env": list(r.env), "Cmd": list(r.argv),
                   "Image": r.image, "WorkingDir": r.working_dir, "Labels": dict(r.labels),
                   "StopSignal": r.stop_signal, "StopTimeout": r.stop_timeout,
                   "ExposedPorts": {f"{p.container_port}/{p.proto}": {} for p in r.ports} or None},
        "NetworkSettings": {"Ports": ports, "IPAddress": first.get("IPAddress", ""),
                            "Gateway": first.get("Gateway", ""), "MacAddress": first.get("MacAddress", ""),
                            "Networks": nets},
    }


def iter_containers(root: Path, *, all_: bool = True) -> Iterator[Container]:
    for c in container_store(root).list_all():
        try:
            live = c.state().status in LIVE
            c.record  # noqa: B018 - a record that cannot be read is skipped, not fatal
        except (ContainerError, ValueError, OSError):
            continue
        if all_ or live:
            yield c


__all__ = ["ZERO_TIME", "container_store", "start_container", "stop_container", "kill_container",
           "restart_container", "remove_container", "prune_containers", "pause_container",
           "unpause_container", "container_stats", "container_top", "container_pids",
           "copy_from_container", "copy_to_container", "ps_row", "inspect_container", "status_text",
           "human_duration", "iter_containers", "parse_signal", "wait_stopped", "Stats",
           "process_start_time"]
