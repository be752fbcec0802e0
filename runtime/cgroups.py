"""Control groups for containers: one interface over a cgroup v1 and a v2 driver. ``create(name,
resources)`` makes the container's cgroup (v1: per controller, under the caller's own; v2: at the root,
or in the delegated subtree rootless), writes the limits (fail closed: every asked limit is applied or
the call fails) and returns the handle for PID 1, OOM and stats, kill-all, removal. Imports
runtime.errors only."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import SandboxError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP2_SUPER_MAGIC = 0x63677270
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "devices", "freezer")

# Docker's default device allowlist (cgroup v1 devices.allow syntax): mknod of anything,
# read/write only the harmless character devices and the container's own ptys.
DEFAULT_DEVICE_RULES = (
    "c *:* m", "b *:* m",
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",   # null zero full random urandom
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm",                              # tty console ptmx
    "c 136:* rwm",                                                      # /dev/pts/*
    "c 10:200 rwm",                                                     # /dev/net/tun
)


class CgroupError(SandboxError):
    """A cgroup could not be created, configured or removed."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"cgroups: {message}", hint=hint)


@dataclass(frozen=True, slots=True)
class Resources:
    """Limits in docker's units: bytes, CFS microseconds, shares, a process count."""

    memory: int | None = None          # memory limit, bytes
    memory_swap: int | None = None     # memory + swap, bytes; -1 = unlimited swap
    cpu_quota: int | None = None       # CFS quota per period (µs); --cpus 0.5 -> 50000
    cpu_period: int = 100_000
    cpu_shares: int | None = None      # relative weight, 2..262144 (v2: converted to cpu.weight)
    pids_limit: int | None = None      # max processes; <= 0 = unlimited

    def empty(self) -> bool:
        return (self.memory is None and self.memory_swap is None and self.cpu_quota is None
                and self.cpu_shares is None and self.pids_limit is None)

    def validate(self) -> None:
        if self.memory is not None and self.memory < 6 * 1024 * 1024:
            raise CgroupError(f"memory limit {self.memory} bytes is below the 6 MiB minimum")
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory is None:
                raise CgroupError("--memory-swap needs --memory")
            if self.memory_swap < self.memory:
                raise CgroupError("--memory-swap must be at least --memory (it is memory + swap)")
        if self.cpu_shares is not None and not 2 <= self.cpu_shares <= 262144:
            raise CgroupError(f"cpu shares {self.cpu_shares} out of range 2..262144")
        if self.cpu_quota is not None and self.cpu_quota < 1000:
            raise CgroupError(f"cpu quota {self.cpu_quota}µs is below the kernel minimum (1000µs)")

    def to_oci(self) -> dict[str, Any]:
        """The OCI runtime-spec ``linux.resources`` object (without devices)."""
        out: dict[str, Any] = {}
        if self.memory is not None or self.memory_swap is not None:
            mem: dict[str, int] = {}
            if self.memory is not None:
                mem["limit"] = self.memory
            if self.memory_swap is not None:
                mem["swap"] = self.memory_swap
            out["memory"] = mem
        if self.cpu_quota is not None or self.cpu_shares is not None:
            cpu: dict[str, int] = {}
            if self.cpu_quota is not None:
                cpu["quota"] = self.cpu_quota
                cpu["period"] = self.cpu_period
            if self.cpu_shares is not None:
                cpu["shares"] = self.cpu_shares
            out["cpu"] = cpu
        if self.pids_limit is not None:
            out["pids"] = {"limit": self.pids_limit if self.pids_limit > 0 else -1}
        return out

    @classmethod
    def from_oci(cls, d: dict[str, Any] | None) -> Resources:
        d = d or {}
        mem, cpu, pids = d.get("memory") or {}, d.get("cpu") or {}, d.get("pids") or {}
        return cls(memory=mem.get("limit"), memory_swap=mem.get("swap"),
                   cpu_quota=cpu.get("quota"), cpu_period=cpu.get("period") or 100_000,
                   cpu_shares=cpu.get("shares"), pids_limit=pids.get("limit"))


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) -> v2 cpu.weight (1..10000), the mapping runc and crun
    use, so 1024 shares (the default) become weight 39."""
    return 1 + ((shares - 2) * 9999) // 262142


# -- helpers -------------------------------------------------------------------------------------
def _write(path: Path, value: str | int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"cannot open {path}: {exc.strerror}") from None
    try:
        os.write(fd, str(value).encode())
    except OSError as exc:
        raise CgroupError(f"write {value!r} to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value.split()[0]) if value else 0
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


def _rmdir(path: Path, deadline: float) -> None:
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove {path}: {exc.strerror}") from None
            time.sleep(0.005)


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- discovery ---------------------------------------------------------------------------------
def detect(root: Path = CGROUP_ROOT) -> str | None:
    """'v2' (unified), 'v1' (legacy or hybrid: the controllers live in v1 hierarchies) or None."""
    if (root / "cgroup.controllers").is_file():
        return "v2"
    if (root / "memory" / "tasks").is_file() or (root / "pids" / "tasks").is_file() \
            or (root / "cpu" / "tasks").is_file():
        return "v1"
    return None


def _self_cgroups(proc: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """controller -> path of this process ("" key for the v2 unified entry)."""
    out: dict[str, str] = {}
    for line in proc.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            out[c] = path
    return out


def _v1_mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> dict[str, tuple[Path, str]]:
    """controller -> (mount point, root of the mount) for the v1 hierarchies."""
    out: dict[str, tuple[Path, str]] = {}
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) < 3 or rfields[0] != "cgroup":
            continue
        for opt in rfields[2].split(","):
            if opt in V1_CONTROLLERS and opt not in out:
                out[opt] = (Path(fields[4].replace("\\040", " ")), fields[3])
    return out



def hybrid_v2_mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """The cgroup2 mount points of a hybrid host whose v2 hierarchy still holds a controller
    (here: hugetlb, the one controller not mounted as v1); [] on a pure v1 or pure v2 host.

    crun 1.x refuses such a host ("cgroups in hybrid mode not supported"). ``run_runtime``
    detaches these mounts in the runtime's private mount namespace, so crun sees plain v1;
    pybuild never sets a limit that only v2 could hold there (hugetlb)."""
    if not _v1_mounts(mountinfo):
        return []
    out = []
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] != ["cgroup2"]:
            continue
        point = left.split()[4].replace("\\040", " ")
        try:
            controllers = (Path(point) / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if controllers:
            out.append(point)
    return out

# -- drivers -----------------------------------------------------------------------------------
class Cgroup:
    """The container's cgroup (either version). Not thread-safe; owned by one sandbox parent."""

    version = 0

    def add(self, pid: int) -> None:
        raise NotImplementedError

    def self_join_files(self) -> list[str]:
        """Files a single-threaded process writes "0" to, to move *itself* into this cgroup
        (instead of ``add(pid)`` from outside); [] when the driver has none. See CgroupV1."""
        return []

    def pids(self) -> list[int]:
        raise NotImplementedError

    def oom_kills(self) -> int:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        raise NotImplementedError

    def paths(self) -> dict[str, str]:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL every process left in the cgroup."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            _kill_pids(pids)
            time.sleep(0.002)

    def destroy(self, *, timeout: float = 5.0) -> None:
        raise NotImplementedError


