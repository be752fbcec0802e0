"""runtime/nsinit.py: runs *inside* the new namespaces; started by runtime.sandbox as
``python -I -S -c <boot>`` (== ``python -I -m runtime.nsinit`` with the package root pinned).

Pipes (fd numbers on argv): ``ctl`` parent->child (length-prefixed marshal frames: plain
dicts/lists/strings/numbers, decoded without importing json), ``msg`` child->parent (JSON
lines, written by a small encoder here, each < PIPE_BUF so the shim's and PID 1's writes
never interleave),
``fifo`` (held only by PID 1, close-on-exec: EOF = the command was exec'd or PID 1 died),
``console`` (a socket; only with a tty: the pty master travels over it with SCM_RIGHTS).

    shim (this process)                 PID 1 (forked)                    parent (sandbox.py)
    ◄── {"type": "config", spec…}
    setsid; unshare(USER|NS|PID|UTS|IPC[|NET])
    fork ─────────────────────────────► waits for "go"
    {"type": "pid", "pid": N}  ──────────────────────────────────────►  write uid/gid maps,
                                                                        add N to the cgroup
                                                                        (v2, user namespace),
                                                                        prestart hook
                                        ◄──────────────────────────────  {"type": "go"}
                                        (with a prestart hook and no user namespace the
                                        parent sends "go" first, runs the hook while PID 1
                                        sets up, and a 2nd "go" releases PID 1 just before it
                                        closes fds and execs: cfg "late_go")
                                        join the cgroup (v1: "0" > tasks);
                                        setresuid(0); mounts (rootfs, /proc, /dev, /sys, binds,
                                        all targets resolved with openat2(RESOLVE_IN_ROOT));
                                        hostname; loopback up; pivot_root; masked/readonly
                                        paths; USER from /etc/passwd; seccomp; capabilities;
                                        no_new_privs; close fds > 2
                                        execve(argv) ─── fifo EOF ──────►  "started"
                                        on failure: {"type": "error", "stage", "errno", …}
    forwards signals to PID 1; waitpid(PID 1); removes the mount stubs it created
    {"type": "exit", "status": W} ──────────────────────────────────►  exit code, OOM, cleanup

Modes: "run" (above), "apply" (run runtime.fileops.execute on a mounted rootfs in a private
mount [+user] namespace, no pivot; op "unpack-chain": runtime.rootfs.unpack_in_userns, the
rootless layer unpack), "runtime" (mount the rootfs privately, then exec runc/crun on the
bundle). Imports: stdlib + runtime._syscalls only at module scope, and not json or
typing either: every container start waits for this interpreter (the parent may spawn it
early, ``sandbox.spawn_child``, and it then sits on the ctl pipe until the config arrives).
"""

# ruff: noqa: PTH103, PTH106, PTH108, PTH110, PTH112, PTH116, PTH118, PTH119, PTH120, PTH208, S606
# (PTH*: pathlib costs import time in every container start, os.* is used on purpose;
#  S606: exec without a shell is exactly what nsinit is for)

from __future__ import annotations

import marshal
import os
import stat
import sys
import time

from runtime import _syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any
else:
    import _signal as signal  # the C module: signal.py builds IntEnums (and imports enum) first

FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT, signal.SIGWINCH, signal.SIGPROF,
             signal.SIGVTALRM, signal.SIGXCPU, signal.SIGXFSZ, signal.SIGPWR)

DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                   ("urandom", 1, 9), ("tty", 5, 0))
DEV_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


class Failure(Exception):
    """A setup step that failed; reported to the parent with its stage and errno."""

    def __init__(self, stage: str, message: str, err: int = 0, exit_code: int = 125) -> None:
        super().__init__(message)
        self.stage, self.message, self.errno, self.exit_code = stage, message, err, exit_code


# -- the pipes ---------------------------------------------------------------------------------
_ESCAPES = {i: f"\\u{i:04x}" for i in (*range(32), 0x7F)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r",
                 ord("\t"): "\\t", ord("\b"): "\\b", ord("\f"): "\\f"})


def _quote(text: str) -> str:
    text = text.translate(_ESCAPES)
    if not text.isascii():      # as json.dumps: \uXXXX (surrogate pairs above the BMP)
        out = []
        for ch in text:
            n = ord(ch)
            if n < 0x80:
                out.append(ch)
            elif n < 0x10000:
                out.append(f"\\u{n:04x}")
            else:
                n -= 0x10000
                out.append(f"\\u{0xD800 | (n >> 10):04x}\\u{0xDC00 | (n & 0x3FF):04x}")
        text = "".join(out)
    return '"' + text + '"'


