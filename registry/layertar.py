"""Deterministic layer tars (DESIGN C3): sorted entries, numeric owners, empty uname/gname, PAX,
no atime/ctime, mtimes clamped to SOURCE_DATE_EPOCH, SCHILY.xattr records, OCI whiteouts.
Headers are byte-identical to tarfile's PAX output; the stream goes out in REBLOCK blocks, which
write_layer compresses in a codec thread fed the same blocks as compressor() (bytes independent
of threading), hashing diff_id and blob digest in the same pass. Imports registry only.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from registry import mediatypes as mt
from registry.compression import REBLOCK, Codec, Writable, block_compressor
from registry.digest import Digest
from registry.model import Descriptor
from registry.store import DirStore

EntryKind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
BLOCK = 512
THREADED_MIN = 4 << 20   # smaller layers are written inline (a thread costs more than it saves)
POOL = 4                 # REBLOCK buffers in flight between the tar writer and the compressor

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
    source: str | os.PathLike[str] | None = None   # regular-file content read from here...
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


# -- headers ---------------------------------------------------------------------------------
# The ustar block: name mode uid gid size mtime chksum type linkname magic+version uname gname
# devmajor devminor prefix, then 12 bytes of padding. "Ns" pads with NULs and truncates, as
# tarfile's stn() does; a number is "%0*o" plus a NUL, as its itn() does.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
_MAGIC = tarfile.POSIX_MAGIC
_SPACES = b"        "
_ZERO7 = b"0000000"
_ZERO11 = b"00000000000"
_PAX_NAME = b"././@PaxHeader"
_ZEROS = memoryview(bytes(REBLOCK))


def _octal(value: int, digits: int) -> bytes:
    if 0 <= value < 8 ** (digits - 1):
        return b"%0*o" % (digits - 1, value)
    raise ValueError("overflow in number field")


def _ustar(name: bytes, mode: int, uid: bytes, gid: bytes, size: bytes, mtime: bytes, kind: bytes,
           linkname: bytes, devmajor: bytes, devminor: bytes) -> bytes:
    block = _USTAR.pack(name, b"%07o" % mode, uid, gid, size, mtime, _SPACES, kind, linkname, _MAGIC,
                        b"", b"", devmajor, devminor, b"")
    return b"%s%06o\0%s" % (block[:148], sum(block), block[155:])


def _pax_block(records: dict[str, str]) -> bytes:
    """tarfile's _create_pax_generic_header(records, XHDTYPE, "utf-8"), same bytes."""
    binary = False
    for value in records.values():
        try:
            value.encode("utf-8", "strict")
        except UnicodeEncodeError:
            binary = True
            break
    body = b"21 hdrcharset=BINARY\n" if binary else b""
    for keyword, value in records.items():
        kw = keyword.encode("utf-8")
        val = value.encode("utf-8", "surrogateescape") if binary else value.encode("utf-8")
        length = len(kw) + len(val) + 3
        n = p = 0
        while True:
            n = length + len(str(p))
            if n == p:
                break
            p = n
        body += b"%d %s=%s\n" % (p, kw, val)
    head = _ustar(_PAX_NAME, 0, _ZERO7, _ZERO7, _octal(len(body), 12), _ZERO11, tarfile.XHDTYPE,
                  b"", b"", b"")
    return head + body + bytes(-len(body) % BLOCK)