class CgroupV1(Cgroup):
    version = 1

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @classmethod
    def create(cls, name: str, resources: Resources, *, devices: bool = True,
               root: Path = CGROUP_ROOT, mounts: dict[str, tuple[Path, str]] | None = None,
               parents: dict[str, str] | None = None) -> CgroupV1:
        mounts = _v1_mounts() if mounts is None else mounts
        parents = _self_cgroups() if parents is None else parents
        # freezer: `pybuild pause` (the lifecycle verbs) freezes the container through it
        wanted = ["memory", "cpu", "cpuacct", "pids", "freezer"] + (["devices"] if devices else [])
        need = _needed_v1(resources)
        dirs: dict[str, Path] = {}
        for ctl in wanted:
            if ctl not in mounts:
                if ctl in need:
                    raise CgroupError(f"the {ctl} controller is not mounted",
                                      hint=f"mount the cgroup v1 {ctl} hierarchy, or drop the limit")
                continue
            mnt, mroot = mounts[ctl]
            own = parents.get(ctl, "/")
            rel = own[len(mroot):] if mroot != "/" and own.startswith(mroot) else own
            base = mnt / rel.lstrip("/")
            if not base.is_dir():
                base = mnt
            dirs[ctl] = base / name
        cg = cls(dirs)
        try:
            for path in dirs.values():
                try:
                    path.mkdir()
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise CgroupError(f"cannot create {path}: {exc.strerror}",
                                      hint="run as root, or drop the resource flags") from None
            cg._apply(resources, devices=devices and "devices" in dirs)
        except BaseException:
            cg.destroy(timeout=0.5)
            raise
        return cg

    def _apply(self, r: Resources, *, devices: bool) -> None:
        r.validate()
        d = self.dirs
        if r.memory is not None:
            _write(d["memory"] / "memory.limit_in_bytes", r.memory)
            if r.memory_swap is None:
                # docker: with --memory alone, swap may add as much again (memory+swap = 2x)
                swap_total = 2 * r.memory
                if (d["memory"] / "memory.memsw.limit_in_bytes").exists():
                    _write(d["memory"] / "memory.memsw.limit_in_bytes", swap_total)
            else:
                memsw = d["memory"] / "memory.memsw.limit_in_bytes"
                if not memsw.exists():
                    raise CgroupError("--memory-swap: swap accounting is off in this kernel "
                                      "(memory.memsw.* missing)",
                                      hint="boot with swapaccount=1, or drop --memory-swap")
                _write(memsw, -1 if r.memory_swap == -1 else r.memory_swap)
        if r.cpu_quota is not None:
            _write(d["cpu"] / "cpu.cfs_period_us", r.cpu_period)
            _write(d["cpu"] / "cpu.cfs_quota_us", r.cpu_quota)
        if r.cpu_shares is not None:
            _write(d["cpu"] / "cpu.shares", r.cpu_shares)
        if r.pids_limit is not None:
            _write(d["pids"] / "pids.max", r.pids_limit if r.pids_limit > 0 else "max")
        if devices:
            _write(d["devices"] / "devices.deny", "a")
            for rule in DEFAULT_DEVICE_RULES:
                _write(d["devices"] / "devices.allow", rule)

    def add(self, pid: int) -> None:
        for path in self.dirs.values():
            _write(path / "cgroup.procs", pid)

    def self_join_files(self) -> list[str]:
        """Each controller's ``tasks`` file. Writing another process's pid (``add``) makes the
        kernel take the global threadgroup rwsem for writing, which waits for an RCU grace
        period (~10 ms here); a thread moving itself with "0" skips that lock (Linux >= 5.17)
        and costs ~0.2 ms. For a single-threaded process, moving the thread moves it all."""
        return [str(path / "tasks") for path in self.dirs.values()]

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for path in self.dirs.values():
            with contextlib.suppress(OSError):
                seen.update(int(x) for x in (path / "cgroup.procs").read_text().split())
        return sorted(seen)

    def oom_kills(self) -> int:
        mem = self.dirs.get("memory")
        if mem is None:
            return 0
        return _read_kv(mem / "memory.oom_control").get("oom_kill", 0)

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if "cpu" in self.dirs:
            st = _read_kv(self.dirs["cpu"] / "cpu.stat")
            out.update(nr_periods=st.get("nr_periods", 0), nr_throttled=st.get("nr_throttled", 0),
                       throttled_ns=st.get("throttled_time", 0))
        if "cpuacct" in self.dirs:
            out["cpu_usage_ns"] = _read_int(self.dirs["cpuacct"] / "cpuacct.usage") or 0
        if "memory" in self.dirs:
            m = self.dirs["memory"]
            out.update(memory_usage=_read_int(m / "memory.usage_in_bytes") or 0,
                       memory_max_usage=_read_int(m / "memory.max_usage_in_bytes") or 0,
                       memory_failcnt=_read_int(m / "memory.failcnt") or 0,
                       oom_kills=self.oom_kills())
        if "pids" in self.dirs:
            out["pids_current"] = _read_int(self.dirs["pids"] / "pids.current") or 0
            out["pids_max_events"] = _read_kv(self.dirs["pids"] / "pids.events").get("max", 0)
        return out

    def paths(self) -> dict[str, str]:
        return {ctl: str(p) for ctl, p in self.dirs.items()}

    def destroy(self, *, timeout: float = 5.0) -> None:
        self.kill()
        deadline = time.monotonic() + timeout
        errors = []
        for path in self.dirs.values():
            try:
                _rmdir(path, deadline)
            except CgroupError as exc:
                errors.append(str(exc))
        if errors:
            raise CgroupError("; ".join(errors))