def dumps(obj: Any) -> str:
    """Compact JSON for the messages to the parent (json.dumps' output for these types)."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(int(obj))
    if isinstance(obj, str):
        return _quote(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(_quote(str(k)) + ":" + dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, float) and obj == obj and obj not in (float("inf"), float("-inf")):
        return repr(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def send(fd: int, obj: dict[str, Any]) -> None:
    data = dumps(obj).encode() + b"\n"
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def recv_frame(fd: int) -> dict[str, Any]:
    """One length-prefixed frame (``%08x`` length, then the marshal-encoded document)."""
    size = int(_read_exact(fd, 8), 16)
    doc = marshal.loads(_read_exact(fd, size))  # noqa: S302 - written by our parent alone
    if not isinstance(doc, dict):
        raise ValueError("control frame is not a document")
    return doc


def encode_frame(obj: dict[str, Any]) -> bytes:
    """The frame ``recv_frame`` reads (runtime.sandbox writes the same format)."""
    body = marshal.dumps(obj, 4)
    return b"%08x" % len(body) + body


# -- users -------------------------------------------------------------------------------------
def _parse_db(text: str, width: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= width:
            rows.append(parts)
    return rows


def resolve_user(spec: str, passwd: str, group: str) -> tuple[int, int, list[int], str]:
    """Docker's USER rules -> (uid, gid, supplementary gids, home).

    ``name``/``uid``: gid and home from /etc/passwd (gid 0 and ``/`` for an unknown numeric
    uid), supplementary groups from /etc/group membership. ``user:group``: that group, no
    membership groups. The primary gid always leads the supplementary list (as docker does).
    An unknown *name* is an error; unknown numbers are used as given."""
    user_part, _, group_part = (spec or "0").partition(":")
    user_part = user_part or "0"
    users = _parse_db(passwd, 7)
    entry = None
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((u for u in users if u[2] == user_part), None)
    else:
        entry = next((u for u in users if u[0] == user_part), None)
        if entry is None:
            raise Failure("user", f"unable to find user {user_part}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and entry[5] else "/"
    groups = _parse_db(group, 4)
    extra: list[int] = []
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            g = next((g for g in groups if g[0] == group_part), None)
            if g is None:
                raise Failure("user", f"unable to find group {group_part}: no matching entries in group file")
            gid = int(g[2])
    elif entry is not None:
        name = entry[0]
        for g in groups:
            if name in g[3].split(",") and g[2].isdigit():
                extra.append(int(g[2]))
    # docker keeps the primary group in the supplementary list: `id` shows groups=0(root),10(wheel)
    out = [gid]
    for extra_gid in extra:
        if extra_gid not in out:
            out.append(extra_gid)
    return uid, gid, out, home


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# -- safe paths inside the rootfs --------------------------------------------------------------
class Root:
    """The container rootfs as an O_PATH fd; every target is resolved by the kernel inside it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stubs: list[str] = []          # mount points we created (removed after the run)
        self.times: dict[str, tuple[int, int]] = {}   # their parents' (atime, mtime) before
        self.mounted: list[str] = []        # destinations of mounts made so far

    def open(self, rel: str, flags: int = os.O_PATH) -> int:
        return sc.openat2(self.fd, rel.lstrip("/") or ".", flags)

    def ensure(self, dest: str, *, directory: bool) -> int:
        """An O_PATH fd for ``dest`` inside the root, creating it (and its parents) if missing.
        A symlink on the way is followed *inside* the root, as runc's MkdirAllInRoot does."""
        try:
            return self.open(dest)
        except FileNotFoundError:
            pass
        parts = [p for p in dest.split("/") if p and p != "."]
        cur = "/"
        fd = os.dup(self.fd)
        links = 0
        try:
            while parts:
                name = parts.pop(0)
                last = not parts
                nxt = os.path.normpath(cur.rstrip("/") + "/" + name) if name != ".." else \
                    (os.path.dirname(cur.rstrip("/")) or "/")
                try:
                    new = self.open(nxt)
                except FileNotFoundError:
                    try:
                        st = os.lstat(name, dir_fd=fd)
                    except FileNotFoundError:
                        st = None
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        # a dangling symlink: create its target, resolved inside the root
                        links += 1
                        if links > 40:
                            raise OSError(40, "too many symlinks", dest) from None
                        target = os.readlink(name, dir_fd=fd)
                        base = "/" if target.startswith("/") else cur
                        parts = [p for p in target.split("/") if p and p != "."] + parts
                        if base == "/":
                            os.close(fd)
                            fd, cur = os.dup(self.fd), "/"
                        continue
                    self._remember_parent(cur, fd)
                    if last and not directory:
                        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                         0o644, dir_fd=fd))
                    else:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    self._stub(nxt)
                    new = self.open(nxt)
                os.close(fd)
                fd, cur = new, nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _remember_parent(self, parent: str, fd: int) -> None:
        if parent in self.times or self._under_mount(parent):
            return
        try:
            st = os.stat(fd)
        except OSError:
            return
        self.times[parent] = (st.st_atime_ns, st.st_mtime_ns)

    def _under_mount(self, path: str) -> bool:
        return any(path == m or path.startswith(m.rstrip("/") + "/") for m in self.mounted)

    def _stub(self, path: str) -> None:
        # only stubs on the rootfs itself matter (ones inside our own tmpfs mounts vanish)
        if not self._under_mount(path):
            self.stubs.append(path)


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def mount_rootfs(mounts: list[dict[str, Any]], target: str) -> None:
    """Apply the snapshotter's mounts (overlay or bind) on ``target``."""
    if not mounts:
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        return
    for m in mounts:
        mtype, source = m.get("type") or "none", m.get("source") or "none"
        flags, prop, data = sc.parse_mount_options(list(m.get("options") or ()))
        if mtype == "bind" or flags & sc.MS_BIND:
            sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
            if flags & ~(sc.MS_BIND | sc.MS_REC):
                sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT
                         | (flags & ~sc.MS_REC) | sc.locked_flags(target))
        else:
            opts = ",".join(data)
            if len(opts) >= 4000 and mtype == "overlay":
                # mount(2) data is limited to one page: the snapshotter's mount code knows
                # the ways around it (fsconfig lowerdir+, or relative paths)
                from runtime.snapshots import Mount, mount_all

                mount_all([Mount(mtype, source, tuple(m.get("options") or ()))], target)
            else:
                try:
                    sc.mount(source, target, mtype, flags, opts)
                except OSError as exc:
                    _explain_volatile(exc, data)
                    raise
        if prop:
            sc.mount(None, target, None, prop)


