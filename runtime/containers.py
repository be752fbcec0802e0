"""The container state store: one directory per container under ``$PYBUILD_ROOT/containers/``.

``<id>/container.json`` is the record written once at create time; ``<id>/state.json`` is the
mutable state, rewritten atomically under ``<id>/lock`` (flock); both fsynced except for ``--rm``
containers (they die with their run). Names are reserved atomically as symlinks in ``.names/``.
A container whose monitor is gone is reported as exited, never as running (pid + process start
time, so a recycled pid is not mistaken for it). Stdlib + registry.store helpers only; cheap to
import (every ``pybuild run`` loads it: no secrets/shutil).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from registry.store import atomic_write, flocked
from runtime.errors import SandboxError

ZERO_TIME = "0001-01-01T00:00:00Z"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
ID_RE = re.compile(r"^[0-9a-f]{64}$")
LIVE = frozenset({"running", "paused", "restarting"})
STATUSES = frozenset({"created", "running", "paused", "restarting", "exited", "dead", "removing"})

_ADJ = ("amber", "brave", "calm", "dapper", "eager", "fuzzy", "gentle", "hasty", "icy", "jolly",
        "keen", "lucid", "mellow", "nimble", "odd", "plucky", "quiet", "rapid", "sunny", "tidy",
        "upbeat", "vivid", "witty", "young", "zesty", "bold", "crisp", "dusty", "frosty", "golden")
_NOUN = ("otter", "falcon", "badger", "heron", "lynx", "marmot", "newt", "osprey", "panda",
         "quokka", "raven", "salmon", "tapir", "urchin", "vole", "walrus", "yak", "zebra", "bison",
         "cobra", "dingo", "egret", "ferret", "gecko", "hare", "ibis", "jackal", "koala", "lemur")


class ContainerError(SandboxError):
    exit_code: ClassVar[int] = 1


class ContainerNotFound(ContainerError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no such container: {ref}", hint="list containers with `pybuild ps -a`")
        self.ref = ref


class AmbiguousContainer(ContainerError):
    def __init__(self, ref: str, matches: list[str]) -> None:
        super().__init__(f"container reference {ref!r} is ambiguous: it matches "
                         f"{len(matches)} containers", hint="give more characters of the ID")
        self.ref, self.matches = ref, matches


class NameInUse(ContainerError):
    exit_code: ClassVar[int] = 125

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(f"container name {name!r} is already in use by container {owner[:12]}",
                         hint="remove that container or choose another --name")
        self.name, self.owner = name, owner


class InvalidName(ContainerError):
    exit_code: ClassVar[int] = 125

    def __init__(self, name: str) -> None:
        super().__init__(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] allowed")


class ContainerStateError(ContainerError):
    """The operation does not fit the container's state (rm of a running one, exec on a stopped one)."""