def _needed_v1(r: Resources) -> set[str]:
    need = set()
    if r.memory is not None or r.memory_swap is not None:
        need.add("memory")
    if r.cpu_quota is not None or r.cpu_shares is not None:
        need.add("cpu")
    if r.pids_limit is not None:
        need.add("pids")
    return need


class CgroupV2(Cgroup):
    version = 2

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str, resources: Resources, *, root: Path = CGROUP_ROOT,
               parent: Path | None = None) -> CgroupV2:
        """Create ``<parent>/<name>``; ``parent`` defaults to the root (as root) or the top of
        the subtree delegated to this user (rootless, e.g. systemd's user@UID.service)."""
        if parent is None:
            parent = root if os.geteuid() == 0 else _delegated_parent(root)
        need = {c for c, on in (("memory", resources.memory is not None
                                 or resources.memory_swap is not None),
                                ("cpu", resources.cpu_quota is not None
                                 or resources.cpu_shares is not None),
                                ("pids", resources.pids_limit is not None)) if on}
        if need:
            available = set((parent / "cgroup.controllers").read_text().split())
            missing = need - available
            if missing:
                raise CgroupError(f"controllers {sorted(missing)} are not available in {parent}",
                                  hint="enable them in the parent's cgroup.subtree_control "
                                       "(systemd: Delegate=yes)")
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
            todo = need - enabled
            if todo:
                _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(todo)))
        path = parent / name
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise CgroupError(f"cannot create {path}: {exc.strerror}") from None
        cg = cls(path)
        try:
            cg._apply(resources)
        except BaseException:
            cg.destroy(timeout=0.5)
            raise
        return cg

    def _apply(self, r: Resources) -> None:
        r.validate()
        p = self.path
        if r.memory is not None:
            _write(p / "memory.max", r.memory)
            swap = p / "memory.swap.max"
            if r.memory_swap is None:
                if swap.exists():
                    _write(swap, r.memory)      # docker: swap may add as much again
            elif r.memory_swap == -1:
                if swap.exists():
                    _write(swap, "max")
            else:
                if not swap.exists():
                    raise CgroupError("--memory-swap: memory.swap.max missing (swap accounting off)")
                _write(swap, r.memory_swap - r.memory)
        if r.cpu_quota is not None:
            _write(p / "cpu.max", f"{r.cpu_quota} {r.cpu_period}")
        if r.cpu_shares is not None:
            _write(p / "cpu.weight", shares_to_weight(r.cpu_shares))
        if r.pids_limit is not None:
            _write(p / "pids.max", r.pids_limit if r.pids_limit > 0 else "max")

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", pid)

    def pids(self) -> list[int]:
        try:
            return sorted(int(x) for x in (self.path / "cgroup.procs").read_text().split())
        except OSError:
            return []

    def oom_kills(self) -> int:
        return _read_kv(self.path / "memory.events").get("oom_kill", 0)

    def stats(self) -> dict[str, int]:
        st = _read_kv(self.path / "cpu.stat")
        out = {"nr_periods": st.get("nr_periods", 0), "nr_throttled": st.get("nr_throttled", 0),
               "throttled_ns": st.get("throttled_usec", 0) * 1000,
               "cpu_usage_ns": st.get("usage_usec", 0) * 1000}
        if (self.path / "memory.current").exists():
            out["memory_usage"] = _read_int(self.path / "memory.current") or 0
            out["memory_max_usage"] = _read_int(self.path / "memory.peak") or 0
            out["oom_kills"] = self.oom_kills()
        if (self.path / "pids.current").exists():
            out["pids_current"] = _read_int(self.path / "pids.current") or 0
            out["pids_max_events"] = _read_kv(self.path / "pids.events").get("max", 0)
        return out

    def paths(self) -> dict[str, str]:
        return {"": str(self.path)}

    def kill(self) -> None:
        killer = self.path / "cgroup.kill"
        if killer.exists() and self.pids():
            with contextlib.suppress(CgroupError):
                _write(killer, 1)
        super().kill()

    def destroy(self, *, timeout: float = 5.0) -> None:
        self.kill()
        _rmdir(self.path, time.monotonic() + timeout)