def _explain_volatile(exc: OSError, data: list[str]) -> None:
    """An upper dir that was mounted ``volatile`` (an ephemeral `run --rm` layer) cannot be
    mounted again: say so instead of a bare EINVAL."""
    if exc.errno != 22:
        return
    work = next((o[len("workdir="):] for o in data if o.startswith("workdir=")), "")
    if work and os.path.isdir(os.path.join(work.replace("\\", ""), "work", "incompat", "volatile")):
        raise Failure("mount rootfs", "the container's writable layer was mounted already (it is "
                      "ephemeral: a `run --rm` layer, mounted overlay 'volatile' once) and cannot be "
                      "mounted again; remove the container", 22) from None


def do_mount(root: Root, m: dict[str, Any], *, nodev: bool) -> None:
    dest = m["destination"]
    mtype = m.get("type") or "none"
    source = m.get("source") or mtype
    flags, prop, data = sc.parse_mount_options(list(m.get("options") or ()))
    bind = mtype == "bind" or bool(flags & sc.MS_BIND)
    if nodev and mtype not in ("devpts", "proc", "sysfs"):
        flags |= sc.MS_NODEV
    directory = True
    if bind:
        try:
            st = os.stat(source)
        except OSError as exc:
            raise Failure(f"mount {dest}", f"bind source {source}: {exc.strerror}", exc.errno or 0) from None
        directory = stat.S_ISDIR(st.st_mode)
    fd = root.ensure(dest, directory=directory)
    try:
        if bind:
            sc.mount(source, _fdpath(fd), None, sc.MS_BIND | (flags & sc.MS_REC))
            extra = flags & ~(sc.MS_BIND | sc.MS_REC)
            if extra:
                fd2 = root.open(dest)   # the new mount, not the directory under it
                try:
                    p = _fdpath(fd2)
                    sc.mount(None, p, None, sc.MS_BIND | sc.MS_REMOUNT | extra | sc.locked_flags(p))
                finally:
                    os.close(fd2)
        else:
            sc.mount(source, _fdpath(fd), mtype, flags, ",".join(data))
        if prop:
            fd2 = root.open(dest)
            try:
                sc.mount(None, _fdpath(fd2), None, prop)
            finally:
                os.close(fd2)
    except OSError as exc:
        raise Failure(f"mount {dest}", f"{mtype} on {dest}: {exc.strerror}", exc.errno or 0) from None
    finally:
        os.close(fd)
    root.mounted.append(dest)


def mount_cgroups(root: Root, m: dict[str, Any], paths: dict[str, str]) -> None:
    """/sys/fs/cgroup showing the container's own cgroup as the root, read-only.
    v2: a cgroup namespace rooted at the container's cgroup (PID 1 is already in it) and a
    cgroup2 mount. v1: a tmpfs with each joined controller's directory bind-mounted (docker's
    layout without a cgroup namespace). No cgroup (rootless on v1): nothing is mounted."""
    if not paths:
        return
    flags, _, _ = sc.parse_mount_options(list(m.get("options") or ()))
    ro = flags & sc.MS_RDONLY
    dest = m["destination"]
    if "" in paths:
        sc.unshare(sc.CLONE_NEWCGROUP)
        do_mount(root, {"destination": dest, "type": "cgroup2", "source": "cgroup2",
                        "options": list(m.get("options") or ())}, nodev=False)
        return
    do_mount(root, {"destination": dest, "type": "tmpfs", "source": "cgroup",
                    "options": ["nosuid", "nodev", "noexec", "mode=755"]}, nodev=False)
    for ctl, host in sorted(paths.items()):
        bind_opts = ["bind", "nosuid", "nodev", "noexec"] + (["ro"] if ro else [])
        do_mount(root, {"destination": f"{dest}/{ctl}", "type": "bind", "source": host,
                        "options": bind_opts}, nodev=False)
    if ro:
        fd = root.open(dest)
        try:
            p = _fdpath(fd)
            sc.mount(None, p, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.locked_flags(p))
        finally:
            os.close(fd)