# -- files ----------------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (temp + rename: readers see the old or the new file).
    ``durable`` adds the fsyncs of registry.store.atomic_write (file and directory)."""
    if durable:
        atomic_write(path, data)
        return
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _rmtree(path: Path | str) -> None:
    """shutil.rmtree(path, ignore_errors=True) without importing shutil (and its bz2/lzma,
    ~2 ms on every `run --rm`): symlinks are unlinked, never followed."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except NotADirectoryError:
        with contextlib.suppress(OSError):
            os.unlink(path)  # noqa: PTH108 - a DirEntry/str path, no Path object wanted here
        return
    except OSError:
        return
    for e in entries:
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            _rmtree(e.path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(e.path)  # noqa: PTH108
    with contextlib.suppress(OSError):
        os.rmdir(path)  # noqa: PTH106


# -- time and processes ----------------------------------------------------------------------------

def rfc3339_nano(ns: int | None = None) -> str:
    """UTC RFC 3339 with nanoseconds, as docker writes it (``2024-05-01T10:00:00.123456789Z``)."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_rfc3339(text: str) -> float | None:
    """Seconds since the epoch for an RFC 3339 UTC timestamp; None for the zero time or junk."""
    if not text or text.startswith("0001-"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return None
    import calendar

    base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    off = 0
    if m.group(3) != "Z":
        sign = 1 if m.group(3)[0] == "+" else -1
        off = sign * (int(m.group(3)[1:3]) * 3600 + int(m.group(3)[4:6]) * 60)
    return base + frac - off


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None if gone/zombie."""
    if pid <= 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    rest = data[data.rfind(b")") + 2:].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def is_alive(pid: int, start: int | None) -> bool:
    """True if ``pid`` is running and is the same process (same start time) as recorded."""
    now = process_start_time(pid)
    return now is not None and (start is None or now == start)


# -- the record -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PortMapping:
    """``-p [IP:]HOST:CTR[/proto]``."""

    container_port: int
    host_port: int
    proto: str = "tcp"
    host_ip: str = ""

    def __str__(self) -> str:
        ip = self.host_ip or "0.0.0.0"  # noqa: S104 - display only
        return f"{ip}:{self.host_port}->{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class MountSpec:
    """A mount the container gets: bind (host path), volume (named or anonymous) or tmpfs."""

    type: str                 # "bind" | "volume" | "tmpfs"
    destination: str
    source: str = ""          # host path (bind), volume name (volume), "" (tmpfs)
    readonly: bool = False
    options: tuple[str, ...] = ()
    anonymous: bool = False   # volume created for an image VOLUME or `-v /path`; removed by rm -v


@dataclass(frozen=True)
class ContainerRecord:
    """What a container is, fixed at create time (container.json)."""

    id: str
    name: str
    image: str                          # what the user typed
    image_id: str = ""                  # config digest ("sha256:...")
    image_ref: str = ""                 # normalized reference, if the image was named
    manifest_digest: str = ""           # the image manifest ("sha256:..."): a gc root while we exist
    created: str = ZERO_TIME
    argv: tuple[str, ...] = ()          # effective process argv (ENTRYPOINT + CMD)
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    hostname: str = ""
    tty: bool = False
    interactive: bool = False
    snapshot_key: str = ""              # the active snapshot: kept until rm (start reuses it)
    snapshotter: str = ""               # "overlay" | "copy"
    mounts: tuple[MountSpec, ...] = ()
    network: str = "none"               # "none" | "host" | "bridge" | a user network name
    network_aliases: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    restart: str = "no"                 # "no" | "on-failure[:N]" | "always" | "unless-stopped"
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 10
    auto_remove: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)   # memory, memory_swap, cpus, ...
    run: Mapping[str, Any] = field(default_factory=dict)         # runner-specific options (JSON)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = dict(self.labels)
        d["resources"] = dict(self.resources)
        d["run"] = dict(self.run)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContainerRecord:
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known}
        for key in ("argv", "env", "network_aliases"):
            if key in kw:
                kw[key] = tuple(kw[key])
        kw["mounts"] = tuple(MountSpec(**{**m, "options": tuple(m.get("options", ()))})
                             for m in d.get("mounts", ()))
        kw["ports"] = tuple(PortMapping(**p) for p in d.get("ports", ()))
        return cls(**kw)

    def restart_policy(self) -> tuple[str, int]:
        """("no"|"on-failure"|"always"|"unless-stopped", max retries (0 = unlimited))."""
        name, _, count = self.restart.partition(":")
        return name or "no", int(count) if count else 0