def _delegated_parent(root: Path) -> Path:
    """The highest cgroup above this process that this user owns (the delegation point)."""
    own = root / _self_cgroups().get("", "/").lstrip("/")
    uid = os.geteuid()
    best: Path | None = None
    cur = own.parent
    while cur != root.parent and str(cur).startswith(str(root)):
        try:
            if cur.stat().st_uid != uid:
                break
        except OSError:
            break
        best = cur
        if cur == root:
            break
        cur = cur.parent
    if best is None:
        raise CgroupError("no cgroup v2 subtree is delegated to this user",
                          hint="run under systemd with Delegate=yes (e.g. `systemd-run --user "
                               "--scope -p Delegate=yes`), or drop the resource flags")
    return best


def create(name: str, resources: Resources, *, rootless: bool = False, devices: bool = True,
           required: bool = False, root: Path = CGROUP_ROOT) -> Cgroup | None:
    """The container's cgroup, or None when cgroups are unavailable and nothing needs them.

    ``required`` (or any limit in ``resources``) makes a missing or unusable cgroup an error."""
    must = required or not resources.empty()
    kind = detect(root)
    try:
        if kind == "v2":
            return CgroupV2.create(name, resources, root=root)
        if kind == "v1":
            if rootless:
                raise CgroupError("rootless containers cannot use cgroup v1 (no delegation)",
                                  hint="use a cgroup v2 host, run as root, or drop the resource flags")
            return CgroupV1.create(name, resources, devices=devices, root=root)
        raise CgroupError(f"no cgroup filesystem found at {root}")
    except CgroupError:
        if must:
            raise
        return None
