"""Snapshots (DESIGN §2.5, C4): ``snapshots/<id>/{fs,work,meta.json}`` (active, view, committed; layers
committed by ChainID), ``keys/<sha256(key)>`` -> id links, mutations under an flock. Overlay stacks
committed dirs as lowers; Copy copies the parent. ``mount_all`` runs only in the sandbox's mount
namespace; ephemeral (--rm) snapshots skip fsyncs and mount ``volatile``. Imports registry.store,
runtime.errors; runtime.unpack/pathsafe/_syscalls inside functions."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from registry.store import atomic_write, flocked
from runtime.errors import SandboxError

if TYPE_CHECKING:
    from runtime.unpack import UnpackStats, XattrNS

# Imported where used, not here: `pybuild run` imports this module on its start-up path, and
# runtime.unpack (tarfile, decimal), logging and ctypes are only needed to unpack, copy or mount.

Kind = Literal["active", "view", "committed"]
PAGE_LIMIT = 4096          # mount(2) copies at most one page of options
VOLATILE = "volatile"      # overlay option of ephemeral snapshots (Linux >= 5.10)


# -- errors -------------------------------------------------------------------------------------
class SnapshotError(SandboxError):
    """A snapshot operation that cannot be done as asked."""

    exit_code: ClassVar[int] = 1


class SnapshotNotFound(SnapshotError):
    def __init__(self, key: str) -> None:
        super().__init__(f"snapshot {key!r}: not found")
        self.key = key


class SnapshotExists(SnapshotError):
    def __init__(self, key: str) -> None:
        super().__init__(f"snapshot {key!r}: already exists")
        self.key = key


class SnapshotInUse(SnapshotError):
    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"snapshot {key!r}: in use: {why}")
        self.key = key


class SnapshotStateError(SnapshotError):
    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"snapshot {key!r}: {why}")
        self.key = key


# -- values -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Mount:
    """One mount, in the shape of an OCI runtime-spec mount: ``type`` is 'overlay' or 'bind';
    options are mount(8) words ('ro', 'rbind', 'lowerdir=...', ...)."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type, "source": self.source, "options": list(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Mount:
        opts = d.get("options") or ()
        if not isinstance(opts, list | tuple):
            raise ValueError(f"mount options must be a list, not {type(opts).__name__}")
        return cls(str(d["type"]), str(d["source"]), tuple(str(o) for o in opts))

    @property
    def readonly(self) -> bool:
        return "ro" in self.options or (self.type == "overlay"
                                        and not any(o.startswith("upperdir=") for o in self.options))


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot's metadata (meta.json)."""

    key: str
    kind: Kind
    parent: str | None
    created: float
    id: int
    labels: dict[str, str] = field(default_factory=dict)
    prepared_ns: int = 0        # copy snapshotter: when the copy of the parent was finished
    ephemeral: bool = False     # dies with its container (run --rm): see _Base.prepare