def setup_dev(root: Root, *, mode: str, userns: bool) -> None:
    """The minimal /dev: default device nodes (mknod, or bind mounts of the host's when in a
    user namespace or when /dev must be nodev), symlinks, and /dev/ptmx."""
    devfd = root.open("/dev", os.O_PATH | os.O_DIRECTORY)
    try:
        devices: list[tuple[str, int, int]] = list(DEFAULT_DEVICES)
        if mode == "privileged":
            devices = _host_devices()
        for name, major, minor in devices:
            if mode == "mknod" or (mode == "privileged" and not userns):
                kind = stat.S_IFBLK if name.startswith("b:") else stat.S_IFCHR
                name = name[2:] if name.startswith(("b:", "c:")) else name
                try:
                    os.mknod(name, kind | 0o666, os.makedev(major, minor), dir_fd=devfd)
                except FileExistsError:
                    continue
                os.chmod(name, 0o666 if (major, minor) in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0))
                         else 0o660, dir_fd=devfd)
            else:
                name = name[2:] if name.startswith(("b:", "c:")) else name
                if not os.path.exists(f"/dev/{name}"):
                    continue
                tfd = root.ensure(f"/dev/{name}", directory=False)
                try:
                    sc.mount(f"/dev/{name}", _fdpath(tfd), None, sc.MS_BIND)
                finally:
                    os.close(tfd)
                # read-only: the node's inode is the host's, and a read-only mount refuses
                # chmod/chown/utime (EROFS) while reads and writes of the device still work
                nfd = root.open(f"/dev/{name}")      # the new mount, not the file under it
                try:
                    p = _fdpath(nfd)
                    sc.mount(None, p, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
                             | sc.locked_flags(p))
                finally:
                    os.close(nfd)
        for name, target in DEV_SYMLINKS:
            try:
                os.symlink(target, name, dir_fd=devfd)
            except FileExistsError:
                pass
    finally:
        os.close(devfd)


def _host_devices() -> list[tuple[str, int, int]]:
    out = []
    for entry in os.scandir("/dev"):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            prefix = "b:" if stat.S_ISBLK(st.st_mode) else "c:"
            out.append((prefix + entry.name, os.major(st.st_rdev), os.minor(st.st_rdev)))
    return out


def setup_console(root: Root, console_fd: int, size: dict[str, int] | None = None) -> int:
    """Open a pty in the container's devpts, send the master to the parent, return the slave.
    ``size`` (OCI consoleSize) is set before the command runs: no race with its first stty."""
    import _socket
    import array
    import fcntl

    tiocsptlck, tiocgptpeer = 0x40045431, 0x5441   # not exported by Python's termios
    master = root.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(master, tiocsptlck, b"\0\0\0\0")   # unlockpt()
    # TIOCGPTPEER opens the slave through the master: no path lookup an attacker could race
    slave = fcntl.ioctl(master, tiocgptpeer, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    if size and size.get("height") and size.get("width"):
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size["height"], size["width"], 0, 0))
    sock = _socket.socket(fileno=console_fd)
    try:
        sock.sendmsg([b"pty"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [master]))])
    finally:
        sock.detach()
    os.close(master)
    cfd = root.ensure("/dev/console", directory=False)
    try:
        sc.mount(_fdpath(slave), _fdpath(cfd), None, sc.MS_BIND)
    finally:
        os.close(cfd)
    return int(slave)


def pivot(root: Root) -> None:
    os.chdir(root.path)
    try:
        sc.pivot_root(".", ".")
    except OSError as exc:
        raise Failure("pivot_root", f"pivot_root {root.path}: {exc.strerror} (pybuild has no chroot "
                      "fallback: the rootfs would stay reachable)", exc.errno or 0) from None
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_paths(paths: list[str]) -> None:
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Failure("masked paths", f"{p}: {exc.strerror}", exc.errno or 0) from None
        try:
            if stat.S_ISDIR(st.st_mode):
                sc.mount("tmpfs", p, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                         "size=0k,mode=755")
            else:
                sc.mount("/dev/null", p, None, sc.MS_BIND)
        except OSError as exc:
            raise Failure("masked paths", f"mask {p}: {exc.strerror}", exc.errno or 0) from None


def readonly_paths(paths: list[str]) -> None:
    for p in paths:
        try:
            sc.mount(p, p, None, sc.MS_BIND | sc.MS_REC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Failure("readonly paths", f"bind {p}: {exc.strerror}", exc.errno or 0) from None
        try:
            sc.mount(None, p, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC
                     | sc.locked_flags(p))
        except OSError as exc:
            raise Failure("readonly paths", f"remount {p} read-only: {exc.strerror}",
                          exc.errno or 0) from None


def remount_root(extra: int) -> None:
    try:
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | extra | sc.locked_flags("/"))
    except OSError as exc:
        raise Failure("rootfs", f"remount / ({extra:#x}): {exc.strerror}", exc.errno or 0) from None


# -- seccomp -------------------------------------------------------------------------------------
# x86_64 numbers for the names the default profile uses (names missing here are skipped).
_X86_64 = {
    "acct": 163, "add_key": 248, "bpf": 321, "clock_adjtime": 305, "clock_settime": 227,
    "create_module": 174, "delete_module": 176, "finit_module": 313, "fsconfig": 431,
    "fsmount": 432, "fsopen": 430, "fspick": 433, "get_kernel_syms": 177, "init_module": 175,
    "io_uring_enter": 426, "io_uring_register": 427, "io_uring_setup": 425,
    "kexec_file_load": 320, "kexec_load": 246, "keyctl": 250, "lookup_dcookie": 212,
    "mount": 165, "mount_setattr": 442, "move_mount": 429, "nfsservctl": 180,
    "open_by_handle_at": 304, "open_tree": 428, "perf_event_open": 298, "pivot_root": 155,
    "query_module": 178, "quotactl": 179, "reboot": 169, "request_key": 249, "setns": 308,
    "settimeofday": 164, "swapoff": 168, "swapon": 167, "sysfs": 139, "umount2": 166,
    "unshare": 272, "uselib": 134, "userfaultfd": 323, "ustat": 136, "clone": 56, "clone3": 435,
}
_AUDIT_ARCH_X86_64 = 0xC000003E
_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_NS_CLONE_FLAGS = (sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWUSER
                   | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWCGROUP)


