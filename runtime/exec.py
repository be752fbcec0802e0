"""`exec`: run a process inside a running container, as its own processes run.

The child joins the container's cgroup (from the host side, first), then every namespace the
container has that differs from ours (the user namespace first, when rootless), chroots to the
container's root (/proc/<pid>/root, opened before the mount namespace is joined), forks so the
process is inside the PID namespace, and drops to the container's security settings from its
OCI spec (bundle/config.json): capability bounding/effective/permitted sets, the USER resolved
from the container's /etc/passwd, no_new_privs, the seccomp filter. Everything the child needs
is imported *before* it enters the container: nothing is ever imported from the container's
files. Uses runtime.nsinit's helpers (user resolution, seccomp compiler, exec with 126/127).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import _syscalls as sc
from runtime.containers import Container, ContainerStateError, is_alive
from runtime.errors import SandboxError
from runtime.ptyrelay import relay

# namespace kind (OCI) -> /proc/<pid>/ns name, in join order (user first)
_NS_ORDER = (("user", "user"), ("cgroup", "cgroup"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"),
             ("pid", "pid"), ("mount", "mnt"))
FORWARD = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGWINCH)


@dataclass(frozen=True)
class ExecOptions:
    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str | None = None
    workdir: str | None = None
    tty: bool = False
    interactive: bool = False
    detach: bool = False
    privileged: bool = False


class ExecFailed(SandboxError):
    """The exec could not be set up (the message names the step)."""

    exit_code = 126


def _namespaces(pid: int) -> list[tuple[str, int]]:
    """(OCI kind, open fd) for each namespace of ``pid`` that differs from ours."""
    out: list[tuple[str, int]] = []
    try:
        for kind, name in _NS_ORDER:
            theirs = f"/proc/{pid}/ns/{name}"
            try:
                if Path(theirs).stat().st_ino == Path(f"/proc/self/ns/{name}").stat().st_ino:
                    continue
            except FileNotFoundError:
                continue   # a namespace type this kernel lacks
            out.append((kind, os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)))
    except BaseException:
        for _, fd in out:
            os.close(fd)
        raise
    return out


def _plan(c: Container, opts: ExecOptions) -> dict[str, Any]:
    """What the child does, computed in the parent (the child must not import or parse much)."""
    st = c.state()
    if st.status == "paused":
        raise ContainerStateError(f"container {c.name} is paused, unpause it first")
    if st.status != "running" or not st.pid or not is_alive(st.pid, st.pid_start):
        raise ContainerStateError(f"container {c.name} is not running",
                                  hint=f"start it with `pybuild start {c.name}`")
    try:
        spec = json.loads(c.path("bundle/config.json").read_bytes())
    except FileNotFoundError:
        spec = {"process": {"env": list(c.record.env), "cwd": c.record.working_dir or "/"}}
    proc = spec.get("process") or {}
    linux = spec.get("linux") or {}
    ann = spec.get("annotations") or {}
    env = dict(e.partition("=")[::2] for e in proc.get("env") or ())
    for e in opts.env:
        k, _, v = e.partition("=")
        env[k] = v
    caps = proc.get("capabilities") or {}
    if opts.privileged:
        last = sc.cap_last_cap()
        all_caps = [n for n, bit in sc.CAP_NUMBERS.items() if bit <= last]
        caps = {k: all_caps for k in ("bounding", "effective", "permitted")}
    user = opts.user if opts.user is not None else ann.get("io.pybuild.user")
    uid_gid = None
    if user is None:
        u = proc.get("user") or {}
        uid_gid = (int(u.get("uid", 0)), int(u.get("gid", 0)),
                   [int(g) for g in u.get("additionalGids") or ()])
    seccomp = None
    confined = ann.get("io.pybuild.seccomp", "default") != "unconfined"
    if not opts.privileged and confined and linux.get("seccomp"):
        from runtime.nsinit import seccomp_program

        seccomp = seccomp_program(linux["seccomp"])
    # v1 controllers: the process moves itself by writing "0" to `tasks` (a single-threaded
    # process: the thread is the process), which skips the kernel's global threadgroup rwsem
    # that writing a pid to cgroup.procs takes (an RCU grace period, ~10 ms); v2: cgroup.procs
    cgroups = [(path, "tasks" if controller else "cgroup.procs") for controller, path in st.cgroup.items()]
    return {"pid": st.pid, "cgroups": cgroups, "env": env, "caps": caps,
            "user": user or "", "uid_gid": uid_gid, "cwd": opts.workdir or proc.get("cwd") or "/",
            "nnp": bool(proc.get("noNewPrivileges")) and not opts.privileged, "seccomp": seccomp,
            "argv": list(opts.argv), "tty": opts.tty}


def _child(plan: dict[str, Any], ns: list[tuple[str, int]], root_fd: int, msg_w: int,
           slave: int | None) -> None:
    """In the forked child: join, fork into the PID namespace, drop privileges, exec.
    Never returns; reports setup failures on ``msg_w`` as one JSON line."""
    from runtime import nsinit

    stage = "cgroup"
    try:
        for path, name in plan["cgroups"]:
            _join_cgroup(path, name)
        stage = "namespaces"
        for kind, fd in ns:
            sc.setns(fd, sc.NAMESPACE_FLAGS[kind])
            os.close(fd)
        stage = "root"
        os.fchdir(root_fd)
        os.chroot(".")
        os.close(root_fd)
        pid = os.fork()
        if pid:
            # the shim: outside the PID namespace's view, waits and relays the status
            def forward(signum: int, _frame: object, child: int = pid) -> None:
                _kill(child, signum)

            for sig in FORWARD:
                signal.signal(sig, forward)
            os._exit(_wait_code(pid))
        for sig in FORWARD:
            signal.signal(sig, signal.SIG_DFL)
        stage = "user"
        if plan["uid_gid"] is not None:
            uid, gid, extra = plan["uid_gid"]
            home = "/"
        else:
            uid, gid, extra, home = nsinit.resolve_user(plan["user"], nsinit._read_text("/etc/passwd"),
                                                        nsinit._read_text("/etc/group"))
        env = dict(plan["env"])
        if plan["user"]:
            env["HOME"] = home
        env.setdefault("HOME", home)
        stage = "working directory"
        os.chdir(plan["cwd"])
        if slave is not None:
            stage = "tty"
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for target in (0, 1, 2):
                os.dup2(slave, target)
            if slave > 2:
                os.close(slave)
        caps = plan["caps"]
        keep = sc.caps_mask(caps.get("bounding") or ())
        stage = "capabilities"
        for cap in range(sc.cap_last_cap() + 1):
            if not keep & (1 << cap) and sc.capbset_read(cap):
                sc.capbset_drop(cap)
        stage = "user"
        try:
            os.setgroups(extra)
        except OSError:
            if extra:
                raise
        os.setresgid(gid, gid, gid)
        sc.prctl(sc.PR_SET_KEEPCAPS, 1)
        os.setresuid(uid, uid, uid)
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)
        stage = "capabilities"
        sc.capset(sc.caps_mask(caps.get("effective") or ()) & keep,
                  sc.caps_mask(caps.get("permitted") or ()) & keep,
                  sc.caps_mask(caps.get("inheritable") or ()) & keep)
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        if plan["nnp"]:
            stage = "no_new_privs"
            sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        if plan["seccomp"]:
            stage = "seccomp"
            sc.seccomp_load([tuple(x) for x in plan["seccomp"]])
        nsinit.exec_process(plan["argv"], env, msg_w)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
        err = getattr(exc, "errno", 0) or 0
        msg = {"type": "error", "stage": stage, "message": f"{stage}: {exc}", "errno": err, "exit": 126}
        with contextlib.suppress(OSError):
            os.write(msg_w, json.dumps(msg).encode() + b"\n")
    os._exit(126)


def _join_cgroup(path: str, name: str) -> None:
    """Move this (single-threaded) process into the cgroup directory ``path``: "0" to ``name``
    ("tasks" for v1, "cgroup.procs" for v2); our pid to cgroup.procs if the kernel refuses "0".
    A cgroup that is gone (the container is exiting) is skipped."""
    for file, value in ((name, "0"), ("cgroup.procs", str(os.getpid()))):
        try:
            fd = os.open(os.path.join(path, file), os.O_WRONLY | os.O_CLOEXEC)  # noqa: PTH118
        except FileNotFoundError:
            return
        try:
            os.write(fd, value.encode())
            return
        except OSError:
            if file == "cgroup.procs":
                raise
        finally:
            os.close(fd)


def _wait_code(pid: int) -> int:
    """Wait for child ``pid``: its exit code, 128+n when signal n killed it."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def exec_in_container(root: Path, c: Container, opts: ExecOptions) -> int:
    """Run ``opts.argv`` in container ``c``; returns its exit code (128+n for signal n), 126
    when it cannot be executed, 127 when it is not found. With ``detach`` returns 0 at once."""
    del root
    if not opts.argv:
        raise ExecFailed("exec: no command given")
    plan = _plan(c, opts)
    import runtime.nsinit  # noqa: F401 - imported now: the child must not import after setns

    ns = _namespaces(plan["pid"])
    root_fd = os.open(f"/proc/{plan['pid']}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
    master = slave = None
    if opts.tty:
        master, slave = _container_pty(plan["pid"])
        _copy_winsize(master)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(msg_r)
            if master is not None:
                os.close(master)
            if opts.detach:
                os.setsid()
                if os.fork():
                    os._exit(0)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
            elif not opts.interactive and slave is None:
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
            _child(plan, ns, root_fd, msg_w, slave)
        finally:
            os._exit(126)
    for _, fd in ns:
        os.close(fd)
    os.close(root_fd)
    os.close(msg_w)
    if slave is not None:
        os.close(slave)
    if opts.detach:
        os.waitpid(pid, 0)
        err = _read_error(msg_r, wait=0.5)
        os.close(msg_r)
        if err:
            _raise(err)
        return 0
    previous: dict[int, Any] = {}
    code = 0
    try:
        def forward(signum: int, _frame: object) -> None:
            _kill(pid, signum)

        for fsig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            previous[fsig] = signal.signal(fsig, forward)
        if master is not None:
            relay(master, interactive=opts.interactive)
        code = _wait_code(pid)
    finally:
        for old_sig, handler in previous.items():
            signal.signal(old_sig, handler)
        if master is not None:
            os.close(master)
    err = _read_error(msg_r, wait=0)
    os.close(msg_r)
    if err:
        _raise(err)
    return code


def _container_pty(pid: int) -> tuple[int, int]:
    """A pty from the container's own devpts (so `tty` inside names a /dev/pts entry it has),
    opened from the host with the path resolved inside the container's root; the slave comes
    from the master (TIOCGPTPEER: no path an attacker could race). Falls back to a host pty."""
    import stat

    tiocsptlck, tiocgptpeer = 0x40045431, 0x5441     # not exported by Python's termios
    root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        master = sc.openat2(root_fd, "dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return os.openpty()
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (5, 2):
            raise OSError(errno.EINVAL, "not a ptmx device")
        fcntl.ioctl(master, tiocsptlck, b"\0\0\0\0")
        slave = int(fcntl.ioctl(master, tiocgptpeer, os.O_RDWR | os.O_NOCTTY))
    except OSError:
        os.close(master)
        return os.openpty()
    return master, slave


def _read_error(fd: int, wait: float) -> dict[str, Any] | None:
    if not select.select([fd], [], [], wait)[0]:
        return None
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and doc.get("type") == "error":
                return doc
    return None


def _raise(err: dict[str, Any]) -> None:
    from runtime.errors import ExecDenied, ExecNotFound

    if err.get("stage") == "exec" or "argv0" in err:
        if err.get("exit") == 127:
            exc = ExecNotFound(str(err.get("argv0", "?")))
            raise exc
        raise ExecDenied(str(err.get("argv0", "?")), str(err.get("message", "")).split(": ", 1)[-1])
    raise ExecFailed(f"exec failed at {err.get('stage')}: {err.get('message')}")


def _copy_winsize(master: int) -> None:
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            return
