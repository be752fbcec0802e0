"""The one module for Linux syscalls Python 3.11 lacks (ctypes; ``os.unshare``/``os.setns`` on
3.12+): namespaces, mount/pivot_root and the fsopen mount API, openat2, statx, capabilities,
prctl, seccomp, pidfd, FICLONE/copy_file_range copies. Failures raise ``OSError(errno, "<syscall>",
path)`` (runc's os.PathError). Stdlib only, and cheap to import (runtime.nsinit's start-up path):
no pathlib, no json; structures needed only by rare calls are made on first use."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# -- constants (x86_64 / generic Linux values) -------------------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID, "network": CLONE_NEWNET, "cgroup": CLONE_NEWCGROUP,
}
# /proc/<pid>/ns/<name> for each OCI namespace type
NS_PROC_NAMES = {"mount": "mnt", "uts": "uts", "ipc": "ipc", "user": "user", "pid": "pid",
                 "network": "net", "cgroup": "cgroup"}

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# statvfs f_flag bits (ST_*) that correspond to mount flags locked in a user namespace
ST_RDONLY, ST_NOSUID, ST_NODEV, ST_NOEXEC = 1, 2, 4, 8
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 1024, 2048, 4096

# mount(8)-style option words -> (set?, flag)
MOUNT_FLAG_WORDS: dict[str, tuple[bool, int]] = {
    "ro": (True, MS_RDONLY), "rw": (False, MS_RDONLY),
    "nosuid": (True, MS_NOSUID), "suid": (False, MS_NOSUID),
    "nodev": (True, MS_NODEV), "dev": (False, MS_NODEV),
    "noexec": (True, MS_NOEXEC), "exec": (False, MS_NOEXEC),
    "sync": (True, MS_SYNCHRONOUS), "async": (False, MS_SYNCHRONOUS),
    "dirsync": (True, MS_DIRSYNC), "remount": (True, MS_REMOUNT),
    "mand": (True, MS_MANDLOCK), "nomand": (False, MS_MANDLOCK),
    "atime": (False, MS_NOATIME), "noatime": (True, MS_NOATIME),
    "diratime": (False, MS_NODIRATIME), "nodiratime": (True, MS_NODIRATIME),
    "bind": (True, MS_BIND), "rbind": (True, MS_BIND | MS_REC),
    "relatime": (True, MS_RELATIME), "norelatime": (False, MS_RELATIME),
    "strictatime": (True, MS_STRICTATIME), "nostrictatime": (False, MS_STRICTATIME),
    "nosymfollow": (True, MS_NOSYMFOLLOW), "defaults": (False, 0),
}
PROPAGATION_WORDS = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC, "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_NR = {"pivot_root": 155, "openat2": 437, "setns": 308, "unshare": 272, "capget": 125,
       "capset": 126, "pidfd_send_signal": 424, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
       "fsmount": 432}

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100

# the new mount API (Linux >= 5.2; overlay's "lowerdir+" key needs 6.8)
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4

# The capability names, index = capability number (linux/capability.h).
CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBERS = {name: i for i, name in enumerate(CAP_NAMES)}


def _err(op: str, path: object = None) -> OSError:
    e = ctypes.get_errno()
    if path is None:
        return OSError(e, f"{op}: {os.strerror(e)}")
    return OSError(e, op, os.fsdecode(path) if isinstance(path, bytes | str) else str(path))


def _b(text: str | bytes | None) -> bytes | None:
    if text is None:
        return None
    return text if isinstance(text, bytes) else os.fsencode(text)


# -- namespaces ------------------------------------------------------------------------------
def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(flags)
        return
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise _err("unshare")


def setns(fd: int, nstype: int = 0) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        raise _err("setns")


# -- mounts ----------------------------------------------------------------------------------
def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None,
          flags: int = 0, data: str | bytes | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)) != 0:
        raise _err("mount", target)


def umount2(target: str | bytes, flags: int = 0) -> None:
    if _libc.umount2(_b(target), ctypes.c_int(flags)) != 0:
        raise _err("umount2", target)


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    if _syscall(_NR["pivot_root"], _b(new_root), _b(put_old)) != 0:
        raise _err("pivot_root", new_root)


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
    """fsopen(2): a filesystem context fd, configured with fsconfig() and made by fsmount()."""
    fd = _syscall(_NR["fsopen"], fstype.encode(), ctypes.c_uint(flags))
    if fd < 0:
        raise _err("fsopen", fstype)
    return int(fd)


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | bytes | None = None,
             aux: int = 0) -> None:
    """fsconfig(2): one parameter (FSCONFIG_SET_FLAG/SET_STRING) or FSCONFIG_CMD_CREATE."""
    if _syscall(_NR["fsconfig"], ctypes.c_int(fd), ctypes.c_uint(cmd), _b(key), _b(value),
                ctypes.c_int(aux)) < 0:
        raise _err("fsconfig", key if key is not None else f"cmd {cmd}")


def fsmount(fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    """fsmount(2): a detached mount (an fd) of a created filesystem context."""
    mnt = _syscall(_NR["fsmount"], ctypes.c_int(fd), ctypes.c_uint(flags), ctypes.c_uint(attr_flags))
    if mnt < 0:
        raise _err("fsmount")
    return int(mnt)


def move_mount(from_fd: int, from_path: str | bytes, to_fd: int, to_path: str | bytes,
               flags: int = 0) -> None:
    """move_mount(2): attach a mount (``from_fd`` with MOVE_MOUNT_F_EMPTY_PATH) at ``to_path``."""
    if _syscall(_NR["move_mount"], ctypes.c_int(from_fd), _b(from_path), ctypes.c_int(to_fd),
                _b(to_path), ctypes.c_uint(flags)) < 0:
        raise _err("move_mount", to_path)


def parse_mount_options(options: list[str] | tuple[str, ...]) -> tuple[int, int, list[str]]:
    """mount(8)-style words -> (flags, propagation flags, remaining fs-specific data words)."""
    flags, prop, data = 0, 0, []
    for word in options:
        if word in MOUNT_FLAG_WORDS:
            on, bit = MOUNT_FLAG_WORDS[word]
            flags = flags | bit if on else flags & ~bit
        elif word in PROPAGATION_WORDS:
            prop |= PROPAGATION_WORDS[word]
        else:
            data.append(word)
    return flags, prop, data


def locked_flags(path: str | bytes | int) -> int:
    """The MS_* flags a bind remount must keep (a user namespace cannot clear them)."""
    st = os.statvfs(path)
    out = 0
    for st_bit, ms_bit in ((ST_RDONLY, MS_RDONLY), (ST_NOSUID, MS_NOSUID), (ST_NODEV, MS_NODEV),
                           (ST_NOEXEC, MS_NOEXEC), (ST_NOATIME, MS_NOATIME),
                           (ST_NODIRATIME, MS_NODIRATIME), (ST_RELATIME, MS_RELATIME)):
        if st.f_flag & st_bit:
            out |= ms_bit
    return out


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str | bytes, flags: int, *, mode: int = 0,
            resolve: int = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) -> int:
    """openat2(2): with RESOLVE_IN_ROOT the kernel resolves ``path`` (symlinks and ``..``
    included) as if ``dirfd`` were ``/``: nothing can escape the directory."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _syscall(_NR["openat2"], ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
                  ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        raise _err("openat2", path)
    return int(fd)


