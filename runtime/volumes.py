"""Named and anonymous volumes: ``$PYBUILD_ROOT/volumes/<name>/{_data/,meta.json}``.

A volume is a plain directory the sandbox bind-mounts. The first use of an empty named volume
at a path copies the image's content at that path into it (docker's semantics; ``populated``
in meta.json makes it happen once). A volume referenced by any container record, running or
not, cannot be removed. Stdlib + registry.store helpers + runtime.containers only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from registry.store import atomic_write, flocked
from runtime.containers import ContainerStore, MountSpec, rfc3339_nano
from runtime.errors import SandboxError

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class VolumeError(SandboxError):
    exit_code: ClassVar[int] = 1


class VolumeNotFound(VolumeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no such volume: {name}", hint="list volumes with `pybuild volume ls`")
        self.name = name


class VolumeInUse(VolumeError):
    def __init__(self, name: str, users: Sequence[str]) -> None:
        super().__init__(f"volume {name} is in use by container(s) " + ", ".join(u[:12] for u in users),
                         hint="remove those containers first (`pybuild rm -v` also removes "
                              "anonymous volumes)")
        self.name, self.users = name, list(users)


@dataclass(frozen=True)
class Volume:
    name: str
    created: str
    mountpoint: str
    driver: str = "local"
    anonymous: bool = False
    populated: bool = False           # the image's content has been copied in (or it was non-empty)
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return Path(self.mountpoint)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"], d["options"] = dict(self.labels), dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Volume:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def inspect(self) -> dict[str, Any]:
        """Docker-shaped ``volume inspect`` entry."""
        return {"CreatedAt": self.created, "Driver": self.driver, "Labels": dict(self.labels) or None,
                "Mountpoint": self.mountpoint, "Name": self.name, "Options": dict(self.options) or None,
                "Scope": "local", "Anonymous": self.anonymous}


class VolumeStore:
    """Volumes of one pybuild root: ``VolumeStore(store.subdir("volumes"))``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _meta(self, name: str) -> Path:
        return self.root / name / "meta.json"

    def exists(self, name: str) -> bool:
        return NAME_RE.match(name) is not None and self._meta(name).is_file()

    def get(self, name: str) -> Volume:
        if not NAME_RE.match(name):
            raise VolumeNotFound(name)
        try:
            return Volume.from_dict(json.loads(self._meta(name).read_bytes()))
        except FileNotFoundError:
            raise VolumeNotFound(name) from None

    def list_all(self) -> list[Volume]:
        out = []
        for d in sorted(self.root.iterdir()):
            if (d / "meta.json").is_file():
                out.append(Volume.from_dict(json.loads((d / "meta.json").read_bytes())))
        return out

    def create(self, name: str | None = None, *, labels: Mapping[str, str] | None = None,
               options: Mapping[str, str] | None = None, anonymous: bool = False,
               exist_ok: bool = True) -> Volume:
        """Create a volume (a random 64-hex name when ``name`` is None). Creating an existing
        named volume returns it, as docker does."""
        if name is None:
            name, anonymous = os.urandom(32).hex(), True
        if not NAME_RE.match(name) or len(name) > 255:
            raise VolumeError(f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] allowed, "
                              "at least 2 characters")
        with flocked(self.root / "lock"):
            if self._meta(name).is_file():
                if exist_ok:
                    return self.get(name)
                raise VolumeError(f"volume {name} already exists")
            d = self.root / name
            (d / "_data").mkdir(parents=True, exist_ok=True)
            (d / "_data").chmod(0o755)
            vol = Volume(name=name, created=rfc3339_nano(), mountpoint=str(d / "_data"),
                         anonymous=anonymous, labels=dict(labels or {}), options=dict(options or {}))
            atomic_write(self._meta(name), json.dumps(vol.to_dict(), indent=1).encode())
            return vol

    def _save(self, vol: Volume) -> None:
        atomic_write(self._meta(vol.name), json.dumps(vol.to_dict(), indent=1).encode())

    def remove(self, name: str, *, users: Sequence[str] = (), force: bool = False) -> None:
        """Remove a volume and its data. ``users`` are the containers that reference it."""
        vol = self.get(name)
        if users and not force:
            raise VolumeInUse(name, users)
        with flocked(self.root / "lock"):
            trash = self.root / f".rm-{vol.name}-{os.urandom(4).hex()}"
            try:
                (self.root / vol.name).rename(trash)
            except FileNotFoundError:
                return
            import shutil

            shutil.rmtree(trash, ignore_errors=True)

    def prune(self, in_use: Mapping[str, Sequence[str]], *, all_volumes: bool = False) -> list[str]:
        """Remove unused volumes: anonymous ones only, unless ``all_volumes`` (docker 23+)."""
        removed = []
        for vol in self.list_all():
            if in_use.get(vol.name) or not (vol.anonymous or all_volumes):
                continue
            self.remove(vol.name)
            removed.append(vol.name)
        return removed

    # -- first-use copy ---------------------------------------------------------------------------
    def needs_populate(self, vol: Volume) -> bool:
        if vol.populated:
            return False
        try:
            with os.scandir(vol.data) as it:
                return next(it, None) is None
        except FileNotFoundError:
            return False

    def populate(self, vol: Volume, source: Path | None) -> Volume:
        """Copy ``source`` (the image's directory at the mount path, already resolved inside the
        container's root; None if the image has nothing there) into an empty volume, once."""
        with flocked(self.root / vol.name / "lock"):
            vol = self.get(vol.name)
            if self.needs_populate(vol) and source is not None and source.is_dir():
                copy_tree(source, vol.data)
                st = source.stat()
                os.chown(vol.data, st.st_uid, st.st_gid)
                vol.data.chmod(stat.S_IMODE(st.st_mode))
            vol = replace(vol, populated=True)
            self._save(vol)
            return vol


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory's contents with owners, modes, times, symlinks (not followed), device
    nodes, fifos and hard links preserved. ``dst`` exists. Never follows a symlink in ``src``."""
    links: dict[tuple[int, int], Path] = {}

    def walk(s: Path, d: Path) -> None:
        with os.scandir(s) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            sp, dp = Path(e.path), d / e.name
            st = os.lstat(sp)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                dp.mkdir(mode=0o700)
                walk(sp, dp)
            elif stat.S_ISLNK(mode):
                dp.symlink_to(sp.readlink())
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    os.link(links[key], dp)
                    continue
                import shutil

                shutil.copyfile(sp, dp, follow_symlinks=False)
                if st.st_nlink > 1:
                    links[key] = dp
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                try:
                    os.mknod(dp, mode, st.st_rdev)
                except PermissionError:
                    continue  # rootless: device nodes cannot be created; skipped like unpack does
            else:
                continue  # sockets are not copied
            os.chown(dp, st.st_uid, st.st_gid, follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                dp.chmod(stat.S_IMODE(mode))
            _copy_xattrs(sp, dp)
            os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    walk(src, dst)


def _copy_xattrs(src: Path, dst: Path) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for n in names:
        with contextlib.suppress(OSError):
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), follow_symlinks=False)


# -- -v / --mount and the image's VOLUME entries ------------------------------------------------

def parse_volume_flag(text: str) -> MountSpec:
    """``-v`` forms: ``/ctr`` (anonymous), ``NAME:/ctr[:opts]`` (named), ``/host:/ctr[:opts]`` (bind).
    Options: ro, rw (others such as z, Z, rprivate are accepted and kept)."""
    parts = text.split(":")
    if len(parts) == 1:
        src, dest, opts = "", parts[0], ""
    elif len(parts) == 2:
        if parts[1].startswith("/"):
            src, dest, opts = parts[0], parts[1], ""
        else:
            src, dest, opts = "", parts[0], parts[1]
    elif len(parts) == 3:
        src, dest, opts = parts
    else:
        raise VolumeError(f"invalid volume specification {text!r}: want [SOURCE:]DEST[:OPTIONS]")
    if not dest.startswith("/"):
        raise VolumeError(f"invalid volume specification {text!r}: the destination must be absolute")
    options = tuple(o for o in opts.split(",") if o)
    ro = "ro" in options
    extra = tuple(o for o in options if o not in ("ro", "rw"))
    if not src:
        return MountSpec("volume", dest, "", readonly=ro, options=extra, anonymous=True)
    if src.startswith(("/", ".", "~")):
        return MountSpec("bind", dest, str(Path(src).expanduser().absolute()), readonly=ro, options=extra)
    if not NAME_RE.match(src):
        raise VolumeError(f"invalid volume name {src!r} in {text!r}")
    return MountSpec("volume", dest, src, readonly=ro, options=extra)


def plan_mounts(vstore: VolumeStore, mounts: Iterable[MountSpec],
                image_volumes: Iterable[str] = ()) -> tuple[MountSpec, ...]:
    """Give every volume mount a concrete volume (named ones are created if missing, anonymous
    ones get a fresh 64-hex volume) and add anonymous volumes for the image's VOLUME paths not
    already covered by a mount. The result is what the container record keeps."""
    out: list[MountSpec] = []
    for m in mounts:
        if m.type == "volume":
            vol = vstore.create(m.source or None)
            m = replace(m, source=vol.name, anonymous=vol.anonymous)
        elif m.type == "bind" and not Path(m.source).exists():
            raise VolumeError(f"bind source path does not exist: {m.source}")
        out.append(m)
    covered = {os.path.normpath(m.destination) for m in out}
    for path in image_volumes:
        dest = os.path.normpath("/" + path.lstrip("/"))
        if dest not in covered:
            vol = vstore.create(None)
            out.append(MountSpec("volume", dest, vol.name, anonymous=True))
            covered.add(dest)
    return tuple(out)


def host_source(vstore: VolumeStore, m: MountSpec) -> Path:
    """The host path the sandbox binds for a mount (a volume's _data, or the bind source)."""
    if m.type == "volume":
        return vstore.get(m.source).data
    if m.type == "bind":
        return Path(m.source)
    raise VolumeError(f"mount type {m.type} has no host source")


def volumes_in_use(containers: ContainerStore) -> dict[str, list[str]]:
    """volume name -> IDs of the containers (any state) whose record references it."""
    users: dict[str, list[str]] = {}
    for c in containers.list_all():
        try:
            record = c.record
        except SandboxError:
            continue
        for m in record.mounts:
            if m.type == "volume" and m.source:
                users.setdefault(m.source, []).append(c.id)
    return users


def remove_anonymous(vstore: VolumeStore, mounts: Iterable[MountSpec],
                     in_use: Mapping[str, Sequence[str]], owner: str) -> list[str]:
    """`rm -v`: remove the container's anonymous volumes that no other container uses."""
    removed = []
    for m in mounts:
        if m.type == "volume" and m.anonymous and m.source:
            others = [u for u in in_use.get(m.source, ()) if u != owner]
            if others:
                continue
            try:
                vstore.remove(m.source)
                removed.append(m.source)
            except VolumeNotFound:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
    return removed


def populate_volumes(store_root: Path, c: Any) -> list[str]:
    """Docker's copy-up for container ``c``: every named or anonymous volume it mounts that is
    still empty and never populated gets the content the container's rootfs has at the mount
    path. The rootfs is mounted in a private mount namespace of a short-lived child (nothing is
    mounted on the host); paths are resolved inside the root. Returns the volumes filled."""
    vstore = VolumeStore(store_root / "volumes")
    todo: list[tuple[str, str]] = []
    for m in c.record.mounts:
        if m.type == "volume" and m.source:
            with contextlib.suppress(VolumeNotFound):
                if vstore.needs_populate(vstore.get(m.source)):
                    todo.append((m.source, m.destination))
    if not todo:
        return []
    if os.geteuid() != 0 or not c.record.snapshot_key:
        for name, _ in todo:   # rootless: no private mount of the rootfs here; start empty
            vstore.populate(vstore.get(name), None)
        return []
    import importlib

    from runtime import pathsafe
    from runtime.rootfs import in_private_root

    run_mod = importlib.import_module("runtime.run")
    mounts = run_mod.open_snapshotter(store_root, c.record.snapshotter or None).mounts(c.record.snapshot_key)

    def fill(root_fd: int) -> list[str]:     # in the child, with the rootfs mounted privately
        done = []
        for name, dest in todo:
            vol = vstore.get(name)
            try:
                fd = pathsafe.open_dir(root_fd, pathsafe.clean_name(dest))
            except (FileNotFoundError, NotADirectoryError):
                vstore.populate(vol, None)
                continue
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            vstore.populate(vol, Path(f"/proc/self/fd/{dfd}"))
            done.append(name)
        return done

    try:
        return list(in_private_root(mounts, fill))
    except SandboxError as exc:
        raise VolumeError(f"container {c.id[:12]}: could not copy the image's content into its "
                          f"volumes: {exc}", hint=exc.hint) from None
