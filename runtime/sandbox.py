"""The parent side of the namespace sandbox: spawn runtime.nsinit, drive the handshake of
DESIGN C11 (see the table in runtime/nsinit.py), own the container's cgroup, forward signals,
relay a pty, and turn the outcome into an exit status.

Public API (used by runtime.run, the builder's RUN/COPY steps and the lifecycle verbs):

- ``start(spec, rootfs_mounts=..., stdio=..., prestart=..., detach=...) -> SandboxProcess``:
  returns once the command has been exec'd (or raises ExecNotFound/ExecDenied/SandboxError).
  ``SandboxProcess.pid`` is the host pid of the container's PID 1, ``.wait() -> ExitStatus``,
  ``.signal(n)``, ``.kill()``, ``.resize(rows, cols)``, ``.cgroup``, ``.console`` (pty master).
- ``run(spec, ...) -> ExitStatus``: start + signal forwarding (+ pty relay with a terminal) + wait.
- ``spawn_child(stdio=..., terminal=...) -> Child`` (or ``spawn_foreground`` for `pybuild run`):
  start the nsinit interpreter *before* the container is known, so its start-up overlaps the
  caller's own work (image lookup, snapshot, record); pass it to ``start``/``run`` as ``child=``.
- ``apply(action, root=..., rootfs_mounts=..., idmap=...)``: run ``runtime.fileops.execute``
  (COPY/ADD/WORKDIR file actions) on the mounted rootfs inside a private mount namespace (and
  the user namespace when rootless); returns what execute returned.
- ``run_runtime(spec, runtime="runc", ...)``: the same bundle handed to runc/crun.

Invariants: nothing is mounted in the host's mount namespace (the rootfs overlay is mounted by
the child inside its own); the cgroup is removed when the handle is waited or closed; every
protection in the spec is applied or the start fails naming it. Stdlib + runtime modules.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import marshal
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from runtime import cgroups
from runtime.errors import ExecDenied, ExecNotFound, SandboxError, UnsupportedHost

if TYPE_CHECKING:
    from runtime.idmap import IdMapping

PKG_ROOT = str(Path(__file__).resolve().parent.parent)
# -I: no user site, no PYTHON* env, no script dir/CWD on sys.path (a build context holding
# registry.py can never be imported); -S: no site-packages scan (~15 ms saved per container);
# the package root is appended after the stdlib so it cannot shadow it either.
BOOT = ("import sys; sys.path.append(sys.argv[1]); "
        "from runtime.nsinit import main; main(sys.argv[2:])")

StdioArg = int | IO[Any] | None

FORWARD_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
                   signal.SIGUSR2)


@dataclass
class ExitStatus:
    """How the container ended. ``exit_code`` follows docker: the code, or 128+n for signal n."""

    exit_code: int
    signal: int | None = None
    oom_killed: bool = False
    stats: dict[str, int] = field(default_factory=dict)


class SetupFailed(SandboxError):
    """A step of the container's setup failed (the message names the step)."""

    def __init__(self, stage: str, message: str, err: int = 0) -> None:
        super().__init__(f"container setup failed at {stage}: {message}")
        self.stage, self.errno = stage, err


def _mount_dict(m: Any) -> dict[str, Any]:
    if isinstance(m, Mapping):
        return {"type": m.get("type"), "source": m.get("source"), "options": list(m.get("options") or ())}
    return {"type": m.type, "source": m.source, "options": list(m.options)}