def seccomp_program(profile: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """Compile the OCI profile subset pybuild writes (default ALLOW, name lists answered with
    ERRNO) to classic BPF, plus: x32 calls denied, clone with namespace flags denied, clone3
    answered ENOSYS so libc falls back to clone (whose flags a filter can inspect)."""
    machine = os.uname().machine
    if machine != "x86_64":
        raise Failure("seccomp", f"the built-in seccomp filter supports x86_64 only, not {machine}; "
                      "use --security-opt seccomp=unconfined to run without it")
    if profile.get("defaultAction") != "SCMP_ACT_ALLOW":
        raise Failure("seccomp", "only profiles with defaultAction SCMP_ACT_ALLOW are supported")
    deny: dict[int, int] = {}
    for rule in profile.get("syscalls") or ():
        if rule.get("action") != "SCMP_ACT_ERRNO" or rule.get("args"):
            raise Failure("seccomp", f"unsupported seccomp rule {rule!r}")
        for name in rule.get("names") or ():
            if name in _X86_64:
                deny[_X86_64[name]] = int(rule.get("errnoRet", 1))
    eperm = _RET_ERRNO | 1
    prog: list[tuple[int, int, int, int]] = [
        (_LD_ABS, 0, 0, 4),                          # seccomp_data.arch
        (_JEQ, 1, 0, _AUDIT_ARCH_X86_64),
        (_RET, 0, 0, _RET_KILL),
        (_LD_ABS, 0, 0, 0),                          # seccomp_data.nr
        (_JGE, 0, 1, 0x40000000),                    # x32 ABI: deny outright
        (_RET, 0, 0, eperm),
        (_JEQ, 0, 1, _X86_64["clone3"]),
        (_RET, 0, 0, _RET_ERRNO | 38),               # ENOSYS
        (_JEQ, 0, 4, _X86_64["clone"]),
        (_LD_ABS, 0, 0, 16),                         # args[0], low 32 bits: the clone flags
        (_JSET, 0, 1, _NS_CLONE_FLAGS),
        (_RET, 0, 0, eperm),
        (_RET, 0, 0, _RET_ALLOW),
    ]
    for nr, err in sorted(deny.items()):
        if nr in (_X86_64["clone"], _X86_64["clone3"]):
            continue
        prog.append((_JEQ, 0, 1, nr))
        prog.append((_RET, 0, 0, _RET_ERRNO | (err & 0xFFFF)))
    prog.append((_RET, 0, 0, _RET_ALLOW))
    return prog


# -- exec ----------------------------------------------------------------------------------------
def find_executable(argv0: str, env: dict[str, str]) -> tuple[str | None, int]:
    """(path, 0) or (None, errno): ENOENT when not found, EACCES when found but not executable."""
    import errno as _errno

    if "/" in argv0:
        return argv0, 0
    err = _errno.ENOENT
    for d in (env.get("PATH") or "").split(":"):
        cand = os.path.join(d or ".", argv0)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if os.access(cand, os.X_OK):
            return cand, 0
        err = _errno.EACCES
    return None, err


def exec_process(argv: list[str], env: dict[str, str], msg_fd: int) -> None:
    """execve, or report why not (127 not found, 126 not executable) and exit."""
    import errno as _errno

    path, err = find_executable(argv[0], env)
    if path is not None:
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            err = exc.errno or _errno.ENOENT
    code = 127 if err in (_errno.ENOENT, _errno.ENOTDIR) else 126
    why = ("executable file not found in $PATH" if path is None and err == _errno.ENOENT
           else os.strerror(err).lower())
    send(msg_fd, {"type": "error", "stage": "exec", "errno": err, "argv0": argv[0],
                  "message": f"exec {argv[0]}: {why}", "exit": code})
    os._exit(code)


def init_loop(argv: list[str], env: dict[str, str], msg_fd: int, fifo_fd: int) -> None:
    """--init: stay PID 1, run the command as a child, forward signals, reap every orphan and
    exit with the command's status (128+n when a signal killed it)."""
    child = os.fork()
    if child == 0:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        exec_process(argv, env, msg_fd)
    os.close(fifo_fd)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    code = 0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            break
    os._exit(code)


# -- PID 1 setup ------------------------------------------------------------------------------
def container_init(cfg: dict[str, Any], fds: dict[str, int], stubs_w: int) -> None:
    spec = cfg["spec"]
    proc = spec["process"]
    linux = spec.get("linux") or {}
    ann = spec.get("annotations") or {}
    ns_types = {n["type"] for n in linux.get("namespaces") or () if not n.get("path")}
    userns = "user" in ns_types
    msg = fds["msg"]
    stage = "start"
    # Everything needed after pivot_root must be imported now: the host's lib-dynload is
    # out of reach afterwards.
    if proc.get("terminal"):
        import fcntl
        import termios
    if proc.get("rlimits"):
        import resource
    try:
        # PID 1 of a pid namespace only gets the signals it has handlers for: drop Python's
        # SIGINT handler so a forwarded ^C during setup cannot surface as KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if not cfg.get("detach"):
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        go = recv_frame(fds["ctl"])
        if not cfg.get("late_go"):
            os.close(fds["ctl"])
        if go.get("type") != "go":
            os._exit(1)
        for path in cfg.get("cgroup_join") or ():
            # into the container's cgroup before anything else (this process is single-
            # threaded: moving the thread moves the process); see CgroupV1.self_join_files
            stage = "join cgroup"
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if userns:
            stage = "become root in the user namespace"
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        os.setsid()

        stage = "mount namespace"
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        root_path = spec["root"]["path"]
        stage = "mount rootfs"
        mount_rootfs(cfg.get("rootfs_mounts") or [], root_path)
        root = Root(root_path)
        dev_mode = cfg.get("device_mode", "mknod")
        nodev = dev_mode == "bind"
        have_dev = False
        for m in spec.get("mounts") or ():
            stage = f"mount {m['destination']}"
            if m.get("type") == "cgroup":
                mount_cgroups(root, m, cfg.get("cgroup_paths") or {})
                continue
            do_mount(root, m, nodev=nodev and m["destination"] != "/dev")
            if m["destination"] == "/dev":
                setup_dev(root, mode=dev_mode, userns=userns)
                have_dev = True
        slave = -1
        console = cfg.get("console", "pty")
        if proc.get("terminal") and console == "pty":
            stage = "console"
            if not have_dev:
                raise Failure("console", "a terminal needs /dev/pts in the container")
            slave = setup_console(root, fds["console"], proc.get("consoleSize"))
        elif proc.get("terminal") and console == "stdio" and os.isatty(0):
            stage = "console"
            try:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            except OSError:
                pass    # the tty is some other session's terminal: keep it as plain stdio
        if "console" in fds:
            os.close(fds["console"])

        if "uts" in ns_types:
            stage = "hostname"
            if spec.get("hostname"):
                sc.sethostname(spec["hostname"])
            if spec.get("domainname"):
                sc.setdomainname(spec["domainname"])
        if "network" in ns_types:
            stage = "loopback"
            sc.loopback_up("lo")

        stage = "pivot_root"
        pivot(root)
        stage = "masked paths"
        mask_paths(list(linux.get("maskedPaths") or ()))
        stage = "readonly paths"
        readonly_paths(list(linux.get("readonlyPaths") or ()))
        if nodev:
            remount_root(sc.MS_NODEV)
        read_only = bool(spec["root"].get("readonly"))

        stage = "user"
        env = dict(e.partition("=")[::2] for e in proc.get("env") or ())
        user = proc.get("user") or {}
        if ann.get("io.pybuild.user") is not None:
            uid, gid, extra, home = resolve_user(ann["io.pybuild.user"], _read_text("/etc/passwd"),
                                                 _read_text("/etc/group"))
        else:
            uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
            extra, home = [int(g) for g in user.get("additionalGids") or ()], "/"
        env.setdefault("HOME", home)
        cwd = proc.get("cwd") or "/"
        stage = "working directory"
        if not os.path.isdir(cwd):
            # docker creates a missing working directory (owned by root) and keeps it
            os.makedirs(cwd, 0o755, exist_ok=True)
        for rl in proc.get("rlimits") or ():
            stage = f"rlimit {rl['type']}"
            resource.setrlimit(getattr(resource, rl["type"]), (int(rl["soft"]), int(rl["hard"])))

        # the shim removes the stubs once the container is gone (a build step's diff stays clean)
        os.write(stubs_w, marshal.dumps({"stubs": [] if read_only else root.stubs,
                                         "times": {} if read_only else root.times}, 4))
        os.close(stubs_w)
        if read_only:
            stage = "read-only rootfs"
            remount_root(sc.MS_RDONLY)

        caps = proc.get("capabilities") or {}
        keep = sc.caps_mask(caps.get("bounding") or ())
        last = sc.cap_last_cap()
        have = sc.capget()[1]
        if keep & ~have:
            if ann.get("io.pybuild.privileged") == "true":
                keep &= have           # --privileged: everything this process holds
            else:
                names = [sc.CAP_NAMES[i] for i in range(len(sc.CAP_NAMES)) if keep & ~have & (1 << i)]
                raise Failure("capabilities", f"cannot grant {', '.join(names)}: pybuild itself "
                              "does not hold it")
        if ann.get("io.pybuild.seccomp", "default") != "unconfined" and linux.get("seccomp"):
            stage = "seccomp"
            prog = seccomp_program(linux["seccomp"])
        else:
            prog = []
        stage = "capabilities"
        for cap in range(last + 1):
            if not keep & (1 << cap):
                sc.capbset_drop(cap)
        stage = "working directory"
        os.chdir(cwd)          # as root, like runc: a USER may not be able to search the path
        stage = "user"
        try:
            os.setgroups(extra)
        except OSError:
            if extra and not userns:
                raise
        try:
            os.setresgid(gid, gid, gid)
            sc.prctl(sc.PR_SET_KEEPCAPS, 1)
            os.setresuid(uid, uid, uid)
        except OSError as exc:
            if userns and exc.errno == 22:
                raise Failure("user", f"uid {uid} / gid {gid} is not mapped in the container's user "
                              "namespace (give the user a range in /etc/subuid and /etc/subgid)",
                              22) from None
            raise
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)
        stage = "capabilities"
        eff = sc.caps_mask(caps.get("effective") or ()) & keep
        perm = sc.caps_mask(caps.get("permitted") or ()) & keep
        sc.capset(eff, perm, sc.caps_mask(caps.get("inheritable") or ()) & keep)
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        if proc.get("noNewPrivileges"):
            stage = "no_new_privs"
            sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        if slave >= 0:
            stage = "console"
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for target in (0, 1, 2):
                os.dup2(slave, target)
            os.close(slave)
        if cfg.get("late_go"):
            # the parent's prestart hook (network plumbing) ran while we set up: the command
            # starts only once it is done
            stage = "prestart"
            go = recv_frame(fds["ctl"])
            os.close(fds["ctl"])
            if go.get("type") != "go":
                os._exit(1)
        stage = "close fds"
        keep_fds = {0, 1, 2, msg, fds["fifo"]}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.set_inheritable(msg, False)
        os.set_inheritable(fds["fifo"], False)
        if prog:
            stage = "seccomp"
            # last: the filter denies mount/unshare/setns, which the steps above needed
            sc.seccomp_load(prog)
        argv = list(proc["args"])
        if ann.get("io.pybuild.init") == "true":
            init_loop(argv, env, msg, fds["fifo"])
        exec_process(argv, env, msg)
    except Failure as exc:
        _report(msg, exc.stage, exc.message, exc.errno, exc.exit_code)
    except OSError as exc:
        _report(msg, stage, f"{stage}: {exc}", exc.errno or 0, 125)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        _report(msg, stage, f"{stage}: {type(exc).__name__}: {exc}", 0, 125)