@dataclass(frozen=True)
class ContainerState:
    """The mutable part (state.json). ``status`` is one of STATUSES."""

    status: str = "created"
    pid: int = 0
    pid_start: int | None = None
    monitor_pid: int = 0
    monitor_start: int | None = None
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    restart_count: int = 0
    stop_requested: bool = False       # a user stop: the restart policy does not apply
    cgroup: Mapping[str, str] = field(default_factory=dict)      # controller ("" for v2) -> path
    networks: Mapping[str, Any] = field(default_factory=dict)    # name -> endpoint (ip, mac, ...)
    volumes: tuple[str, ...] = ()      # volume names in use (for `volume rm` refusal)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cgroup"] = dict(self.cgroup)
        d["networks"] = dict(self.networks)
        d["volumes"] = list(self.volumes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContainerState:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "volumes" in kw:
            kw["volumes"] = tuple(kw["volumes"])
        return cls(**kw)

    @property
    def running(self) -> bool:
        return self.status in LIVE


# -- one container --------------------------------------------------------------------------------

class Container:
    """A handle on ``containers/<id>/``. The record is read once; the state on every call."""

    def __init__(self, store: ContainerStore, cid: str) -> None:
        self.store = store
        self.id = cid
        self.dir = store.root / cid
        self._record: ContainerRecord | None = None

    def __repr__(self) -> str:
        return f"Container({self.id[:12]})"

    @property
    def record(self) -> ContainerRecord:
        if self._record is None:
            try:
                raw = (self.dir / "container.json").read_bytes()
            except FileNotFoundError:
                raise ContainerNotFound(self.id) from None
            self._record = ContainerRecord.from_dict(json.loads(raw))
        return self._record

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def short_id(self) -> str:
        return self.id[:12]

    # files the other runtime modules use
    @property
    def log_path(self) -> Path:
        return self.dir / "json.log"

    @property
    def lock_path(self) -> Path:
        return self.dir / "lock"

    def path(self, name: str) -> Path:
        """A file inside the container's directory (hosts, hostname, resolv.conf, bundle, ...)."""
        return self.dir / name

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive flock on the container (state transitions: start, stop, rm)."""
        with flocked(self.lock_path):
            yield

    def raw_state(self) -> ContainerState:
        """state.json exactly as written (no liveness correction)."""
        try:
            raw = (self.dir / "state.json").read_bytes()
        except FileNotFoundError:
            if not self.dir.is_dir():
                raise ContainerNotFound(self.id) from None
            return ContainerState()
        try:
            return ContainerState.from_dict(json.loads(raw))
        except (ValueError, TypeError):
            # only a --rm container's (not fsynced) state can be torn, by a power loss
            return ContainerState(status="dead", error="state.json is unreadable")

    def state(self) -> ContainerState:
        """The state, corrected for liveness: a live status whose monitor is gone reads as exited."""
        st = self.raw_state()
        if st.status in LIVE and not self.monitor_alive(st):
            fin = st.finished_at if st.finished_at != ZERO_TIME else rfc3339_nano()
            return replace(st, status="exited", pid=0, finished_at=fin,
                           exit_code=st.exit_code if st.exit_code else 255,
                           error=st.error or "monitor process exited unexpectedly")
        return st

    @staticmethod
    def monitor_alive(st: ContainerState) -> bool:
        if st.monitor_pid:
            return is_alive(st.monitor_pid, st.monitor_start)
        # a foreground run has no monitor: the pid itself must be the recorded process
        return bool(st.pid) and is_alive(st.pid, st.pid_start)

    @property
    def durable(self) -> bool:
        """Whether this container's files are fsynced: not for ``--rm`` (auto_remove) ones."""
        return not self.record.auto_remove

    def write_state(self, st: ContainerState) -> None:
        write_atomic(self.dir / "state.json", json.dumps(st.to_dict(), indent=1).encode(),
                     durable=self.durable)

    def update_state(self, fn: Callable[[ContainerState], ContainerState] | None = None,
                     /, **changes: Any) -> ContainerState:
        """Read-modify-write state.json under the state flock; returns the new state."""
        with flocked(self.dir / "state.lock"):
            st = self.raw_state()
            if fn is not None:
                st = fn(st)
            if changes:
                st = replace(st, **changes)
            self.write_state(st)
            return st


# -- the store ------------------------------------------------------------------------------------

class ContainerStore:
    """All containers of one pybuild root: ``ContainerStore(store.subdir("containers"))``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.names = self.root / ".names"
        self.root.mkdir(parents=True, exist_ok=True)
        self.names.mkdir(exist_ok=True)

    @staticmethod
    def new_id() -> str:
        return os.urandom(32).hex()

    @staticmethod
    def _pick_name() -> str:
        a, b = int.from_bytes(os.urandom(4), "big"), int.from_bytes(os.urandom(4), "big")
        return f"{_ADJ[a % len(_ADJ)]}_{_NOUN[b % len(_NOUN)]}"

    def _random_name(self) -> str:
        for _ in range(100):
            name = self._pick_name()
            if not (self.names / name).is_symlink():
                return name
        return f"{self._pick_name()}_{os.urandom(3).hex()}"

    def reserve_name(self, name: str, cid: str) -> None:
        if not NAME_RE.match(name) or len(name) > 128:
            raise InvalidName(name)
        try:
            (self.names / name).symlink_to(cid)
        except FileExistsError:
            owner = str((self.names / name).readlink())
            if not (self.root / owner / "container.json").is_file():
                # a stale reservation (a create that died half-way): take it over
                (self.names / name).unlink(missing_ok=True)
                (self.names / name).symlink_to(cid)
                return
            raise NameInUse(name, owner) from None

    def create(self, record: ContainerRecord) -> Container:
        """Reserve the name, write container.json and an initial state ("created")."""
        if not ID_RE.match(record.id):
            raise ContainerError(f"invalid container id {record.id!r}: want 64 hex digits")
        name = record.name or self._random_name()
        record = replace(record, name=name,
                         created=record.created if record.created != ZERO_TIME else rfc3339_nano())
        cdir = self.root / record.id
        # the names lock covers reservation *and* record, so a reservation without a record
        # seen under the lock is really stale (a create that died), never one in progress
        durable = not record.auto_remove
        with flocked(self.root / ".names.lock"):
            self.reserve_name(name, record.id)
            try:
                cdir.mkdir(mode=0o700)
                c = Container(self, record.id)
                c._record = record
                write_atomic(cdir / "container.json", json.dumps(record.to_dict(), indent=1).encode(),
                             durable=durable)
                c.write_state(ContainerState())
            except BaseException:
                _rmtree(cdir)
                (self.names / name).unlink(missing_ok=True)
                raise
        return c

    def ids(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root)
                          if ID_RE.match(e.name) and (Path(e.path) / "container.json").is_file())
        except FileNotFoundError:
            return []

    def list_all(self) -> list[Container]:
        """All containers whose record can be read, newest first."""
        out = []
        for cid in self.ids():
            c = Container(self, cid)
            try:
                c.record  # noqa: B018 - loads and caches the record
            except (ContainerError, ValueError, OSError):
                continue
            out.append(c)
        out.sort(key=lambda c: c.record.created, reverse=True)
        return out

    def get(self, ref: str) -> Container:
        """Look a container up by full ID, name, or unique ID prefix (docker's order)."""
        if not ref:
            raise ContainerNotFound(ref)
        if ID_RE.match(ref) and (self.root / ref / "container.json").is_file():
            return Container(self, ref)
        link = self.names / ref
        if NAME_RE.match(ref) and link.is_symlink():
            cid = str(link.readlink())
            if (self.root / cid / "container.json").is_file():
                return Container(self, cid)
        if re.fullmatch(r"[0-9a-f]+", ref):
            matches = [cid for cid in self.ids() if cid.startswith(ref)]
            if len(matches) == 1:
                return Container(self, matches[0])
            if len(matches) > 1:
                raise AmbiguousContainer(ref, matches)
        raise ContainerNotFound(ref)

    def remove(self, c: Container) -> None:
        """Delete the container directory and release its name (the caller stopped it first)."""
        name = c.record.name
        link = self.names / name
        with contextlib.suppress(FileNotFoundError):
            if str(link.readlink()) == c.id:
                link.unlink()
        # rename first so a half-removed directory is never listed as a container
        trash = self.root / f".rm-{c.id}-{os.urandom(4).hex()}"
        try:
            c.dir.rename(trash)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        _rmtree(trash)

    def sweep(self) -> int:
        """Remove leftovers of interrupted removals; returns how many were removed."""
        n = 0
        for e in os.scandir(self.root):
            if e.name.startswith(".rm-"):
                _rmtree(e.path)
                n += 1
        with flocked(self.root / ".names.lock"):
            for link in self.names.iterdir():
                with contextlib.suppress(OSError):
                    if not (self.root / link.readlink() / "container.json").is_file():
                        link.unlink()
                        n += 1
        return n


# -- providers for the image verbs (builder/commands/images.py) -----------------------------------

def _record_digests(store: Any) -> list[Any]:
    from registry.digest import Digest
    from registry.errors import RegistryError

    out: list[Digest] = []
    root = Path(store.root) / "containers"
    if not root.is_dir():
        return out
    for c in ContainerStore(root).list_all():
        try:
            r = c.record
        except ContainerError:
            continue
        for text in (r.manifest_digest, r.image_id):
            if text:
                with contextlib.suppress(RegistryError, ValueError):
                    out.append(Digest.parse(text))
    return out


def gc_roots(store: Any) -> list[Any]:
    """gc roots: the manifest and config of every container's image (running or not)."""
    return _record_digests(store)


def images_in_use(store: Any) -> list[Any]:
    """Digests of the images containers use (`rmi` refuses them without -f)."""
    return _record_digests(store)