class _Lines:
    """Buffered JSON-lines reader over the child's message pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False
        self.pending: list[dict[str, Any]] = []

    def peek(self, *, block: bool = True) -> dict[str, Any] | None:
        """The next message, left for the next ``read``."""
        doc = self.read(block=block)
        if doc is not None:
            self.pending.insert(0, doc)
        return doc

    def read(self, *, block: bool = True) -> dict[str, Any] | None:
        if self.pending:
            return self.pending.pop(0)
        while b"\n" not in self.buf:
            if self.eof:
                return None
            if not block and not select.select([self.fd], [], [], 0)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                continue
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        doc = json.loads(line)
        assert isinstance(doc, dict)
        return doc


def _python() -> str:
    return sys.executable or "/usr/bin/python3"


DEVNULL = -3      # as subprocess.DEVNULL (either may be passed as a stdio entry)


class ChildProcess:
    """The sandbox child, spawned with os.posix_spawn: the part of subprocess.Popen this
    module uses (pid, returncode, poll, wait, send_signal, kill), without importing subprocess
    (selectors, locale, ...) on `pybuild run`'s start-up path. returncode is -N for signal N."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def _reap(self, options: int) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:       # reaped elsewhere (SIGCHLD ignored): as Popen does
            pid, status = self.pid, 0
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                if self.returncode is None:
                    self._reap(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            with self._lock:
                code = self.returncode if self.returncode is not None else self._reap(0)
        else:
            deadline = time.monotonic() + timeout
            delay = 0.0005
            while (code := self.poll()) is None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"sandbox child {self.pid} still running after {timeout}s")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        if code is None:           # (waitpid without WNOHANG always returns a status)
            raise ChildProcessError(f"sandbox child {self.pid}: no exit status")
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _spawn(mode_fds: dict[str, int], stdio: Sequence[StdioArg], *,
           python: str | None = None) -> ChildProcess:
    """Start ``python -I -S -c BOOT`` in a new session with an empty environment. ``stdio``
    entries: None (inherit), DEVNULL, an fd or a file object. ``mode_fds`` (name -> our fd)
    become fds 3, 4, ... of the child, named on its argv; every other fd of ours is
    close-on-exec (and nsinit closes whatever it inherited beyond those)."""
    exe = python or _python()
    high: list[int] = []

    def dup_high(fd: int) -> int:
        # a close-on-exec copy above every target fd, so no dup2 below clobbers a source
        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        high.append(copy)
        return copy

    actions: list[tuple[Any, ...]] = []
    argv = [exe, "-I", "-S", "-c", BOOT, PKG_ROOT]
    try:
        for target, src in enumerate(stdio):
            if src is None:
                continue
            if src == DEVNULL:
                actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_RDWR, 0))
            else:
                fd = src if isinstance(src, int) else src.fileno()
                actions.append((os.POSIX_SPAWN_DUP2, dup_high(fd), target))
        for n, (name, fd) in enumerate(mode_fds.items()):
            actions.append((os.POSIX_SPAWN_DUP2, dup_high(fd), 3 + n))
            argv.append(f"{name}={3 + n}")
        pid = os.posix_spawn(exe, argv, {}, file_actions=actions, setsid=True,
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        raise SandboxError(f"cannot start the sandbox child ({exe}): {exc.strerror}") from None
    finally:
        for fd in high:
            os.close(fd)
    return ChildProcess(pid)


def _plain(obj: Any) -> Any:
    """``obj`` as JSON's types (tuples become lists, mappings dicts), as the child expects;
    anything else is a TypeError, as json.dumps would raise."""
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"spec keys must be strings, not {type(k).__name__}")
            out[k] = _plain(v)
        return out
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    raise TypeError(f"object of type {type(obj).__name__} cannot be sent to the sandbox child")


def _send_frame(fd: int, obj: dict[str, Any]) -> None:
    # parent -> child frames are marshal (format 4, readable by every Python 3 since 3.4):
    # the child then needs no json (and no re) import. Child -> parent messages stay JSON.
    body = marshal.dumps(_plain(obj), 4)
    data = b"%08x" % len(body) + body
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _raise_for(err: Mapping[str, Any]) -> None:
    stage = str(err.get("stage", "?"))
    message = str(err.get("message", ""))
    if stage == "exec":
        if err.get("exit") == 127:
            exc: SandboxError = ExecNotFound(str(err.get("argv0", "?")))
            exc.args = (message.replace("exec ", "exec: ", 1) if message else exc.args[0],)
            raise exc
        raise ExecDenied(str(err.get("argv0", "?")), message.split(": ", 1)[-1] or "permission denied")
    raise SetupFailed(stage, message.split(": ", 1)[-1] if message.startswith(stage) else message,
                      int(err.get("errno") or 0))