def _report(msg_fd: int, stage: str, message: str, err: int, code: int) -> None:
    try:
        send(msg_fd, {"type": "error", "stage": stage, "message": message[:3000], "errno": err,
                      "exit": code})
    finally:
        os._exit(code)


# -- shim --------------------------------------------------------------------------------------
def _unshare_flags(spec: dict[str, Any]) -> tuple[int, list[tuple[str, str]]]:
    flags, joins = 0, []
    for ns in (spec.get("linux") or {}).get("namespaces") or ():
        if ns.get("path"):
            joins.append((ns["type"], ns["path"]))
        else:
            flags |= sc.NAMESPACE_FLAGS[ns["type"]]
    return flags, joins


def _join(joins: list[tuple[str, str]]) -> None:
    # the user namespace first: it decides what the other joins are allowed to do
    for kind, path in sorted(joins, key=lambda j: j[0] != "user"):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.NAMESPACE_FLAGS[kind])
        finally:
            os.close(fd)


def run_mode(cfg: dict[str, Any], fds: dict[str, int]) -> None:
    spec = cfg["spec"]
    msg = fds["msg"]
    parent = int(cfg.get("parent_pid") or os.getppid())
    # The container's cgroup directories, held as (parent dir fd, name): usable after
    # pivot_root (which also moves this process's root), for the orphan cleanup below.
    cgroup_dirs = []
    for path in cfg.get("cgroup_dirs") or ():
        try:
            cgroup_dirs.append((os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC),
                                os.path.basename(path)))
        except OSError:
            pass
    try:
        # (the parent started us in a new session: terminal signals reach only the parent,
        # which forwards them)
        if not cfg.get("detach"):
            # SIGTERM, not SIGKILL: if the parent dies we still take the container down and
            # remove its cgroup (nobody else would)
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)
        flags, joins = _unshare_flags(spec)
        if joins:
            _join(joins)
        sc.unshare(flags)
    except OSError as exc:
        _report(msg, "namespaces", f"unshare: {exc.strerror}", exc.errno or 0, 125)
    stubs_r, stubs_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(stubs_r)
        for dfd, _ in cgroup_dirs:
            os.close(dfd)
        container_init(cfg, fds, stubs_w)
        os._exit(125)
    os.close(stubs_w)
    for name in ("ctl", "fifo", "console"):
        if name in fds:
            os.close(fds[name])
    orphaned = []

    def forward(signum: int, _frame: object) -> None:
        if not cfg.get("detach") and os.getppid() != parent:
            orphaned.append(signum)
            signum = signal.SIGKILL
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        send(msg, {"type": "pid", "pid": pid})
    except OSError:
        forward(signal.SIGTERM, None)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 255 << 8
            break
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)
    cleanup_stubs(stubs_r)
    if orphaned or os.getppid() != parent:
        _remove_cgroups(cgroup_dirs)
    try:
        send(msg, {"type": "exit", "status": status})
    except OSError:
        pass
    os._exit(0)