# -- files -----------------------------------------------------------------------------------
_STATX_BTIME = 0x800
_statx_type: type[ctypes.Structure] | None = None   # made on first use: keeps this import cheap


def birth_time_ns(path: str | bytes) -> int | None:
    """The birth time of ``path`` (statx(2) STATX_BTIME, not following a final symlink), or
    None where libc or the filesystem does not report one."""
    global _statx_type
    fn = getattr(_libc, "statx", None)
    if fn is None:
        return None
    if _statx_type is None:
        class _Statx(ctypes.Structure):
            _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                        ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                        ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                        ("spare0", ctypes.c_uint16), ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                        ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                        ("atime", ctypes.c_int64 * 2), ("btime", ctypes.c_int64 * 2),
                        ("ctime", ctypes.c_int64 * 2), ("mtime", ctypes.c_int64 * 2),
                        ("rest", ctypes.c_uint8 * 128)]

        _statx_type = _Statx
    buf = _statx_type()
    if fn(AT_FDCWD, _b(path), AT_SYMLINK_NOFOLLOW, _STATX_BTIME, ctypes.byref(buf)) != 0:
        return None
    if not buf.mask & _STATX_BTIME:
        return None
    sec, nsec = buf.btime[0], buf.btime[1] & 0xFFFFFFFF
    return int(sec) * 1_000_000_000 + int(nsec)