def device_mode(spec: Mapping[str, Any], cgroup: cgroups.Cgroup | None, userns: bool) -> str:
    """How /dev is populated and device access enforced:
    "mknod" (the v1 devices cgroup enforces docker's allowlist), "privileged" (host devices),
    or "bind" (host nodes bind-mounted, every other mount nodev: the fail-closed substitute
    when no devices cgroup can be applied, e.g. cgroup v2 or a user namespace)."""
    ann = spec.get("annotations") or {}
    if ann.get("io.pybuild.privileged") == "true":
        return "privileged"
    if userns:
        return "bind"
    wants = bool(((spec.get("linux") or {}).get("resources") or {}).get("devices"))
    if wants and isinstance(cgroup, cgroups.CgroupV1) and "devices" in cgroup.dirs:
        return "mknod"
    return "bind"


class SandboxProcess:
    """A started container. Wait it (or close it) exactly once; both remove the cgroup."""

    def __init__(self, *, popen: ChildProcess, lines: _Lines, msg_r: int,
                 cgroup: cgroups.Cgroup | None, pid: int, pidfd: int, console: int | None) -> None:
        self.popen = popen
        self.shim_pid = popen.pid
        self._lines = lines
        self._msg_r = msg_r
        self.cgroup = cgroup
        self.pid = pid
        self._pidfd = pidfd
        self.console = console
        self.status: ExitStatus | None = None
        self._closed = False
        self._lock = threading.Lock()

    def signal(self, sig: int) -> None:
        """Deliver ``sig`` to PID 1 (through the shim, which is its parent: no pid reuse race).
        As in docker, PID 1 only receives the signals it installed handlers for (and SIGKILL)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.shim_pid, sig)

    def kill(self) -> None:
        """SIGKILL PID 1; the kernel then kills everything in its pid namespace."""
        if self._pidfd >= 0:
            from runtime._syscalls import pidfd_send_signal

            with contextlib.suppress(OSError):
                pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def resize(self, rows: int, cols: int) -> None:
        if self.console is not None:
            import fcntl
            import struct
            import termios

            with contextlib.suppress(OSError):
                fcntl.ioctl(self.console, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self) -> ExitStatus:
        """Block until the container exits; returns its status and removes its cgroup."""
        if self.status is not None:
            return self.status
        raw: int | None = None
        try:
            while True:
                m = self._lines.read()
                if m is None:
                    break
                if m.get("type") == "exit":
                    raw = int(m["status"])
            self.popen.wait()
        finally:
            status = self._finish(raw)
        return status

    def _finish(self, raw: int | None) -> ExitStatus:
        if raw is None:
            # the shim died without reporting (killed): PID 1 died with it (PDEATHSIG)
            code, sig = 255, None
            if self.popen.returncode is not None and self.popen.returncode < 0:
                sig = -self.popen.returncode
                code = 128 + sig
        elif os.WIFSIGNALED(raw):
            sig = os.WTERMSIG(raw)
            code = 128 + sig
        else:
            sig, code = None, os.WEXITSTATUS(raw)
        oom, stats = False, {}
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                stats = self.cgroup.stats()
                oom = self.cgroup.oom_kills() > 0
        self.status = ExitStatus(code, sig, oom, stats)
        self.close()
        return self.status

    def close(self) -> None:
        """Kill whatever is left, reap the shim, remove the cgroup, close fds. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self.popen.returncode is None:
                self.kill()
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait()
        finally:
            for fd in (self._msg_r, self._pidfd, self.console):
                if fd is not None and fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if self.cgroup is not None:
                self.cgroup.destroy()

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Child:
    """An nsinit interpreter started ahead of its container (``spawn_child``), blocked on its
    control pipe until ``start`` sends the configuration. Give it to ``start``/``run`` as
    ``child=`` (exactly once), or ``close`` it: EOF on the control pipe makes it exit."""

    def __init__(self, popen: ChildProcess, *, ctl_w: int, msg_r: int, fifo_r: int,
                 sock: Any, terminal: bool) -> None:
        self.popen = popen
        self.ctl_w, self.msg_r, self.fifo_r = ctl_w, msg_r, fifo_r
        self.sock = sock            # the console socket (parent end) when ``terminal``
        self.terminal = terminal
        self.used = False

    def close(self) -> None:
        """Discard the child unless ``start`` took it. Idempotent."""
        if self.used:
            return
        self.used = True
        for fd in (self.ctl_w, self.msg_r, self.fifo_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.sock is not None:
            self.sock.close()
        try:
            self.popen.wait(timeout=5)
        except TimeoutError:
            self.popen.kill()
            self.popen.wait()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn_child(stdio: Sequence[StdioArg] = (None, None, None), *, terminal: bool = False,
                python: str | None = None) -> Child:
    """Start the sandbox child now; it waits for ``start``. ``stdio`` is what the container's
    process gets (as for ``start``); ``terminal`` must match ``start``'s use of a pty console
    (``process.terminal`` with console="pty"). The interpreter's start-up (~10 ms) then runs
    while the caller resolves the image and prepares the rootfs."""
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
    fifo_r, fifo_w = os.pipe2(os.O_CLOEXEC)
    fds = {"ctl": ctl_r, "msg": msg_w, "fifo": fifo_w}
    parent_sock = child_sock = None
    if terminal:
        import socket

        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds["console"] = child_sock.fileno()
    try:
        popen = _spawn(fds, stdio, python=python)
    except BaseException:
        for fd in (ctl_w, msg_r, fifo_r):
            os.close(fd)
        if parent_sock is not None:
            parent_sock.close()
        raise
    finally:
        for fd in (ctl_r, msg_w, fifo_w):
            os.close(fd)
        if child_sock is not None:
            child_sock.close()
    return Child(popen, ctl_w=ctl_w, msg_r=msg_r, fifo_r=fifo_r, sock=parent_sock, terminal=terminal)


def spawn_foreground(*, interactive: bool, tty: bool, python: str | None = None) -> Child:
    """The child for a foreground `pybuild run` (what ``runtime.run.run_image`` would start):
    with ``tty`` the pty is the container's stdio; otherwise stdout/stderr are this process's
    and stdin is this one's only with ``interactive`` (else /dev/null)."""
    if tty:
        return spawn_child((DEVNULL,) * 3, terminal=True, python=python)
    if interactive:
        return spawn_child((None, None, None), python=python)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return spawn_child((null, None, None), python=python)
    finally:
        os.close(null)


def start(spec: Mapping[str, Any], *, rootfs_mounts: Sequence[Any] = (),
          stdio: Sequence[StdioArg] = (None, None, None), cgroup_name: str | None = None,
          cgroup: cgroups.Cgroup | None | bool = True, rootless: bool | None = None,
          prestart: Callable[[int], None] | None = None, detach: bool = False,
          console: str = "pty", python: str | None = None, child: Child | None = None) -> SandboxProcess:
    """Start the container described by ``spec`` (an OCI config.json dict) whose rootfs is
    ``rootfs_mounts`` (snapshotter mounts, applied on ``spec.root.path`` inside the container's
    mount namespace; empty = ``root.path`` already is the rootfs). Returns after the exec.

    ``cgroup``: True = create one named ``cgroup_name`` (required when the spec has resource
    limits), False = none, or a Cgroup to use. ``prestart(pid)`` runs in the parent once the
    namespaces exist and before the command is exec'd (network plumbing: the netns is there,
    the command does not run yet), while PID 1 mounts its rootfs (before, with a user
    namespace); raising aborts.
    ``detach``: PID 1 does not die with this process (a monitor keeps the handle instead).
    ``console`` (when ``process.terminal``): "pty" = a pty from the container's own devpts whose
    master is ``SandboxProcess.console``; "stdio" = stdin already is a tty (e.g. the monitor's
    pty slave) and becomes the controlling terminal. ``child``: a ``spawn_child`` result to use
    (its stdio replaces ``stdio``); it is consumed, whatever happens."""
    terminal = bool((spec.get("process") or {}).get("terminal")) and console == "pty"
    try:
        linux = spec.get("linux") or {}
        userns = any(n.get("type") == "user" and not n.get("path") for n in linux.get("namespaces") or ())
        idmap = None
        if userns:
            from runtime.idmap import IdMapping

            idmap = IdMapping.from_oci(linux)
        if userns and idmap is None:
            raise SandboxError("the spec asks for a user namespace without uid/gid mappings")
        if rootless is None:
            rootless = os.geteuid() != 0
        if rootless and not userns:
            raise UnsupportedHost("a rootless container needs a user namespace",
                                  hint="pybuild adds one by default when not root")
        if child is not None and (child.used or child.terminal != terminal):
            raise SandboxError("the pre-spawned sandbox child does not fit this container "
                               f"(made for terminal={child.terminal}, already used={child.used})")
    except BaseException:
        if child is not None:
            child.close()
        raise
    if child is None:
        child = spawn_child(stdio, terminal=terminal, python=python)
    child.used = True
    popen, ctl_w, msg_r, fifo_r = child.popen, child.ctl_w, child.msg_r, child.fifo_r
    parent_sock = child.sock
    cg: cgroups.Cgroup | None = None
    proc: SandboxProcess | None = None
    lines = _Lines(msg_r)
    try:
        if cgroup is True:
            res = cgroups.Resources.from_oci(linux.get("resources"))
            cg = cgroups.create(cgroup_name or f"pybuild-{os.urandom(8).hex()}", res, rootless=rootless,
                                devices=bool((linux.get("resources") or {}).get("devices")))
        elif cgroup is not False:
            cg = cgroup
        dmode = device_mode(spec, cg, userns)
        # PID 1 joins its cgroup itself, first thing after "go", when it can (v1, no user
        # namespace: it is root on the host then); else this process adds it before "go"
        join = cg.self_join_files() if cg is not None and not userns else []
        # with a prestart hook (network plumbing), PID 1 sets itself up while the hook runs and
        # waits for a second "go" just before it execs the command. Not with a user namespace:
        # PID 1 turns non-dumpable early in its setup, and an unprivileged parent (slirp4netns,
        # nsenter) could then no longer open /proc/<pid>/ns/*.
        late = prestart is not None and not userns
        cfg = {"mode": "run", "spec": spec, "rootfs_mounts": [_mount_dict(m) for m in rootfs_mounts],
               "parent_pid": os.getpid(), "detach": detach, "device_mode": dmode,
               "console": console, "cgroup_dirs": list(cg.paths().values()) if cg is not None else [],
               "cgroup_paths": cg.paths() if cg is not None else {}, "cgroup_join": join,
               "late_go": late}
        _send_frame(ctl_w, cfg)
        first = lines.read()
        if first is None or first.get("type") != "pid":
            popen.wait()
            if first is not None and first.get("type") == "error":
                _raise_for(first)
            raise SandboxError(f"the sandbox child exited early (status {popen.returncode})")
        pid = int(first["pid"])
        pidfd = os.pidfd_open(pid)
        proc = SandboxProcess(popen=popen, lines=lines, msg_r=msg_r, cgroup=cg, pid=pid, pidfd=pidfd,
                              console=None)
        if idmap is not None:
            from runtime.idmap import write_maps

            write_maps(pid, idmap)
        if cg is not None and not join:
            cg.add(pid)
        if late:
            _send_go(ctl_w)
        if prestart is not None:
            prestart(pid)
        _send_go(ctl_w)
        os.close(ctl_w)
        ctl_w = -1
        if parent_sock is not None:
            proc.console = _receive_console(parent_sock)
        while os.read(fifo_r, 4096):
            pass
        # peek, not read: a command that is already gone (`true`) may have its "exit" message
        # here, and wait() must still see it
        err = lines.peek(block=False)
        if err is not None and err.get("type") == "error":
            proc.wait()
            _raise_for(err)
        return proc
    except BaseException:
        if proc is not None:
            proc.close()
        else:
            if popen.returncode is None:
                popen.kill()
                popen.wait()
            with contextlib.suppress(OSError):
                os.close(msg_r)
            if cg is not None:
                cg.destroy()
        raise
    finally:
        for fd in (ctl_w, fifo_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if parent_sock is not None:
            parent_sock.close()


def _send_go(ctl_w: int) -> None:
    try:
        _send_frame(ctl_w, {"type": "go"})
    except BrokenPipeError:
        pass        # PID 1 is gone already: its error message (read next) says why


def _receive_console(sock: Any) -> int | None:
    import socket

    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    if not fds:
        return None
    os.set_inheritable(fds[0], False)
    return int(fds[0])


# -- foreground run: signals and the pty ------------------------------------------------------------
def run(spec: Mapping[str, Any], *, rootfs_mounts: Sequence[Any] = (),
        stdio: Sequence[StdioArg] = (None, None, None), forward_signals: bool = True,
        interactive: bool = False, on_start: Callable[[SandboxProcess], None] | None = None,
        **kwargs: Any) -> ExitStatus:
    """Run to completion in the foreground: ``start`` + signal forwarding + (with a terminal)
    the pty relay between this process's stdin/stdout and the container. ``on_start`` is
    called once the command runs (record the container as running there)."""
    terminal = bool((spec.get("process") or {}).get("terminal")) and kwargs.get("console", "pty") == "pty"
    if terminal:
        stdio = (DEVNULL, DEVNULL, DEVNULL)
        size = _local_size()
        if size is not None:
            spec = {**spec, "process": {**spec["process"], "consoleSize": {"height": size[0],
                                                                          "width": size[1]}}}
    previous: dict[int, Any] = {}
    holder: list[SandboxProcess] = []
    pending: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if holder:
            holder[0].signal(sig)
        else:
            pending.append(sig)     # delivered as soon as the container runs

    if forward_signals and threading.current_thread() is threading.main_thread():
        for fsig in FORWARD_SIGNALS:
            previous[fsig] = signal.signal(fsig, forward)
    proc: SandboxProcess | None = None
    try:
        proc = start(spec, rootfs_mounts=rootfs_mounts, stdio=stdio, **kwargs)
        holder.append(proc)
        for pending_sig in pending:
            proc.signal(pending_sig)
        if on_start is not None:
            on_start(proc)
        if terminal and proc.console is not None:
            _relay(proc, interactive=interactive, previous=previous)
        return proc.wait()
    finally:
        for prev_sig, handler in previous.items():
            signal.signal(prev_sig, handler)
        if proc is not None:
            proc.close()


def _local_size() -> tuple[int, int] | None:
    import fcntl
    import struct
    import termios

    for fd in (0, 1):
        try:
            rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        except OSError:
            continue
        if rows and cols:
            return rows, cols
    return None


def _relay(proc: SandboxProcess, *, interactive: bool, previous: dict[int, Any]) -> None:
    """runtime.ptyrelay.relay between this process's stdin/stdout and the container's pty
    (the local terminal in raw mode); SIGWINCH resizes the container's."""
    from runtime.ptyrelay import relay

    assert proc.console is not None

    def winch(_s: int = 0, _f: object = None) -> None:
        size = _local_size()
        if size is not None:
            proc.resize(*size)

    if threading.current_thread() is threading.main_thread():
        previous.setdefault(signal.SIGWINCH, signal.signal(signal.SIGWINCH, winch))
    relay(proc.console, interactive=interactive)


# -- file actions (builder COPY/ADD/WORKDIR) --------------------------------------------------------
# error kinds a file action may raise that come back as their own type:
# class name -> (module, constructor fields sent by nsinit)
_ERROR_KINDS = {"UnsafePath": ("runtime.errors", ("entry", "why")),
                "LayerError": ("runtime.errors", ("layer", "entry", "why")),
                "UnknownUser": ("runtime.users", ("what", "name")),
                "FileActionError": ("runtime.fileops", ())}


def codec_search_paths() -> list[str]:
    """Where this interpreter finds isal and zstandard. File-action children run ``python -I -S``
    (no site-packages); without these they would gzip with zlib (other bytes, slower) and fail
    on zstd: the rootless unpack and the rootless layer commit both run there."""
    import sys

    out: list[str] = []
    for name in ("isal", "zstandard"):
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) if mod is not None else None
        if origin is None:
            import importlib.util

            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            origin = spec.origin if spec is not None else None
        if origin:
            from pathlib import Path

            site = str(Path(origin).parent.parent)
            if site not in out:
                out.append(site)
    return out


def apply(action: Mapping[str, Any], *, root: str | os.PathLike[str], rootfs_mounts: Sequence[Any] = (),
          idmap: IdMapping | None = None, python: str | None = None,
          extra_mounts: Sequence[tuple[str | os.PathLike[str], Sequence[Any]]] = ()) -> Any:
    """Run ``runtime.fileops.execute(action, root)`` in a child with a private mount namespace
    (plus a user namespace with ``idmap``: rootless ownership is then real, e.g. COPY --chown).
    ``rootfs_mounts`` are mounted on ``root`` first (an empty mount point), then each
    ``extra_mounts`` entry (host mount point, mounts) — e.g. another stage's read-only view for
    COPY --from; all of it vanishes with the child. ``{"op": "batch", "actions": [...]}`` runs
    several actions in one child (runtime.fileops.run_actions). Returns execute's
    (JSON-serializable) result; its errors come back as SandboxError subclasses (UnsafePath,
    LayerError, UnknownUser and FileActionError keep their type; others keep message and hint)."""
    if idmap is None and os.geteuid() != 0:
        raise UnsupportedHost("file actions as a non-root user need a user namespace id map",
                              hint="pass idmap=runtime.idmap.rootless_mapping()")
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
    fds = {"ctl": ctl_r, "msg": msg_w}
    import tempfile

    result_file = Path(tempfile.gettempdir()) / f"pybuild-apply-{os.urandom(8).hex()}.json"
    popen = None
    try:
        try:
            popen = _spawn(fds, (DEVNULL, None, None), python=python)
        finally:
            os.close(ctl_r)
            os.close(msg_w)
        lines = _Lines(msg_r)
        _send_frame(ctl_w, {"mode": "apply", "root": os.fspath(root), "action": dict(action),
                            "rootfs_mounts": [_mount_dict(m) for m in rootfs_mounts],
                            "extra_mounts": [[os.fspath(t), [_mount_dict(m) for m in ms]]
                                             for t, ms in extra_mounts],
                            "userns": idmap is not None, "result_file": str(result_file),
                            "sys_path": codec_search_paths()})
        first = lines.read()
        if first is None or first.get("type") != "pid":
            popen.wait()
            if first is not None:
                _apply_error(first)
            raise SandboxError("the file-action child exited early")
        if idmap is not None:
            from runtime.idmap import write_maps

            write_maps(int(first["pid"]), idmap)
        _send_frame(ctl_w, {"type": "go"})
        reply = lines.read()
        popen.wait()
        if reply is None:
            raise SandboxError(f"the file-action child died (status {popen.returncode})")
        if reply.get("type") == "result-file":
            reply = json.loads(result_file.read_bytes())
        if reply.get("type") == "error":
            _apply_error(reply)
        return reply.get("value")
    finally:
        if popen is not None and popen.returncode is None:
            popen.kill()
            popen.wait()
        for fd in (ctl_w, msg_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            result_file.unlink()


def _apply_error(err: Mapping[str, Any]) -> None:
    """Raise what the file action raised: its own type for the kinds above (same message,
    fields and hint), else a SandboxError that keeps the message and the hint."""
    kind = str(err.get("kind", ""))
    fields = err.get("fields") or {}
    message = str(err.get("message", ""))
    hint = fields.get("hint") if isinstance(fields.get("hint"), str) else None
    known = _ERROR_KINDS.get(kind)
    if known is not None and all(k in fields for k in known[1]):
        import importlib

        cls = getattr(importlib.import_module(known[0]), kind)
        exc = cls(*(fields[k] for k in known[1])) if known[1] else cls(message)
        if message:
            exc.args = (message,)
        if hint is not None:
            exc.hint = hint
        raise exc
    raise SandboxError(f"file action failed ({err.get('stage')}): {message}", hint=hint)


# -- an external OCI runtime on the same bundle -------------------------------------------------------
def run_runtime(spec: Mapping[str, Any], *, bundle: str | os.PathLike[str], container_id: str,
                runtime: str = "runc", rootfs_mounts: Sequence[Any] = (),
                stdio: Sequence[StdioArg] = (None, None, None), state_root: str | None = None,
                python: str | None = None) -> int:
    """Hand the bundle to runc/crun: a child mounts the rootfs on ``bundle/rootfs`` inside a
    private mount namespace (nothing visible on the host), writes config.json with the USER
    resolved from the image, and execs ``RUNTIME [--root STATE] run --bundle B ID``. Returns
    the runtime's exit code (the container's)."""
    import shutil

    exe = shutil.which(runtime)
    if exe is None:
        raise UnsupportedHost(f"OCI runtime {runtime!r} not found in PATH")
    bundle_path = Path(bundle).resolve()
    rootfs = bundle_path / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    spec = json.loads(json.dumps(spec))
    spec["root"]["path"] = str(rootfs.resolve())   # runc wants absolute, no symlinks
    argv = [runtime]
    if state_root:
        Path(state_root).mkdir(parents=True, exist_ok=True)
        argv += ["--root", state_root]
    argv += ["run", "--bundle", str(bundle_path), container_id]
    hide = cgroups.hybrid_v2_mounts() if Path(exe).name == "crun" else []
    if hide and (spec.get("linux") or {}).get("resources", {}).get("hugepageLimits"):
        raise UnsupportedHost("crun cannot apply hugepage limits on this hybrid cgroup host",
                              hint="use --runtime runc, or the built-in sandbox")
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            popen = _spawn({"ctl": ctl_r, "msg": msg_w}, stdio, python=python)
        finally:
            os.close(ctl_r)
            os.close(msg_w)
        _send_frame(ctl_w, {"mode": "runtime", "spec": spec, "bundle": str(bundle_path),
                            "rootfs_mounts": [_mount_dict(m) for m in rootfs_mounts],
                            "runtime_path": exe, "runtime_argv": argv, "hide_mounts": hide})
        os.close(ctl_w)
        ctl_w = -1
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARD_SIGNALS:
                previous[sig] = signal.signal(sig, lambda s, _f: popen.send_signal(s))
        try:
            code = popen.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        err = _Lines(msg_r).read(block=False)
        if err is not None and err.get("type") == "error":
            _raise_for(err)
        return code if code >= 0 else 128 - code
    finally:
        for fd in (ctl_w, msg_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