def _remove_cgroups(dirs: list[tuple[int, str]]) -> None:
    """Orphan path only (the parent died): every container process is gone, remove the dirs."""
    for dfd, name in dirs:
        for _ in range(200):
            try:
                os.rmdir(name, dir_fd=dfd)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.005)


def cleanup_stubs(fd: int) -> None:
    """Remove the mount points PID 1 created in the rootfs. The shim shares the container's
    mount namespace and (since pivot_root) its root, so these paths resolve inside it; every
    container process is gone by now (PID 1 exited, so the kernel killed the namespace)."""
    data = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        # written by PID 1 before it exec'd (the container never holds this pipe)
        doc = marshal.loads(data) if data else {}  # noqa: S302
    except (ValueError, EOFError, TypeError):
        return
    stubs, times = doc.get("stubs") or [], doc.get("times") or {}
    for path in reversed(stubs):
        for _ in range(8):
            try:
                sc.umount2(path, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
            except OSError:
                break
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(path)
        except OSError:
            pass
    # the parents get their timestamps back: an overlay copy-up of /etc made only for the
    # /etc/hosts mount point then has the lower's metadata, and a diff can skip it
    for parent, (atime, mtime) in times.items():
        try:
            os.utime(parent, ns=(atime, mtime), follow_symlinks=False)
        except OSError:
            pass


# -- apply mode -----------------------------------------------------------------------------------
def apply_mode(cfg: dict[str, Any], fds: dict[str, int]) -> None:
    msg = fds["msg"]
    stage = "namespaces"
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        userns = bool(cfg.get("userns"))
        sc.unshare(sc.CLONE_NEWNS | (sc.CLONE_NEWUSER if userns else 0))
        send(msg, {"type": "pid", "pid": os.getpid()})
        if recv_frame(fds["ctl"]).get("type") != "go":
            os._exit(1)
        if userns:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        stage = "mount rootfs"
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        root = cfg["root"]
        if cfg.get("rootfs_mounts"):
            mount_rootfs(cfg["rootfs_mounts"], root)
        for target, mounts in cfg.get("extra_mounts") or ():
            stage = f"mount {target}"
            mount_rootfs(mounts, target)
        stage = "action"
        for path in cfg.get("sys_path") or ():
            # the parent's codec modules (isal, zstandard): `python -I -S` has no site-packages
            if path not in sys.path:
                sys.path.append(str(path))          # after the stdlib and pybuild's own root
        action = cfg["action"]
        if action.get("op") == "unpack-chain":
            # rootless unpack of image layers as root of the user namespace (runtime.rootfs)
            from runtime import rootfs

            result: Any = rootfs.unpack_in_userns(action)
        else:
            from pathlib import Path

            from runtime import fileops

            if action.get("op") == "batch":
                result = fileops.run_actions(list(action.get("actions") or ()), Path(root))
            else:
                result = fileops.execute(action, Path(root))
        import json

        body = json.dumps({"type": "result", "value": result}, default=str).encode()
        if len(body) > 3500:
            path = cfg["result_file"]
            with open(path, "wb") as f:
                f.write(body)
            send(msg, {"type": "result-file", "path": path})
        else:
            os.write(msg, body + b"\n")
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        err = getattr(exc, "errno", 0) or 0
        fields = {k: v for k, v in vars(exc).items() if isinstance(v, str | int | float)} \
            if hasattr(exc, "__dict__") else {}
        try:
            send(msg, {"type": "error", "stage": stage, "kind": type(exc).__name__,
                       "message": str(exc)[:2000], "errno": err if isinstance(err, int) else 0,
                       "fields": fields, "exit": 1})
        finally:
            os._exit(1)


# -- runtime mode (runc/crun on the same bundle) ---------------------------------------------------
def runtime_mode(cfg: dict[str, Any], fds: dict[str, int]) -> None:
    msg = fds["msg"]
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        for point in cfg.get("hide_mounts") or ():
            sc.umount2(point, sc.MNT_DETACH)   # see cgroups.hybrid_v2_mounts
        spec = cfg["spec"]
        root_path = spec["root"]["path"]
        mount_rootfs(cfg.get("rootfs_mounts") or [], root_path)
        ann = spec.get("annotations") or {}
        if ann.get("io.pybuild.user") is not None:
            rfd = os.open(root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

            def read_in_root(rel: str) -> str:
                try:
                    fd = sc.openat2(rfd, rel, os.O_RDONLY)
                except OSError:
                    return ""
                with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
                    return f.read()

            uid, gid, extra, home = resolve_user(ann["io.pybuild.user"], read_in_root("etc/passwd"),
                                                 read_in_root("etc/group"))
            os.close(rfd)
            spec["process"]["user"] = {"uid": uid, "gid": gid, "additionalGids": extra}
            env = spec["process"]["env"]
            if not any(e.startswith("HOME=") for e in env):
                env.append(f"HOME={home}")
        import json

        with open(os.path.join(cfg["bundle"], "config.json"), "w") as f:
            json.dump(spec, f, indent=1)
        os.close(fds["ctl"])
        os.set_inheritable(msg, False)
        os.execv(cfg["runtime_path"], cfg["runtime_argv"])
    except Failure as exc:
        _report(msg, exc.stage, exc.message, exc.errno, 125)
    except OSError as exc:
        _report(msg, "runtime", f"{cfg.get('runtime_path')}: {exc}", exc.errno or 0, 125)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    fds = {k: int(v) for k, _, v in (a.partition("=") for a in args) if v.isdigit()}
    # runtime.sandbox spawns us with posix_spawn: no cwd change and no close_fds there, so
    # leave the parent's cwd and drop any fd we inherited beyond stdio and our named pipes
    os.chdir("/")
    os.closerange(max((2, *fds.values())) + 1, 1 << 20)
    try:
        cfg = recv_frame(fds["ctl"])
    except (EOFError, ValueError, TypeError):
        os._exit(125)     # the parent gave up before sending a configuration
    mode = cfg.get("mode", "run")
    if mode == "run":
        run_mode(cfg, fds)
    elif mode == "apply":
        apply_mode(cfg, fds)
    elif mode == "runtime":
        runtime_mode(cfg, fds)
    _report(fds["msg"], "start", f"unknown nsinit mode {mode!r}", 0, 125)


if __name__ == "__main__":
    main()
