"""The container monitor (a conmon analogue): a detached process per running container.

``spawn(root, id)`` starts ``python -I -m runtime.monitor`` in its own session (double fork, so
it outlives the CLI and is nobody's zombie) and waits until the container runs or fails. The
monitor owns the container's stdio and writes it to ``containers/<id>/json.log`` (docker's
json-file lines), reaps the container, records exit code, finish time and OOMKilled in
state.json atomically, applies ``--restart``, tears down the network, and exits. Stdlib +
registry.store helpers + runtime only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from runtime.containers import (
    Container,
    ContainerState,
    ContainerStore,
    is_alive,
    parse_rfc3339,
    process_start_time,
    rfc3339_nano,
)
from runtime.errors import SandboxError

PKG_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = ("import sys; sys.path.append(sys.argv[1]); "
         "from runtime.monitor import _main; sys.exit(_main(sys.argv[2:]))")
MAX_PARTIAL = 16 * 1024          # a line longer than this is split, as docker does
DRAIN_AFTER_EXIT = 1.0           # seconds to keep reading output after the container's init exits
BACKOFF_START, BACKOFF_MAX = 0.1, 60.0


class MonitorError(SandboxError):
    """The monitor could not start the container (the message comes from the monitor)."""


class MonitorExecDenied(MonitorError):
    exit_code: ClassVar[int] = 126


class MonitorExecNotFound(MonitorError):
    exit_code: ClassVar[int] = 127


_BY_CODE: dict[int, type[MonitorError]] = {126: MonitorExecDenied, 127: MonitorExecNotFound}


# -- the json-file log ---------------------------------------------------------------------------

class LogWriter:
    """Appends docker json-file entries: {"log": ..., "stream": ..., "time": RFC3339Nano}."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.partial: dict[str, bytes] = {}

    def _emit(self, stream: str, data: bytes) -> None:
        entry = {"log": data.decode("utf-8", "replace"), "stream": stream, "time": rfc3339_nano()}
        os.write(self.fd, json.dumps(entry, ensure_ascii=False).encode() + b"\n")

    def feed(self, stream: str, data: bytes) -> None:
        buf = self.partial.get(stream, b"") + data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[: nl + 1], buf[nl + 1:]
            while len(line) > MAX_PARTIAL:
                self._emit(stream, line[:MAX_PARTIAL])
                line = line[MAX_PARTIAL:]
            self._emit(stream, line)
        while len(buf) >= MAX_PARTIAL:
            self._emit(stream, buf[:MAX_PARTIAL])
            buf = buf[MAX_PARTIAL:]
        self.partial[stream] = buf

    def flush(self) -> None:
        for stream, buf in self.partial.items():
            if buf:
                self._emit(stream, buf)
        self.partial.clear()

    def close(self) -> None:
        self.flush()
        os.close(self.fd)


@dataclass(frozen=True)
class LogEntry:
    log: str
    stream: str
    time: str

    @property
    def timestamp(self) -> float:
        return parse_rfc3339(self.time) or 0.0


def parse_log_line(line: bytes) -> LogEntry | None:
    try:
        d = json.loads(line)
        return LogEntry(str(d["log"]), str(d.get("stream", "stdout")), str(d.get("time", "")))
    except (ValueError, KeyError, TypeError):
        return None


def read_log(path: Path, *, tail: int | None = None, since: float | None = None,
             until: float | None = None, follow: bool = False,
             alive: Callable[[], bool] | None = None, poll: float = 0.05,
             offset: int = 0) -> Iterator[LogEntry]:
    """The entries of a json-file log, from byte ``offset`` on (`start -a`: what this run
    writes). ``follow`` keeps reading while ``alive()`` is true and stops once the container
    has stopped and everything written was read (docker's logs -f)."""

    def keep(e: LogEntry) -> bool:
        ts = e.timestamp
        return (since is None or ts >= since) and (until is None or ts <= until)

    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        if offset:
            f.seek(offset)
        if tail is not None:
            last: deque[LogEntry] = deque(maxlen=max(tail, 0))
            for line in f:
                e = parse_log_line(line)
                if e is not None and keep(e):
                    last.append(e)
            yield from last
        else:
            for line in iter(f.readline, b""):
                if not line.endswith(b"\n"):
                    f.seek(-len(line), os.SEEK_CUR)
                    break
                e = parse_log_line(line)
                if e is not None and keep(e):
                    yield e
        if not follow:
            return
        pending = b""
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    e = parse_log_line(pending)
                    pending = b""
                    if e is not None and keep(e):
                        yield e
                continue
            if alive is not None and not alive():
                # one last read: the monitor writes the final lines before recording the exit
                rest = pending + f.read()
                for line in rest.splitlines():
                    e = parse_log_line(line)
                    if e is not None and keep(e):
                        yield e
                return
            time.sleep(poll)