_FICLONE = 0x40049409


def copy_file_data(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from fd ``src`` to fd ``dst`` (both at offset 0) in the kernel where
    it can: a reflink (FICLONE), then copy_file_range (same filesystem), then sendfile (any two
    files), then read/write. A failed fast path falls through; the last one raises."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError:
        pass
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                break
            left -= n
    except OSError:
        pass
    if left <= 0:
        return
    offset = size - left
    try:
        while left > 0:
            n = os.sendfile(dst, src, offset, min(left, 1 << 30))
            if n == 0:
                break
            offset += n
            left -= n
    except OSError:
        pass
    if left <= 0:
        return
    os.lseek(src, size - left, os.SEEK_SET)
    os.lseek(dst, size - left, os.SEEK_SET)
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            return
        os.write(dst, chunk)


# -- identity, capabilities, prctl -------------------------------------------------------------
def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, ctypes.c_size_t(len(raw))) != 0:
        raise _err("sethostname", name)


def setdomainname(name: str) -> None:
    raw = name.encode()
    if _libc.setdomainname(raw, ctypes.c_size_t(len(raw))) != 0:
        raise _err("setdomainname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rv = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                     ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))
    if rv < 0:
        raise _err(f"prctl({option})")
    return int(rv)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522


def capget(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks."""
    hdr = _CapHeader(_CAP_V3, pid)
    data = (_CapData * 2)()
    if _syscall(_NR["capget"], ctypes.byref(hdr), data) != 0:
        raise _err("capget")
    effective, permitted, inheritable = (int(getattr(data[0], f)) | (int(getattr(data[1], f)) << 32)
                                         for f in ("effective", "permitted", "inheritable"))
    return effective, permitted, inheritable


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _syscall(_NR["capset"], ctypes.byref(hdr), data) != 0:
        raise _err("capset")


def cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return len(CAP_NAMES) - 1


def capbset_drop(cap: int) -> None:
    prctl(PR_CAPBSET_DROP, cap)


def capbset_read(cap: int) -> bool:
    return prctl(PR_CAPBSET_READ, cap) == 1


def caps_mask(names: list[str] | tuple[str, ...] | set[str] | frozenset[str]) -> int:
    mask = 0
    for name in names:
        num = CAP_NUMBERS.get(name)
        if num is not None:
            mask |= 1 << num
    return mask


# -- seccomp ---------------------------------------------------------------------------------
class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_load(program: list[tuple[int, int, int, int]]) -> None:
    """Install a classic-BPF seccomp filter (a list of (code, jt, jf, k)); needs no_new_privs
    or CAP_SYS_ADMIN."""
    arr = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    prog = _SockFprog(len(program), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    if _libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                   ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise _err("seccomp")


# -- signals to processes --------------------------------------------------------------------
def pidfd_send_signal(pidfd: int, sig: int) -> None:
    if _syscall(_NR["pidfd_send_signal"], ctypes.c_int(pidfd), ctypes.c_int(sig), None,
                ctypes.c_uint(0)) != 0:
        raise _err("pidfd_send_signal")


# -- network ---------------------------------------------------------------------------------
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up(name: str = "lo") -> None:
    """Bring an interface up with the SIOCSIFFLAGS ioctl (no `ip` binary needed)."""
    import _socket  # the C module: `socket` costs ~6 ms of imports in the sandbox child

    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM, 0)
    try:
        req = struct.pack("16sH22x", name.encode(), 0)
        res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
        flags = struct.unpack("16sH22x", res)[1]
        if flags & IFF_UP:
            return
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
    finally:
        s.close()
