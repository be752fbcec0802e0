"""Deterministic layer tars (DESIGN C3): sorted entries, numeric owners with empty
uname/gname, PAX format, no atime/ctime, mtimes clamped to SOURCE_DATE_EPOCH when given,
xattrs as SCHILY.xattr records, OCI whiteout markers.

``write_layer`` streams entries → tar → codec → store ingest in one pass and computes the
compressed digest (descriptor) and the uncompressed digest (diff_id) on the way. Stdlib only
(the codec modules are imported lazily by registry.compression).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from registry import mediatypes as mt
from registry.compression import Codec, Writable, compressor
from registry.digest import CHUNK, Digest
from registry.model import Descriptor
from registry.store import DirStore

EntryKind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
BLOCK = 512

_TAR_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One member of a layer tar. ``path`` is relative and POSIX ('usr/bin/x', no './')."""

    path: str
    kind: EntryKind
    mode: int = 0o644            # permission bits incl. setuid/setgid/sticky, no type bits
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    source: Path | None = None   # regular-file content read from here...
    data: bytes | None = None    # ...or held in memory (small files)


def whiteout(path: str, *, mtime: int = 0) -> TarEntry:
    """The OCI marker that deletes ``path`` from the lower layers."""
    head, _, name = path.rpartition("/")
    return TarEntry(f"{head}/{WHITEOUT_PREFIX}{name}" if head else WHITEOUT_PREFIX + name, "file",
                    mode=0o644, mtime=mtime)


def opaque(dirpath: str, *, mtime: int = 0) -> TarEntry:
    """The OCI marker that hides everything the lower layers have under ``dirpath``."""
    return TarEntry(f"{dirpath}/{OPAQUE_MARKER}" if dirpath else OPAQUE_MARKER, "file", mtime=mtime)


def sort_key(path: str) -> tuple[str, ...]:
    """Component-wise order: a directory's entries stay together, markers ('.wh.') first."""
    return tuple(path.split("/"))


def _header(entry: TarEntry, mtime: int) -> bytes:
    info = tarfile.TarInfo(entry.path)
    info.type = _TAR_TYPES[entry.kind]
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = mtime
    info.size = entry.size if entry.kind == "file" else 0
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in sorted(entry.xattrs.items())}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _copy_file(entry: TarEntry, out: Writable) -> None:
    remaining = entry.size
    if entry.data is not None:
        if len(entry.data) != entry.size:
            raise ValueError(f"{entry.path}: size {entry.size} but {len(entry.data)} bytes of data")
        out.write(entry.data)
        remaining = 0
    elif entry.source is not None:
        fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while remaining > 0:
                chunk = os.read(fd, min(CHUNK, remaining))
                if not chunk:
                    # The file shrank while we read it: the header already promised
                    # entry.size bytes, so pad with zeros rather than corrupt the archive.
                    out.write(b"\0" * remaining)
                    remaining = 0
                    break
                out.write(chunk)
                remaining -= len(chunk)
        finally:
            os.close(fd)
    elif entry.size:
        raise ValueError(f"{entry.path}: regular file with no content source")
    pad = (-entry.size) % BLOCK
    if pad:
        out.write(b"\0" * pad)


def write_tar(entries: Iterable[TarEntry], out: Writable, *, clamp_mtime: int | None = None,
              sort: bool = True) -> None:
    """Write a complete tar stream of ``entries`` (sorted unless ``sort=False``)."""
    items = sorted(entries, key=lambda e: sort_key(e.path)) if sort else entries
    for entry in items:
        mtime = entry.mtime if clamp_mtime is None else min(entry.mtime, clamp_mtime)
        out.write(_header(entry, max(mtime, 0)))
        if entry.kind == "file":
            _copy_file(entry, out)
    out.write(b"\0" * (2 * BLOCK))


class _Tee:
    """Hashes and counts the uncompressed tar bytes on their way into the codec."""

    def __init__(self, inner: Writable) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)


@dataclass(frozen=True, slots=True)
class LayerBlob:
    descriptor: Descriptor   # media type + digest/size of the *compressed* blob
    diff_id: Digest          # sha256 of the *uncompressed* tar (ImageConfig.rootfs.diff_ids)
    uncompressed_size: int


def write_layer(entries: Iterable[TarEntry], store: DirStore, codec: Codec = "gzip", *,
                clamp_mtime: int | None = None, sort: bool = True) -> LayerBlob:
    """Tar → compress → ingest in one streaming pass; returns both digests."""
    with store.ingest() as blob:
        comp = compressor(blob, codec)
        tee = _Tee(comp)
        write_tar(entries, tee, clamp_mtime=clamp_mtime, sort=sort)
        comp.close()
    info = blob.descriptor_info
    desc = Descriptor(mt.layer_type(codec), info.digest, info.size)
    return LayerBlob(desc, Digest.from_hasher(tee.hasher), tee.size)