# -- launchers: how the monitor starts the container's process ------------------------------------

class Launched(Protocol):
    pid: int

    def wait(self) -> int: ...                      # the container's exit code (128+n for signal n)
    def oom_killed(self) -> bool: ...
    def cgroup_paths(self) -> dict[str, str]: ...
    def cleanup(self) -> None: ...


class Launcher(Protocol):
    def start(self, store_root: Path, c: Container, stdio: tuple[int, int, int],
              prestart: Callable[[int], None]) -> Launched: ...


def exit_code_of(returncode: int) -> int:
    """subprocess's returncode (negative for a signal) -> docker's exit code."""
    return 128 - returncode if returncode < 0 else returncode


class _ProcessHandle:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def wait(self) -> int:
        return exit_code_of(self.proc.wait())

    def oom_killed(self) -> bool:
        return False

    def cgroup_paths(self) -> dict[str, str]:
        return {}

    def cleanup(self) -> None:
        return None


class ProcessLauncher:
    """Runs the record's argv as a plain host process in its own session: no isolation at all.
    For tests of the monitor itself and for debugging (``run.launcher = "process"``)."""

    def start(self, store_root: Path, c: Container, stdio: tuple[int, int, int],
              prestart: Callable[[int], None]) -> Launched:
        # imported on first use (the monitor's start-up never loads ctypes) and in the parent
        # (nothing is imported between fork and exec); the child dies with the monitor
        from runtime._syscalls import PR_SET_PDEATHSIG, prctl

        def pdeathsig() -> None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

        r = c.record
        env = dict(e.split("=", 1) for e in r.env if "=" in e) or {"PATH": os.environ.get("PATH", "")}
        try:
            proc = subprocess.Popen(list(r.argv), stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                                    env=env, cwd=r.working_dir or "/", start_new_session=True,
                                    preexec_fn=pdeathsig)  # noqa: PLW1509 - single-threaded monitor
        except FileNotFoundError:
            from runtime.errors import ExecNotFound

            raise ExecNotFound(r.argv[0] if r.argv else "") from None
        except PermissionError:
            from runtime.errors import ExecDenied

            raise ExecDenied(r.argv[0]) from None
        try:
            prestart(proc.pid)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return _ProcessHandle(proc)


def launcher_for(c: Container) -> Launcher:
    kind = str(c.record.run.get("launcher", "sandbox"))
    if kind == "process":
        return ProcessLauncher()
    if kind == "sandbox":
        import importlib

        factory = getattr(importlib.import_module("runtime.run"), "container_launcher", None)
        if factory is None:
            raise MonitorError("this build of pybuild cannot start detached containers yet "
                               "(runtime.run.container_launcher is missing)")
        launcher: Launcher = factory()
        return launcher
    raise MonitorError(f"unknown launcher {kind!r} in the container record")


# -- the monitor ----------------------------------------------------------------------------------

@dataclass
class _Run:
    handle: Launched
    out_r: int
    err_r: int | None
    stdin_w: int | None
    started: float