def header(entry: TarEntry, mtime: int) -> bytes:
    """The header block(s) of ``entry`` with ``mtime`` (already clamped)."""
    kind = entry.kind
    size = entry.size if kind == "file" else 0
    uid, gid = entry.uid, entry.gid
    if not (type(size) is int and type(uid) is int and type(gid) is int  # noqa: E721
            and type(mtime) is int):  # noqa: E721
        return _header_tarfile(entry, mtime)   # floats: tarfile's rounding rules, not ours
    name = entry.path
    if kind == "dir" and not name.endswith("/"):
        name += "/"
    linkname = entry.linkname
    records: dict[str, str] = {}
    if entry.xattrs:
        for key, value in sorted(entry.xattrs.items()):
            records[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
    if not name.isascii() or len(name) > 100:
        records["path"] = name
    if not linkname.isascii() or len(linkname) > 100:
        records["linkpath"] = linkname
    if 0 <= uid < 0o10000000:
        uid_b = b"%07o" % uid
    else:
        uid_b, records["uid"] = _ZERO7, str(uid)
    if 0 <= gid < 0o10000000:
        gid_b = b"%07o" % gid
    else:
        gid_b, records["gid"] = _ZERO7, str(gid)
    if 0 <= size < 0o100000000000:
        size_b = b"%011o" % size
    else:
        size_b, records["size"] = _ZERO11, str(size)
    if 0 <= mtime < 0o100000000000:
        mtime_b = b"%011o" % mtime
    else:
        mtime_b, records["mtime"] = _ZERO11, str(mtime)
    if kind == "char" or kind == "block":
        devmajor, devminor = _octal(entry.devmajor, 8), _octal(entry.devminor, 8)
    else:
        devmajor = devminor = b""
    block = _ustar(name.encode("ascii", "replace"), entry.mode & 0o7777, uid_b, gid_b, size_b,
                   mtime_b, _TAR_TYPES[kind], linkname.encode("ascii", "replace"), devmajor, devminor)
    return _pax_block(records) + block if records else block


def _header_tarfile(entry: TarEntry, mtime: int | float) -> bytes:
    """The reference: what tarfile itself writes for ``entry`` (the encoder above matches it)."""
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


# -- the block writer ------------------------------------------------------------------------
Emit = Callable[[bytearray, int], None]   # (block buffer, bytes used); buffer reusable after


class _Blocks:
    """Packs a byte stream into ``REBLOCK``-sized buffers; ``emit`` gets each full one (and the
    last, shorter one from ``finish``). File data is read straight into the buffers."""

    __slots__ = ("_emit", "_new", "buf", "view", "pos")

    def __init__(self, emit: Emit, new: Callable[[], bytearray]) -> None:
        self._emit = emit
        self._new = new
        self.buf = new()
        self.view = memoryview(self.buf)
        self.pos = 0

    def _flush(self) -> None:
        self.view.release()
        self._emit(self.buf, REBLOCK)
        self.buf = self._new()
        self.view = memoryview(self.buf)
        self.pos = 0

    def put(self, data: bytes | memoryview) -> None:
        pos = self.pos
        end = pos + len(data)
        if end < REBLOCK:
            self.view[pos:end] = data
            self.pos = end
            return
        src = memoryview(data)
        while src:
            take = min(REBLOCK - self.pos, len(src))
            self.view[self.pos:self.pos + take] = src[:take]
            self.pos += take
            src = src[take:]
            if self.pos == REBLOCK:
                self._flush()

    def read_file(self, fd: int, size: int) -> int:
        """Copy ``size`` bytes of ``fd`` into the stream; returns how many the file had (fewer
        if it shrank: the caller pads)."""
        left = size
        while left:
            want = min(REBLOCK - self.pos, left)
            n = os.readv(fd, [self.view[self.pos:self.pos + want]])
            if not n:
                break
            self.pos += n
            left -= n
            if self.pos == REBLOCK:
                self._flush()
        return size - left

    def finish(self) -> None:
        self.view.release()
        if self.pos:
            self._emit(self.buf, self.pos)
        self.pos = 0


def _copy_file(entry: TarEntry, out: _Blocks) -> None:
    if entry.data is not None:
        if len(entry.data) != entry.size:
            raise ValueError(f"{entry.path}: size {entry.size} but {len(entry.data)} bytes of data")
        out.put(entry.data)
    elif entry.source is not None:
        fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            got = out.read_file(fd, entry.size)
        finally:
            os.close(fd)
        # The file shrank while we read it: the header already promised entry.size bytes,
        # so pad with zeros rather than corrupt the archive.
        short = entry.size - got
        while short:
            out.put(_ZEROS[:min(short, REBLOCK)])
            short -= min(short, REBLOCK)
    elif entry.size:
        raise ValueError(f"{entry.path}: regular file with no content source")
    pad = -entry.size % BLOCK
    if pad:
        out.put(_ZEROS[:pad])


def _ordered(entries: Iterable[TarEntry], sort: bool) -> Iterable[TarEntry]:
    return sorted(entries, key=lambda e: sort_key(e.path)) if sort else entries


def _write_entries(items: Iterable[TarEntry], out: _Blocks, clamp_mtime: int | None) -> None:
    for entry in items:
        mtime = entry.mtime if clamp_mtime is None else min(entry.mtime, clamp_mtime)
        out.put(header(entry, max(mtime, 0)))
        if entry.kind == "file":
            _copy_file(entry, out)
    out.put(_ZEROS[:2 * BLOCK])
    out.finish()


def write_tar(entries: Iterable[TarEntry], out: Writable, *, clamp_mtime: int | None = None,
              sort: bool = True) -> None:
    """Write a complete tar stream of ``entries`` (sorted unless ``sort=False``) to ``out``
    in ``REBLOCK``-sized writes."""
    def emit(buf: bytearray, n: int) -> None:
        out.write(bytes(memoryview(buf)[:n]))

    reuse = bytearray(REBLOCK)
    _write_entries(_ordered(entries, sort), _Blocks(emit, lambda: reuse), clamp_mtime)


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A stored layer: its compressed descriptor and its diff_id."""

    descriptor: Descriptor   # media type + digest/size of the *compressed* blob
    diff_id: Digest          # sha256 of the *uncompressed* tar (ImageConfig.rootfs.diff_ids)
    uncompressed_size: int


_STOP = object()
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005
SWITCH_INTERVAL = 0.001    # seconds; while a threaded write runs (see _fast_switching)


class _fast_switching:
    """Shortens the interpreter's GIL switch interval while a threaded layer write runs.

    The codec threads drop the GIL for every block they compress, hash or write, and then
    wait for it while the tar writer runs Python code: with the default 5 ms interval that
    wait, once per call, cost more than the compression itself (0.65 s of stage time for
    0.37 s of isal work on a 200 MB layer). Process-wide, so it is reference-counted across
    concurrent writers and restored by the last one.
    """

    def __enter__(self) -> None:
        global _switch_users, _switch_saved
        with _switch_lock:
            if _switch_users == 0:
                _switch_saved = sys.getswitchinterval()
                sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL))
            _switch_users += 1

    def __exit__(self, *exc: object) -> None:
        global _switch_users
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


class _Worker:
    """A thread applying ``fn`` to queued items in order. After a failure it keeps taking
    (and dropping) items so producers never block on it; ``after`` runs for every item
    either way (buffer recycling). ``put`` raises the worker's error."""

    def __init__(self, fn: Callable[[Any], object], name: str, *, maxsize: int = 0,
                 after: Callable[[Any], object] | None = None) -> None:
        self._fn = fn
        self._after = after
        self._q: queue.Queue[Any] = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            if self.error is None:
                try:
                    self._fn(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    self.error = exc
            if self._after is not None:
                self._after(item)

    def put(self, item: object) -> None:
        if self.error is not None:
            raise self.error
        self._q.put(item)

    def stop(self) -> None:
        self._q.put(_STOP)
        self._thread.join()


class _Sink:
    """The codec's output end. ``cut()`` makes it drop everything: a codec abandoned after a
    failure may still flush from its finalizer, and must not write into a closed (or reused)
    file descriptor."""

    __slots__ = ("_write",)

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write: Callable[[bytes], object] | None = write

    def write(self, data: bytes) -> int:
        if self._write is not None:
            self._write(data)
        return len(data)

    def cut(self) -> None:
        self._write = None


class _ThreadedCodec:
    """tar blocks → [thread 1: codec] → compressed chunks → [thread 2: store write + hash].

    isal, zstd, hashlib and os.write release the GIL, so the tar writer (the caller's thread:
    walking, headers, file reads, the diff_id hash) runs beside them. The codec gets the same
    whole blocks in the same order as inline; ``POOL`` buffers bound the memory in flight
    (the store queue holds at most 8 compressed chunks)."""

    def __init__(self, blob: Writable, codec: Codec) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._made = 0
        self._store = _Worker(blob.write, "pybuild-layer-store", maxsize=8)
        self._sink = _Sink(self._store.put)
        self._stream = block_compressor(self._sink, codec)
        self._codec = _Worker(self._compress, "pybuild-layer-codec",
                              after=lambda item: self._free.put(item[0]))

    def _compress(self, item: tuple[bytearray, int]) -> None:
        buf, n = item
        self._stream.write(buf if n == REBLOCK else memoryview(buf)[:n])

    def new_buffer(self) -> bytearray:
        for worker in (self._codec, self._store):
            if worker.error is not None:
                raise worker.error
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self._made < POOL:
            self._made += 1
            return bytearray(REBLOCK)
        return self._free.get()

    def emit(self, buf: bytearray, n: int) -> None:
        self._codec.put((buf, n))

    def close(self) -> None:
        """Finish the stream (the codec's trailer goes through the store thread too)."""
        self._codec.stop()
        try:
            if self._codec.error is not None:
                raise self._codec.error
            self._stream.close()
        except BaseException:
            self._sink.cut()
            raise
        finally:
            self._store.stop()
        if self._store.error is not None:
            raise self._store.error

    def abort(self) -> None:
        self._sink.cut()
        self._codec.stop()
        self._store.stop()


def write_layer(entries: Iterable[TarEntry], store: DirStore, codec: Codec = "gzip", *,
                clamp_mtime: int | None = None, sort: bool = True) -> LayerBlob:
    """Tar → compress → ingest in one streaming pass; returns both digests.

    Layers of ``THREADED_MIN`` bytes or more compress in their own threads (_ThreadedCodec);
    smaller ones inline. Both give the same bytes."""
    items = list(_ordered(entries, sort))
    total = sum(e.size for e in items if e.kind == "file")
    hasher = hashlib.sha256()
    count = 0
    with store.ingest() as blob:
        if total < THREADED_MIN:
            sink = _Sink(blob.write)
            stream = block_compressor(sink, codec)

            def inline(buf: bytearray, n: int) -> None:
                nonlocal count
                view = buf if n == REBLOCK else memoryview(buf)[:n]
                hasher.update(view)
                count += n
                stream.write(view)

            reuse = bytearray(REBLOCK)
            try:
                _write_entries(items, _Blocks(inline, lambda: reuse), clamp_mtime)
                stream.close()
            except BaseException:
                sink.cut()
                raise
        else:
            with _fast_switching():
                pipe = _ThreadedCodec(blob, codec)

                def threaded(buf: bytearray, n: int) -> None:
                    nonlocal count
                    hasher.update(buf if n == REBLOCK else memoryview(buf)[:n])
                    count += n
                    pipe.emit(buf, n)

                try:
                    _write_entries(items, _Blocks(threaded, pipe.new_buffer), clamp_mtime)
                except BaseException:
                    pipe.abort()
                    raise
                pipe.close()
    info = blob.descriptor_info
    desc = Descriptor(mt.layer_type(codec), info.digest, info.size)
    return LayerBlob(desc, Digest.from_hasher(hasher), count)
