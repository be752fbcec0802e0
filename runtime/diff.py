"""Layers from snapshots (DESIGN §0): overlay reads only the upper dir, O(bytes changed) (whiteouts ->
``.wh.NAME``, opaque dirs -> ``.wh..wh..opq``, overlay xattrs dropped, hardlinks kept, sockets
skipped); copy compares the tree with its parent and gives the same entries. Sorted, written by
registry.layertar in one pass. Imports registry, runtime.snapshots/unpack (_syscalls for statx)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from registry.compression import Codec
from registry.layertar import LayerBlob, TarEntry, opaque, sort_key, whiteout, write_layer
from registry.store import DirStore
from runtime.snapshots import CopySnapshotter, OverlaySnapshotter, Snapshotter
from runtime.unpack import is_overlay_xattr, is_whiteout_device

_OVERLAY_NS = ("trusted", "user")


@dataclass(frozen=True, slots=True)
class IdMap:
    """Host ids → container ids for a rootless upper dir: (container_id, host_id, count)
    ranges as in /proc/PID/uid_map. Ids outside every range are kept as they are."""

    uids: tuple[tuple[int, int, int], ...] = ()
    gids: tuple[tuple[int, int, int], ...] = ()

    @staticmethod
    def _map(ranges: tuple[tuple[int, int, int], ...], host: int) -> int:
        for inside, outside, count in ranges:
            if outside <= host < outside + count:
                return inside + host - outside
        return host

    def uid(self, host: int) -> int:
        return self._map(self.uids, host) if self.uids else host

    def gid(self, host: int) -> int:
        return self._map(self.gids, host) if self.gids else host


_IDENTITY = IdMap()


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if is_overlay_xattr(name):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _overlay_xattr(path: str, suffix: str) -> bytes | None:
    for ns in _OVERLAY_NS:
        try:
            return os.getxattr(path, f"{ns}.overlay.{suffix}", follow_symlinks=False)
        except OSError:
            continue
    return None


def _entry(rel: str, full: str, st: os.stat_result, ids: IdMap,
           links: dict[tuple[int, int], str] | None) -> TarEntry | None:
    """A TarEntry for one filesystem node (None for sockets)."""
    mode = stat.S_IMODE(st.st_mode)
    uid, gid, mtime = ids.uid(st.st_uid), ids.gid(st.st_gid), st.st_mtime_ns // 1_000_000_000
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        if links is not None and st.st_nlink > 1:
            ident = (st.st_dev, st.st_ino)
            first = links.get(ident)
            if first is not None:
                return TarEntry(rel, "hardlink", mode, uid, gid, mtime, linkname=first)
            links[ident] = rel
        return TarEntry(rel, "file", mode, uid, gid, mtime, size=st.st_size, source=full,
                        xattrs=_xattrs(full))
    if fmt == stat.S_IFDIR:
        return TarEntry(rel, "dir", mode, uid, gid, mtime, xattrs=_xattrs(full))
    if fmt == stat.S_IFLNK:
        return TarEntry(rel, "symlink", 0o777, uid, gid, mtime, linkname=os.readlink(full))  # noqa: PTH115
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        return TarEntry(rel, "char" if fmt == stat.S_IFCHR else "block", mode, uid, gid, mtime,
                        devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev), xattrs=_xattrs(full))
    if fmt == stat.S_IFIFO:
        return TarEntry(rel, "fifo", mode, uid, gid, mtime)
    return None          # sockets: meaningless in an image


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


# -- overlay: the upper directory is the diff -----------------------------------------------------
def upper_entries(upper: Path, *, ids: IdMap = _IDENTITY) -> Iterator[TarEntry]:
    """Entries of an overlay upper directory, in sorted (depth-first) order. Iterative, so
    any depth a RUN step can create is fine."""
    links: dict[tuple[int, int], str] = {}
    stack: list[Iterator[tuple[str, os.DirEntry[str]]]] = [_sorted_children("", os.fspath(upper))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        crel, e = item
        st = e.stat(follow_symlinks=False)
        if is_whiteout_device(st):
            yield whiteout(crel)
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == 0 and _overlay_xattr(e.path, "whiteout") is not None:
            yield whiteout(crel)
            continue
        entry = _entry(crel, e.path, st, ids, links)
        if entry is None:
            continue
        yield entry
        if entry.kind == "dir":
            if _overlay_xattr(e.path, "opaque") == b"y":
                yield opaque(crel)
            stack.append(_sorted_children(crel, e.path))


def _sorted_children(rel: str, full: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    with os.scandir(full) as it:
        children = sorted(it, key=lambda e: e.name)
    return iter([(_join(rel, e.name), e) for e in children])


# -- copy: compare with the parent tree --------------------------------------------------------------
def _same_content(a: str, b: str) -> bool:
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _changed(new: os.stat_result, old: os.stat_result, npath: str, opath: str, mark: int) -> bool:
    if stat.S_IFMT(new.st_mode) != stat.S_IFMT(old.st_mode):
        return True
    if mark and new.st_ctime_ns < mark:
        return False      # untouched since the copy was made
    if (new.st_mode, new.st_uid, new.st_gid, new.st_mtime_ns) != (
            old.st_mode, old.st_uid, old.st_gid, old.st_mtime_ns):
        return True
    fmt = stat.S_IFMT(new.st_mode)
    if fmt == stat.S_IFLNK:
        return Path(npath).readlink() != Path(opath).readlink()
    if fmt in (stat.S_IFCHR, stat.S_IFBLK) and new.st_rdev != old.st_rdev:
        return True
    if _xattrs(npath) != _xattrs(opath):
        return True
    if fmt == stat.S_IFREG:
        return new.st_size != old.st_size or not _same_content(npath, opath)
    return False


def compare_entries(new_root: Path, old_root: Path | None, *, mark_ns: int = 0,
                    ids: IdMap = _IDENTITY) -> Iterator[TarEntry]:
    """Entries that turn tree ``old_root`` into tree ``new_root`` (sorted, with whiteouts).

    Shaped like an overlay upper would be, so both snapshotters give the same layer: a
    directory born after ``mark_ns`` where the parent had an entry becomes opaque; ancestors
    of every change are included; the other names of a changed hardlinked file come along
    (overlayfs copies them up), and a hardlink group is one file plus hardlinks.
    """
    from runtime._syscalls import birth_time_ns  # statx via ctypes: only the copy snapshotter

    can_birth = birth_time_ns(os.fspath(new_root)) is not None
    groups: dict[tuple[int, int], list[str]] = {}       # nlink > 1 files of the new tree
    where: dict[str, tuple[str, os.stat_result]] = {}    # their paths and stats

    def scan(path: str | None) -> dict[str, os.DirEntry[str]]:
        if path is None:
            return {}
        try:
            with os.scandir(path) as it:
                return {e.name: e for e in it}
        except (FileNotFoundError, NotADirectoryError):
            return {}

    def walk(rel: str, npath: str, opath: str | None) -> list[TarEntry]:
        out: list[TarEntry] = []
        new = scan(npath)
        old = scan(opath)
        for name in sorted(new.keys() | old.keys()):
            crel = _join(rel, name)
            ne = new.get(name)
            oe = old.get(name)
            if ne is None:
                out.append(whiteout(crel))
                continue
            nst = ne.stat(follow_symlinks=False)
            ost = oe.stat(follow_symlinks=False) if oe is not None else None
            if stat.S_ISDIR(nst.st_mode):
                recreated = False
                if ost is not None and mark_ns and can_birth:
                    born = birth_time_ns(ne.path)
                    recreated = born is not None and born >= mark_ns
                fresh = ost is None or not stat.S_ISDIR(ost.st_mode) or recreated
                inner = walk(crel, ne.path, None if fresh or oe is None else oe.path)
                changed = fresh or (ost is not None and oe is not None
                                    and _changed(nst, ost, ne.path, oe.path, mark_ns))
                if changed or inner:
                    entry = _entry(crel, ne.path, nst, ids, None)
                    assert entry is not None
                    out.append(entry)
                    if recreated or (ost is not None and not stat.S_ISDIR(ost.st_mode)):
                        out.append(opaque(crel))
                    out.extend(inner)
                continue
            if stat.S_ISREG(nst.st_mode) and nst.st_nlink > 1:
                groups.setdefault((nst.st_dev, nst.st_ino), []).append(crel)
                where[crel] = (ne.path, nst)
            if oe is None or ost is None or _changed(nst, ost, ne.path, oe.path, mark_ns):
                entry = _entry(crel, ne.path, nst, ids, None)
                if entry is not None:
                    out.append(entry)
        return out

    entries = walk("", os.fspath(new_root), os.fspath(old_root) if old_root is not None else None)
    if groups:
        entries = _complete_hardlinks(entries, groups, where, os.fspath(new_root), ids)
    yield from entries


def _complete_hardlinks(entries: list[TarEntry], groups: dict[tuple[int, int], list[str]],
                        where: dict[str, tuple[str, os.stat_result]], root: str,
                        ids: IdMap) -> list[TarEntry]:
    emitted = {e.path: e for e in entries}
    extra: list[TarEntry] = []
    for members in groups.values():
        if len(members) < 2 or not any(m in emitted and emitted[m].kind == "file" for m in members):
            continue
        for m in members:
            if m in emitted:
                continue
            parts = m.split("/")
            for i in range(1, len(parts)):
                anc = "/".join(parts[:i])
                if anc not in emitted:
                    full = f"{root}/{anc}"
                    entry = _entry(anc, full, os.lstat(full), ids, None)
                    assert entry is not None
                    emitted[anc] = entry
                    extra.append(entry)
            path, st = where[m]
            entry = _entry(m, path, st, ids, None)
            assert entry is not None
            emitted[m] = entry
            extra.append(entry)
    ordered = sorted([*entries, *extra], key=lambda e: sort_key(e.path))
    first: dict[tuple[int, int], str] = {}
    out: list[TarEntry] = []
    for e in ordered:
        hit = where.get(e.path)
        if e.kind == "file" and hit is not None:
            ident = (hit[1].st_dev, hit[1].st_ino)
            if ident in first:
                e = TarEntry(e.path, "hardlink", mode=e.mode, uid=e.uid, gid=e.gid, mtime=e.mtime,
                             linkname=first[ident])
            else:
                first[ident] = e.path
        out.append(e)
    return out


# -- the snapshotter-facing API ------------------------------------------------------------------------
def layer_entries(snapshotter: Snapshotter, key: str, *, ids: IdMap = _IDENTITY) -> Iterator[TarEntry]:
    """The changes of active snapshot ``key`` against its parent, as sorted tar entries."""
    if isinstance(snapshotter, OverlaySnapshotter):
        return upper_entries(snapshotter.upper_dir(key), ids=ids)
    if isinstance(snapshotter, CopySnapshotter):
        info = snapshotter.stat(key)
        parent = snapshotter.path(info.parent) if info.parent is not None else None
        return compare_entries(snapshotter.path(key), parent, mark_ns=info.prepared_ns, ids=ids)
    raise TypeError(f"no differ for {type(snapshotter).__name__}")


def write_diff(store: DirStore, snapshotter: Snapshotter, key: str, *, codec: Codec = "gzip",
               clamp_mtime: int | None = None, ids: IdMap = _IDENTITY) -> LayerBlob:
    """The layer of active snapshot ``key``: tar → codec → store in one streaming pass
    (registry.layertar.write_layer: the same bytes as any other pybuild layer writer).
    Deterministic: sorted entries, numeric owners, mtimes clamped to ``clamp_mtime``."""
    return write_layer(layer_entries(snapshotter, key, ids=ids), store, codec, clamp_mtime=clamp_mtime)


def diff_entries_equal(a: Sequence[TarEntry], b: Sequence[TarEntry]) -> bool:
    """Compare two entry lists ignoring where file content is read from."""
    def norm(e: TarEntry) -> tuple[object, ...]:
        return (e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname, e.devmajor,
                e.devminor, tuple(sorted(e.xattrs.items())))
    return [norm(x) for x in a] == [norm(x) for x in b]