class Monitor:
    """One monitor process for one container; ``main()`` returns when the container is done for
    good (exited with no restart due, or stopped by the user)."""

    def __init__(self, store_root: Path, cid: str, ready_fd: int | None) -> None:
        self.root = store_root
        self.containers = ContainerStore(store_root / "containers")
        self.c: Container = self.containers.get(cid)
        self.ready_fd = ready_fd
        self.stop_signal_received = False
        self.net_closers: list[Callable[[], None]] = []

    # readiness: one JSON line to the process that spawned us
    def _ready(self, msg: dict[str, Any]) -> None:
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, json.dumps(msg).encode() + b"\n")
            os.close(self.ready_fd)
        self.ready_fd = None

    def _on_term(self, signum: int, frame: object) -> None:
        del frame
        # no state write here: the handler may interrupt one that holds the state lock; the
        # main loop sees the flag (no restart) and records the exit as usual
        del signum
        self.stop_signal_received = True
        st = self.c.raw_state()
        if st.pid:
            # a stop, as `pybuild stop` does it: the stop signal now, SIGKILL after the timeout
            from runtime.lifecycle import parse_signal

            with contextlib.suppress(ProcessLookupError, SandboxError):
                os.kill(st.pid, parse_signal(self.c.record.stop_signal or "SIGTERM"))
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, max(self.c.record.stop_timeout, 0) + 0.01)

    def _on_alarm(self, signum: int, frame: object) -> None:
        del signum, frame
        st = self.c.raw_state()
        if st.pid and is_alive(st.pid, st.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(st.pid, signal.SIGKILL)

    def _prestart(self, pid: int) -> None:
        """Between namespace creation and exec: plug the container into its network."""
        from runtime.network import attach_container

        att = attach_container(self.root, self.c, pid)
        self.net_closers.append(att.close)
        self.c.update_state(networks=att.settings)

    def _teardown_network(self) -> None:
        from runtime.network import detach_container

        for close in self.net_closers:
            with contextlib.suppress(Exception):  # noqa: BLE001 - teardown must go on
                close()
        self.net_closers.clear()
        detach_container(self.root, self.c)

    def _drop_adopted_freezer(self, own: dict[str, str]) -> None:
        """A freezer cgroup `pause` created for this run (cgroup v1 without one of the
        sandbox's): empty now, so remove it."""
        path = self.c.raw_state().cgroup.get("freezer")
        if not path or path in own.values():
            return
        for _ in range(100):
            try:
                Path(path).rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)

    def _start_once(self) -> _Run:
        r = self.c.record
        if any(m.type == "volume" for m in r.mounts):
            from runtime.volumes import populate_volumes

            populate_volumes(self.root, self.c)
        stdin_w: int | None = None
        err_r: int | None = None
        if r.tty:
            out_r, slave = os.openpty()
            stdio = (slave, slave, slave)
            to_close = [slave]
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            if r.interactive:
                in_r, stdin_w = os.pipe()      # held open: the container never sees EOF
                os.set_inheritable(stdin_w, False)
            else:
                in_r = os.open(os.devnull, os.O_RDONLY)
            stdio = (in_r, out_w, err_w)
            to_close = [in_r, out_w, err_w]
        for fd in (out_r, err_r):
            if fd is not None:
                os.set_inheritable(fd, False)
        try:
            handle = launcher_for(self.c).start(self.root, self.c, stdio, self._prestart)
        except BaseException:
            for fd in (out_r, err_r, stdin_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in to_close:
                os.close(fd)
        return _Run(handle, out_r, err_r, stdin_w, time.monotonic())

    def _pump(self, run: _Run, log: LogWriter) -> int:
        """Copy output to the log until the container exits (and its pipes drain)."""
        streams: dict[int, str] = {run.out_r: "stdout"}
        if run.err_r is not None:
            streams[run.err_r] = "stderr"
        pidfd: int | None = None
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(run.handle.pid)
        code: int | None = None
        deadline: float | None = None
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        while streams:
            timeout_ms = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            events = poller.poll(timeout_ms)
            for fd, _ in events:
                if fd == pidfd:
                    poller.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = None
                    code = run.handle.wait()
                    deadline = time.monotonic() + DRAIN_AFTER_EXIT
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:     # EIO: the pty's last writer is gone
                    data = b""
                if data:
                    log.feed(streams[fd], data)
                else:
                    poller.unregister(fd)
                    streams.pop(fd)
            if pidfd is None and code is None and process_start_time(run.handle.pid) is None:
                # no pidfd (old kernel): the process was polled and is gone
                code = run.handle.wait()
                deadline = time.monotonic() + DRAIN_AFTER_EXIT
            if deadline is not None and time.monotonic() >= deadline:
                break
        log.flush()
        leftovers: tuple[int | None, ...] = (run.out_r, run.err_r, run.stdin_w, pidfd)
        for left in leftovers:
            if left is not None:
                with contextlib.suppress(OSError):
                    os.close(left)
        if code is None:
            code = run.handle.wait()
        return code

    def _should_restart(self, code: int, ran_for: float) -> bool:
        st = self.c.raw_state()
        if st.stop_requested or self.stop_signal_received:
            return False
        policy, max_retries = self.c.record.restart_policy()
        if policy in ("always", "unless-stopped"):
            return True
        if policy == "on-failure" and code != 0:
            return max_retries == 0 or st.restart_count < max_retries
        return False

    def main(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        me, me_start = os.getpid(), process_start_time(os.getpid())
        log = LogWriter(self.c.log_path)
        backoff = BACKOFF_START
        first = True
        try:
            while True:
                try:
                    run = self._start_once()
                except SandboxError as exc:
                    self._teardown_network()
                    self.c.update_state(status="exited" if not first else "created", pid=0,
                                        exit_code=exc.exit_code, error=str(exc), monitor_pid=0,
                                        finished_at=rfc3339_nano() if not first else
                                        self.c.raw_state().finished_at)
                    self._ready({"ok": False, "error": str(exc), "hint": exc.hint,
                                 "exit_code": exc.exit_code})
                    return 1
                pid = run.handle.pid
                self.c.update_state(status="running", pid=pid, pid_start=process_start_time(pid),
                                    monitor_pid=me, monitor_start=me_start, started_at=rfc3339_nano(),
                                    exit_code=0, oom_killed=False, error="",
                                    cgroup=run.handle.cgroup_paths())
                if first:
                    self._ready({"ok": True, "pid": pid})
                    first = False
                code = self._pump(run, log)
                oom = False
                with contextlib.suppress(Exception):  # noqa: BLE001 - best effort after exit
                    oom = run.handle.oom_killed()
                ran_for = time.monotonic() - run.started
                restart = self._should_restart(code, ran_for)
                self.c.update_state(_exited(code, oom, restart))
                with contextlib.suppress(Exception):  # noqa: BLE001
                    run.handle.cleanup()
                self._drop_adopted_freezer(run.handle.cgroup_paths())
                self._teardown_network()
                self.c.update_state(networks={})
                if not restart:
                    break
                backoff = BACKOFF_START if ran_for > 10 else min(backoff * 2, BACKOFF_MAX)
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline:
                    if self.c.raw_state().stop_requested or self.stop_signal_received:
                        self.c.update_state(status="exited")
                        return 0
                    time.sleep(min(0.05, backoff))
        finally:
            log.close()
            self._ready({"ok": False, "error": "monitor exited before the container started",
                         "exit_code": 125})
        if self.c.record.auto_remove:
            from runtime.lifecycle import remove_container

            with contextlib.suppress(Exception):  # noqa: BLE001 - the record stays if this fails
                remove_container(self.root, self.c, volumes=True, force=True, monitor=True)
        else:
            with contextlib.suppress(SandboxError, OSError):   # removed meanwhile (rm -f)
                self.c.update_state(monitor_pid=0, monitor_start=None)
        return 0


def _exited(code: int, oom: bool, restart: bool) -> Callable[[ContainerState], ContainerState]:
    def fn(st: ContainerState) -> ContainerState:
        return replace(st, status="restarting" if restart else "exited", pid=0, exit_code=code,
                       oom_killed=oom, finished_at=rfc3339_nano(),
                       restart_count=st.restart_count + (1 if restart else 0))

    return fn


# -- spawning -------------------------------------------------------------------------------------

def spawn(store_root: Path, c: Container, *, timeout: float = 60.0) -> int:
    """Start the monitor for ``c`` detached from the caller; return the container's pid once it
    runs, or raise MonitorError with the monitor's reason (and its exit code: 125/126/127)."""
    read_fd, write_fd = os.pipe()
    log = os.open(c.path("monitor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        # -I: nothing from the CWD or PYTHON* env; -S: no site scan (the runtime is stdlib
        # only); the package root is appended after the stdlib, so it never shadows it
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BOOT, PKG_ROOT, str(store_root), c.id,
                                 str(write_fd)], pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd="/", env=env)
    finally:
        os.close(write_fd)
        os.close(log)
    proc.wait()          # the intermediate exits at once (double fork)
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout)
        data = b""
        if ready:
            while chunk := os.read(read_fd, 4096):
                data += chunk
                if data.endswith(b"\n"):
                    break
    finally:
        os.close(read_fd)
    if not data:
        tail = ""
        with contextlib.suppress(OSError):
            tail = c.path("monitor.log").read_text(errors="replace").strip().splitlines()[-1]
        raise MonitorError(f"container {c.short_id}: the monitor did not report a start"
                           + (f": {tail}" if tail else ""),
                           hint=f"see {c.path('monitor.log')}")
    msg = json.loads(data.splitlines()[0])
    if not msg.get("ok"):
        cls = _BY_CODE.get(int(msg.get("exit_code", 125)), MonitorError)
        raise cls(str(msg.get("error", "start failed")), hint=msg.get("hint"))
    return int(msg["pid"])


def _main(argv: list[str]) -> int:
    root, cid, ready = Path(argv[0]), argv[1], int(argv[2])
    if os.fork() > 0:
        os._exit(0)       # the intermediate: our parent reaps it at once; we are orphaned
    os.umask(0o022)
    try:
        monitor = Monitor(root, cid, ready)
    except SandboxError as exc:
        with contextlib.suppress(OSError):
            os.write(ready, json.dumps({"ok": False, "error": str(exc), "exit_code": 125}).encode() + b"\n")
        return 1
    return monitor.main()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