# -- the protocol -------------------------------------------------------------------------------
@runtime_checkable
class Snapshotter(Protocol):
    root: Path

    def prepare(self, key: str, parent: str | None = None, *,
                labels: dict[str, str] | None = None, ephemeral: bool = False) -> list[Mount]: ...
    def view(self, key: str, parent: str | None = None) -> list[Mount]: ...
    def mounts(self, key: str) -> list[Mount]: ...
    def commit(self, name: str, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def stat(self, key: str) -> SnapshotInfo: ...
    def exists(self, key: str) -> bool: ...
    def walk(self) -> Iterator[SnapshotInfo]: ...
    def path(self, key: str) -> Path: ...
    def upper_dir(self, key: str) -> Path: ...
    def parent_paths(self, key: str) -> list[Path]: ...
    def apply_layer(self, key: str, stream: IO[bytes], *, layer: str = "<layer>",
                    rootless: bool | None = None) -> UnpackStats: ...
    def key_lock(self, key: str) -> contextlib.AbstractContextManager[int]: ...


def _token(nbytes: int) -> str:
    """Random hex for temporary names (what secrets.token_hex does, without its imports)."""
    return os.urandom(nbytes).hex()


def _log() -> Any:
    import logging

    return logging.getLogger("pybuild." + __name__)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _escape_option_path(path: str) -> str:
    """overlayfs splits options at ',' and lowerdir at ':'; backslash escapes both."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


class _Base:
    """Metadata, keys and locking shared by both snapshotters."""

    driver: ClassVar[str] = "base"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        (self.root / "keys").mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        marker = self.root / "driver"
        if not marker.exists():
            with contextlib.suppress(FileExistsError):
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(self.driver + "\n")
        found = marker.read_text().strip()
        if found and found != self.driver:
            raise SnapshotError(f"snapshots at {self.root} belong to the {found!r} snapshotter, "
                                f"not {self.driver!r}",
                                hint="use the same snapshotter for one store, or another --root")

    # -- locks
    def _lock(self) -> contextlib.AbstractContextManager[int]:
        return flocked(self.root / "lock")

    def key_lock(self, key: str) -> contextlib.AbstractContextManager[int]:
        """An exclusive lock on a key name (rootfs uses it so a layer is unpacked once)."""
        return flocked(self.root / "locks" / f"{_key_hash(key)}.lock")

    # -- lookups
    def _link(self, key: str) -> Path:
        return self.root / "keys" / _key_hash(key)

    def _id_of(self, key: str) -> int | None:
        try:
            target = str(self._link(key).readlink())
        except FileNotFoundError:
            return None
        try:
            return int(target.rsplit("/", 1)[-1])
        except ValueError:
            return None

    def _dir(self, sid: int) -> Path:
        return self.root / str(sid)

    def _read_meta(self, sid: int) -> SnapshotInfo | None:
        try:
            doc = json.loads((self._dir(sid) / "meta.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return SnapshotInfo(str(doc["key"]), doc["kind"], doc.get("parent"), float(doc["created"]),
                            int(doc["id"]), dict(doc.get("labels") or {}),
                            int(doc.get("prepared_ns") or 0), bool(doc.get("ephemeral")))

    def _write_meta(self, info: SnapshotInfo) -> None:
        doc = {"id": info.id, "key": info.key, "kind": info.kind, "parent": info.parent,
               "created": info.created, "labels": info.labels, "prepared_ns": info.prepared_ns,
               "driver": self.driver}
        if info.ephemeral:
            doc["ephemeral"] = True
        atomic_write(self._dir(info.id) / "meta.json", json.dumps(doc, sort_keys=True).encode(),
                    durable=not info.ephemeral)

    def stat(self, key: str) -> SnapshotInfo:
        sid = self._id_of(key)
        info = self._read_meta(sid) if sid is not None else None
        if info is None or info.key != key:
            raise SnapshotNotFound(key)
        return info

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except SnapshotNotFound:
            return False
        return True

    def walk(self) -> Iterator[SnapshotInfo]:
        ids = sorted(int(e.name) for e in os.scandir(self.root) if e.name.isdigit())
        for sid in ids:
            info = self._read_meta(sid)
            if info is not None and self._id_of(info.key) == info.id:
                yield info

    def path(self, key: str) -> Path:
        """The snapshot's own directory (overlay: the upper layer; copy: the whole tree)."""
        return self._dir(self.stat(key).id) / "fs"

    def upper_dir(self, key: str) -> Path:
        return self.path(key)

    def chain(self, key: str) -> list[SnapshotInfo]:
        """The snapshot and its ancestors, nearest first."""
        out = [self.stat(key)]
        while out[-1].parent is not None:
            if len(out) > 1000:
                raise SnapshotStateError(key, "parent chain longer than 1000 (a cycle?)")
            out.append(self.stat(out[-1].parent))
        return out

    def parent_paths(self, key: str) -> list[Path]:
        """fs directories of the ancestors of ``key``, nearest first."""
        return [self._dir(i.id) / "fs" for i in self.chain(key)[1:]]

    # -- creation
    def _new(self, key: str, parent: str | None, kind: Kind, labels: dict[str, str] | None, *,
             ephemeral: bool = False) -> SnapshotInfo:
        if not key:
            raise SnapshotError("snapshot key must not be empty")
        if parent is not None:
            pinfo = self.stat(parent)
            if pinfo.kind != "committed":
                raise SnapshotStateError(parent, f"is {pinfo.kind}, only a committed snapshot can "
                                         "be a parent")
        if self.exists(key):
            raise SnapshotExists(key)
        tmp = self.root / f".new-{_token(8)}"
        tmp.mkdir()
        try:
            (tmp / "fs").mkdir(mode=0o755)
            prepared = self._populate(tmp, parent, kind)
            with self._lock():
                if self.exists(key):
                    raise SnapshotExists(key)
                if parent is not None and self.stat(parent).kind != "committed":
                    # (re-checked under the lock: remove() relies on active and view
                    # snapshots never being parents)
                    raise SnapshotStateError(parent, "only a committed snapshot can be a parent")
                sid = self._next_id(durable=not ephemeral)
                info = SnapshotInfo(key, kind, parent, time.time(), sid, dict(labels or {}), prepared,
                                    ephemeral)
                tmp.rename(self._dir(sid))
                self._write_meta(info)
                self._link(key).symlink_to(f"../{sid}")
            return info
        except BaseException:
            if tmp.exists():
                _rmtree(tmp)
            raise

    def _populate(self, tmp: Path, parent: str | None, kind: Kind) -> int:
        return 0

    def _next_id(self, *, durable: bool = True) -> int:
        # The counter is a hint (ids already on disk are skipped), so a counter that a crash
        # rolled back is harmless; an ephemeral snapshot does not pay for its fsync.
        counter = self.root / "next-id"
        try:
            sid = int(counter.read_text())
        except (FileNotFoundError, ValueError):
            sid = 1
        while self._dir(sid).exists():
            sid += 1
        atomic_write(counter, str(sid + 1).encode(), durable=durable)
        return sid

    def prepare(self, key: str, parent: str | None = None, *,
                labels: dict[str, str] | None = None, ephemeral: bool = False) -> list[Mount]:
        """A new writable snapshot on top of committed ``parent``; returns its mounts.
        SnapshotExists if ``key`` is taken.

        ``ephemeral``: the snapshot lives exactly as long as one container that is removed
        when it exits (``run --rm`` in the foreground). Its metadata is written without fsync
        and it can never be committed; after a crash it is garbage for ``remove``/``cleanup``.
        Its owner mounts it through ``single_use(mounts)`` (overlay 'volatile')."""
        self._new(key, parent, "active", labels, ephemeral=ephemeral)
        return self.mounts(key)

    def view(self, key: str, parent: str | None = None) -> list[Mount]:
        """A new read-only snapshot of committed ``parent``."""
        self._new(key, parent, "view", None)
        return self.mounts(key)

    def commit(self, name: str, key: str) -> None:
        """Turn active ``key`` into committed ``name``; ``key`` is gone afterwards (atomic
        per step under the lock: meta first, then the new name, then the old key)."""
        with self._lock():
            info = self.stat(key)
            if info.kind != "active":
                raise SnapshotStateError(key, f"is {info.kind}, only an active snapshot can be committed")
            if info.ephemeral:
                raise SnapshotStateError(key, "is ephemeral (the writable layer of a `run --rm` "
                                         "container): it is not durable and cannot be committed")
            if self.exists(name):
                raise SnapshotExists(name)
            new = SnapshotInfo(name, "committed", info.parent, info.created, info.id, info.labels,
                               info.prepared_ns)
            self._write_meta(new)
            self._link(name).symlink_to(f"../{info.id}")
            if name != key:
                with contextlib.suppress(FileNotFoundError):
                    self._link(key).unlink()
        work = self._dir(info.id) / "work"
        if work.exists():
            _rmtree(work)

    def remove(self, key: str) -> None:
        """Remove a snapshot. Refused (SnapshotInUse) while another snapshot has it as parent."""
        with self._lock():
            info = self.stat(key)
            # only committed snapshots can be parents (checked under this lock by _new), so the
            # walk over every snapshot's metadata is needed for those alone
            children = [c.key for c in self.walk() if c.parent == key] if info.kind == "committed" else []
            if children:
                raise SnapshotInUse(key, f"parent of {len(children)} snapshot(s), e.g. {children[0]!r}")
            self._link(key).unlink()
            trash = self.root / f".trash-{info.id}-{_token(4)}"
            self._dir(info.id).rename(trash)
        _rmtree(trash)

    def mounts(self, key: str) -> list[Mount]:
        raise NotImplementedError

    def cleanup(self, *, min_age: float = 3600.0) -> list[str]:
        """Remove what killed processes left behind, older than ``min_age`` seconds: half-made
        (``.new-*``) and half-removed (``.trash-*``) directories, and snapshot directories no
        key points to. Returns the names removed. Safe while others work (age + lock)."""
        removed: list[str] = []
        now = time.time()
        with self._lock():
            for entry in os.scandir(self.root):
                name = entry.name
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if age < min_age or not entry.is_dir(follow_symlinks=False):
                    continue
                orphan = False
                if name.isdigit():
                    info = self._read_meta(int(name))
                    orphan = info is None or self._id_of(info.key) != info.id
                if name.startswith((".new-", ".trash-")) or orphan:
                    _rmtree(Path(entry.path))
                    removed.append(name)
        return removed


class OverlaySnapshotter(_Base):
    """Committed snapshots are plain directories used as overlay lowers; an active snapshot
    is upper (``fs``) + ``work``. ``xattr_ns='user'`` (default) writes and mounts with
    ``user.overlay.*`` xattrs and the ``userxattr`` option, which works both as root and in
    a user namespace, so one store serves rootful and rootless runs."""

    driver = "overlay"

    def __init__(self, root: str | os.PathLike[str], *, xattr_ns: XattrNS = "user") -> None:
        super().__init__(root)
        self.xattr_ns: XattrNS = xattr_ns

    def _populate(self, tmp: Path, parent: str | None, kind: Kind) -> int:
        if kind == "active":
            (tmp / "work").mkdir(mode=0o700)
        return 0

    def _base_options(self) -> list[str]:
        if self.xattr_ns == "user":
            return ["userxattr", "index=off", "metacopy=off"]
        return ["index=off", "redirect_dir=off", "metacopy=off"]

    def mounts(self, key: str) -> list[Mount]:
        info = self.stat(key)
        lowers = [str(p) for p in self.parent_paths(key)]
        own = str(self._dir(info.id) / "fs")
        if info.kind == "view":
            if not lowers:
                return [Mount("bind", own, ("rbind", "ro"))]
            if len(lowers) == 1:
                return [Mount("bind", lowers[0], ("rbind", "ro"))]
            opts = [*self._base_options(), "lowerdir=" + ":".join(_escape_option_path(p) for p in lowers)]
            return [Mount("overlay", "overlay", ("ro", *opts))]
        if info.kind == "committed":
            # A committed snapshot seen on its own: read-only, with its ancestors.
            stack = [own, *lowers]
            if len(stack) == 1:
                return [Mount("bind", own, ("rbind", "ro"))]
            opts = [*self._base_options(), "lowerdir=" + ":".join(_escape_option_path(p) for p in stack)]
            return [Mount("overlay", "overlay", ("ro", *opts))]
        if not lowers:
            return [Mount("bind", own, ("rbind", "rw"))]
        work = str(self._dir(info.id) / "work")
        opts = [*self._base_options(),
                "lowerdir=" + ":".join(_escape_option_path(p) for p in lowers),
                "upperdir=" + _escape_option_path(own), "workdir=" + _escape_option_path(work)]
        return [Mount("overlay", "overlay", tuple(opts))]

    def apply_layer(self, key: str, stream: IO[bytes], *, layer: str = "<layer>",
                    rootless: bool | None = None) -> UnpackStats:
        """Unpack a layer into active ``key``'s upper dir (expected empty): whiteouts become
        overlay whiteouts, opaque markers the overlay.opaque xattr."""
        info = self.stat(key)
        if info.kind != "active":
            raise SnapshotStateError(key, f"is {info.kind}, layers are applied to active snapshots")
        from runtime.unpack import unpack_overlay_layer

        return unpack_overlay_layer(stream, self._dir(info.id) / "fs", lowers=self.parent_paths(key),
                                    rootless=rootless, layer=layer, xattr_ns=self.xattr_ns)


class CopySnapshotter(_Base):
    """The fallback without overlayfs: prepare copies the parent's tree (reflink when the
    filesystem can, else an in-kernel copy; hardlinks inside the tree kept, nothing shared
    with the parent), mounts are bind mounts. A view binds the parent read-only."""

    driver = "copy"

    def _populate(self, tmp: Path, parent: str | None, kind: Kind) -> int:
        if parent is not None and kind == "active":
            copy_tree(self.path(parent), tmp / "fs")
        return _tick_mark(tmp / "mark")


    def mounts(self, key: str) -> list[Mount]:
        info = self.stat(key)
        own = str(self._dir(info.id) / "fs")
        if info.kind == "view":
            src = str(self.path(info.parent)) if info.parent is not None else own
            return [Mount("bind", src, ("rbind", "ro"))]
        if info.kind == "committed":
            return [Mount("bind", own, ("rbind", "ro"))]
        return [Mount("bind", own, ("rbind", "rw"))]

    def apply_layer(self, key: str, stream: IO[bytes], *, layer: str = "<layer>",
                    rootless: bool | None = None) -> UnpackStats:
        info = self.stat(key)
        if info.kind != "active":
            raise SnapshotStateError(key, f"is {info.kind}, layers are applied to active snapshots")
        from runtime.unpack import apply_layer

        return apply_layer(stream, self._dir(info.id) / "fs", rootless=rootless, layer=layer)


def _tick_mark(path: Path) -> int:
    """A filesystem timestamp strictly later than every ctime/birth time written so far.

    The kernel stamps inodes from a coarse clock, so time.time_ns() could be *ahead* of a
    change made a moment later; instead touch a file until its ctime moves past the first
    stamp. The differ then treats 'ctime >= mark' as possibly changed and 'born >= mark'
    as created after the copy."""
    path.write_bytes(b"")
    first = path.stat().st_ctime_ns
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        os.utime(path)
        now = path.stat().st_ctime_ns
        if now > first:
            return now
        time.sleep(0.001)
    return first + 1


def default_snapshotter(root: str | os.PathLike[str]) -> Snapshotter:
    """Overlay when this host can mount it, else copy; an existing store keeps its driver."""
    root = Path(root)
    marker = root / "driver"
    if marker.exists():
        found = marker.read_text().strip()
        return CopySnapshotter(root) if found == "copy" else OverlaySnapshotter(root)
    return OverlaySnapshotter(root) if overlay_supported() else CopySnapshotter(root)


def open_snapshotter(root: str | os.PathLike[str], driver: str | None = None) -> Snapshotter:
    """The snapshotter for ``root`` (a ``snapshots/`` directory): ``driver`` 'overlay' or
    'copy', else whatever the directory already holds, else the best this host supports."""
    if driver == "copy":
        return CopySnapshotter(root)
    if driver == "overlay":
        return OverlaySnapshotter(root)
    if driver:
        raise SnapshotError(f"unknown snapshotter {driver!r}", hint="use 'overlay' or 'copy'")
    return default_snapshotter(root)


def single_use(mounts: Sequence[Mount]) -> list[Mount]:
    """The mounts for the last mount of an ephemeral snapshot's writable layer (the `run --rm`
    container itself): overlay mounts with an upper dir get ``volatile``, so the kernel skips
    the syncfs of the whole host filesystem when the container's mount namespace goes away
    (10-100 ms on a busy disk). Overlay then refuses any later mount of that upper dir (its
    work/incompat/volatile marker), which is why only the removing owner uses this."""
    if not _volatile_supported():
        return list(mounts)
    return [Mount(m.type, m.source, (*m.options, VOLATILE))
            if m.type == "overlay" and VOLATILE not in m.options
            and any(o.startswith("upperdir=") for o in m.options) else m
            for m in mounts]


def _volatile_supported() -> bool:
    """overlayfs knows the ``volatile`` option (Linux >= 5.10)."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 10)


def overlay_supported() -> bool:
    """overlayfs is known to the kernel (whether we may mount it is the sandbox's business)."""
    try:
        with open("/proc/filesystems", "rb") as f:
            return any(line.split()[-1:] == [b"overlay"] for line in f)
    except OSError:
        return False


# -- copying trees ------------------------------------------------------------------------------
def _copy_xattrs(src: int | str, dst: int | str) -> None:
    try:
        names = os.listxattr(src) if isinstance(src, int) else os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            if isinstance(src, int):
                os.setxattr(dst, name, os.getxattr(src, name))
            else:
                os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                            follow_symlinks=False)
        except OSError as exc:
            _log().debug("xattr %s not copied: %s", name, exc)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy directory ``src`` into existing empty directory ``dst``: every type, owner, mode,
    mtime and xattr; hardlinks inside the tree stay hardlinks; symlinks never followed;
    device nodes skipped (with a log line) where mknod is not allowed."""
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    links: dict[tuple[int, int], tuple[int, str]] = {}
    keep: list[int] = []
    try:
        _copy_dir(sfd, dfd, links, keep)
        _copy_meta_fd(sfd, dfd)
    finally:
        for fd in keep:
            os.close(fd)
        os.close(sfd)
        os.close(dfd)


def _copy_meta_fd(sfd: int, dfd: int) -> None:
    st = os.fstat(sfd)
    with contextlib.suppress(PermissionError):
        os.fchown(dfd, st.st_uid, st.st_gid)
    os.fchmod(dfd, stat.S_IMODE(st.st_mode))
    _copy_xattrs(sfd, dfd)
    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_dir(sfd: int, dfd: int, links: dict[tuple[int, int], tuple[int, str]],
              keep: list[int]) -> None:
    from runtime import _syscalls

    with os.scandir(sfd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        st = e.stat(follow_symlinks=False)
        name = e.name
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            csrc = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            cdst = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                _copy_dir(csrc, cdst, links, keep)
                _copy_meta_fd(csrc, cdst)
            finally:
                os.close(csrc)
                os.close(cdst)
        elif stat.S_ISREG(mode):
            ident = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and ident in links:
                first_dfd, first_name = links[ident]
                os.link(first_name, name, src_dir_fd=first_dfd, dst_dir_fd=dfd, follow_symlinks=False)
                continue
            s = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            try:
                d = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o600, dir_fd=dfd)
                try:
                    if st.st_size:
                        _syscalls.copy_file_data(s, d, st.st_size)
                    with contextlib.suppress(PermissionError):
                        os.fchown(d, st.st_uid, st.st_gid)
                    os.fchmod(d, stat.S_IMODE(mode))
                    _copy_xattrs(s, d)
                    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(d)
            finally:
                os.close(s)
            if st.st_nlink > 1:
                kept = os.dup(dfd)
                keep.append(kept)
                links[ident] = (kept, name)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            with contextlib.suppress(PermissionError, OSError):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            try:
                if stat.S_ISFIFO(mode):
                    os.mkfifo(name, stat.S_IMODE(mode), dir_fd=dfd)
                else:
                    os.mknod(name, mode, st.st_rdev, dir_fd=dfd)
            except PermissionError:
                _log().warning("copy: device node %s skipped (mknod not permitted)", name)
                continue
            with contextlib.suppress(PermissionError):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dfd)
            _copy_xattrs(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{dfd}/{name}")
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        # sockets are not copied (they are meaningless without their listener)


def _rmtree(path: Path) -> None:
    """Remove a tree that may contain read-only directories (overlay's work/work is 0000)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _make_writable(path)
        from runtime import pathsafe

        pathsafe.remove_tree_at(fd, path.name)
    finally:
        os.close(fd)


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        return                  # root is not stopped by directory modes
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            with contextlib.suppress(OSError):
                p = Path(dirpath) / d
                if not p.is_symlink():
                    p.chmod(0o700)


# -- mounting (inside the sandbox's mount namespace) --------------------------------------------
def _mount_overlay_fsconfig(options: Sequence[str], target: str) -> None:
    """overlayfs through the new mount API: one fsconfig call per option and per lower layer
    ('lowerdir+', Linux >= 6.8), so a 500-layer stack has no page-size limit."""
    from runtime import _syscalls as sc

    fs = sc.fsopen("overlay")
    try:
        readonly = False
        for opt in options:
            key, sep, value = opt.partition("=")
            if key == "ro":
                readonly = True
                continue
            if key == "lowerdir":
                for layer in _split_unescaped(value, ":"):
                    sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, "lowerdir+", _unescape(layer))
            elif sep:
                sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, key, _unescape(value))
            else:
                sc.fsconfig(fs, sc.FSCONFIG_SET_FLAG, key)
        sc.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
        mnt = sc.fsmount(fs, sc.FSMOUNT_CLOEXEC, sc.MOUNT_ATTR_RDONLY if readonly else 0)
    finally:
        os.close(fs)
    try:
        sc.move_mount(mnt, "", sc.AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(mnt)


def _split_unescaped(text: str, sep: str) -> list[str]:
    out, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _mount_overlay_chdir(options: Sequence[str], target: str) -> None:
    """Fallback for kernels without 'lowerdir+': lower paths relative to their common parent,
    with the cwd there during mount(2) (containerd's trick)."""
    from runtime import _syscalls

    lower_opt = next(o for o in options if o.startswith("lowerdir="))
    lowers = [_unescape(p) for p in _split_unescaped(lower_opt[len("lowerdir="):], ":")]
    base = os.path.commonpath(lowers)
    rel = [os.path.relpath(p, base) for p in lowers]
    opts = [o for o in options if not o.startswith("lowerdir=") and o != "ro"]
    opts.append("lowerdir=" + ":".join(_escape_option_path(p) for p in rel))
    flags = _syscalls.MS_RDONLY if "ro" in options else 0
    data = ",".join(opts)
    if len(data) >= PAGE_LIMIT:
        raise SnapshotError(f"overlay options are {len(data)} bytes even with relative paths",
                            hint="use a shorter store path (--root)")
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(base)
        _syscalls.mount("overlay", target, "overlay", flags, data)
    finally:
        os.fchdir(old)
        os.close(old)


def mount_all(mounts: Sequence[Mount], target: str | os.PathLike[str]) -> None:
    """Mount ``mounts`` on ``target`` in order. Call this only inside a private mount
    namespace (the sandbox child): the host's mount table must never see these."""
    from runtime import _syscalls

    dest = os.fspath(target)
    for m in mounts:
        if m.type == "bind":
            flags = _syscalls.MS_BIND | (_syscalls.MS_REC if "rbind" in m.options else 0)
            _syscalls.mount(m.source, dest, None, flags, None)
            if "ro" in m.options:
                locked = _syscalls.locked_flags(dest)
                _syscalls.mount(None, dest, None, _syscalls.MS_REMOUNT | _syscalls.MS_BIND
                                | _syscalls.MS_RDONLY | locked, None)
        elif m.type == "overlay":
            data_opts = [o for o in m.options if o != "ro"]
            data = ",".join(data_opts)
            if len(data) < PAGE_LIMIT:
                flags = _syscalls.MS_RDONLY if "ro" in m.options else 0
                _syscalls.mount(m.source, dest, "overlay", flags, data)
                continue
            try:
                _mount_overlay_fsconfig(m.options, dest)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                _mount_overlay_chdir(m.options, dest)
        else:
            raise SnapshotError(f"mount type {m.type!r} is not supported")


def unmount(target: str | os.PathLike[str]) -> None:
    from runtime import _syscalls

    _syscalls.umount2(os.fspath(target), 0)
