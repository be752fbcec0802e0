"""DirStore: the local content store, an OCI image layout (DESIGN §2.6, C2) that skopeo reads as
``oci:<root>:<name>``: oci-layout, index.json (tags annotated ``org.opencontainers.image.ref.name``),
blobs/sha256/ (verified on write and read), ingest/; other layers own snapshots/, cache/, builds/...
Every blob write goes through ``ingest()``; index.json is replaced atomically under ``index.lock``;
writers share ``lock`` and gc takes it exclusively. Imports registry only."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry import mediatypes as mt
from registry.digest import CHUNK, Digest, VerifyingReader
from registry.errors import (
    BlobNotFound,
    DigestMismatch,
    ImageNotFound,
    InvalidDigest,
    SizeMismatch,
    StoreBusy,
    StoreCorrupt,
)
from registry.model import Descriptor, canonical_json

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
MAX_JSON_BLOB = 4 << 20  # manifests and configs larger than this are refused when read whole

IndexUpdate = Callable[[list[Descriptor]], list[Descriptor]]
STALE_RESUMABLE_SECONDS = 7 * 24 * 3600  # resumable partial downloads older than this are swept

# Store locks held by the current thread: root -> "sh" | "ex". flock locks belong to an open
# file description, so a second flock on a new fd from the same thread would deadlock against
# its own exclusive lock; this table lets gc (exclusive) call index updates (shared) safely.
_HELD = threading.local()


def _token(nbytes: int) -> str:
    """Random hex for temporary names (secrets.token_hex without importing secrets: every
    pybuild command imports this module, so its imports are kept to what it always needs)."""
    return os.urandom(nbytes).hex()


def default_root() -> Path:
    """$PYBUILD_ROOT, else /var/lib/pybuild for root, else $XDG_DATA_HOME/pybuild."""
    env = os.environ.get("PYBUILD_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pybuild")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "pybuild"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """A new file that replaces ``path`` when the block ends normally (temp ``.NAME.<hex>.tmp``
    + rename; ``durable`` adds the fsyncs of the file and of the directory). On an exception
    the temp file is removed and ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.{_token(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (atomic_file)."""
    with atomic_file(path, mode=mode, durable=durable) as f:
        f.write(data)


@contextlib.contextmanager
def flocked(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[int]:
    """Hold an flock on ``path`` (created if missing) for the duration of the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not blocking:
            op |= fcntl.LOCK_NB
        fcntl.flock(fd, op)
        yield fd
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob's digest and size."""

    digest: Digest
    size: int


class BlobWriter:
    """The writable end of an ingest: hashes what is written; ``offset`` is where it resumes."""

    def __init__(self, fd: int, hasher: hashlib._Hash, offset: int) -> None:
        self._fd = fd
        self._hasher = hasher
        self.offset = offset          # bytes already present when the ingest was opened
        self.written = offset
        self.info: BlobInfo | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        total = len(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hasher.update(data)
        self.written += total
        return total

    def restart(self) -> None:
        """Drop any resumed bytes and start over (the source could not honour a Range)."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hasher = hashlib.sha256()
        self.offset = self.written = 0

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Writes go straight to the fd; nothing is buffered here."""

    @property
    def digest(self) -> Digest:
        return Digest.from_hasher(self._hasher)

    @property
    def descriptor_info(self) -> BlobInfo:
        if self.info is None:
            raise RuntimeError("ingest not committed yet")
        return self.info


class DirStore:
    """A content-addressed blob store plus named refs, laid out as an OCI image layout."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).absolute()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        self.index_path = self.root / "index.json"
        if create:
            self._ensure()
        elif not (self.root / "oci-layout").is_file():
            raise StoreCorrupt(str(self.root), "not an OCI image layout (no oci-layout file)")

    # -- layout -------------------------------------------------------------------------
    def _ensure(self) -> None:
        if (self.root / "oci-layout").is_file() and self.index_path.is_file():
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            self.ingest_dir.mkdir(exist_ok=True)
            return
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(exist_ok=True)
        with flocked(self.root / "index.lock"):
            if not (self.root / "oci-layout").is_file():
                atomic_write(self.root / "oci-layout", canonical_json(LAYOUT_VERSION))
            if not self.index_path.is_file():
                atomic_write(self.index_path, self._render_index([]))

    def subdir(self, name: str) -> Path:
        """A directory under the root owned by another layer (snapshots, cache, containers)."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def lock(self, *, shared: bool = False, blocking: bool = True,
             timeout: float | None = None) -> Iterator[int]:
        """The store lock: writers hold it shared, gc exclusively.

        Every blob ingest and index update takes it shared by itself; a multi-step writer
        (ingest layers, then config, manifest, tag) holds it shared around all the steps so gc
        cannot collect its not-yet-referenced blobs in between. Re-entrant within a thread
        (a shared request inside an exclusive hold nests; upgrading shared to exclusive is a
        RuntimeError). Raises StoreBusy when ``blocking=False`` or ``timeout`` expires.
        """
        held: dict[str, str] = _HELD.__dict__.setdefault("held", {})
        key = str(self.root)
        mode = held.get(key)
        if mode is not None:
            if mode == "sh" and not shared:
                raise RuntimeError("store lock: cannot upgrade a shared hold to exclusive")
            yield -1  # nested: the outer hold covers it
            return
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            if blocking and timeout is None:
                fcntl.flock(fd, op)
            else:
                deadline = time.monotonic() + (timeout or 0.0)
                while True:
                    try:
                        fcntl.flock(fd, op | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not blocking or time.monotonic() >= deadline:
                            raise StoreBusy(str(self.root), "shared" if shared else "exclusive") from None
                        time.sleep(0.05)
            held[key] = "sh" if shared else "ex"
            try:
                yield fd
            finally:
                del held[key]
        finally:
            os.close(fd)

    def writing(self) -> contextlib.AbstractContextManager[int]:
        """Hold the store lock shared for a multi-step write (see ``lock``)."""
        return self.lock(shared=True)

    # -- blobs --------------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.hex

    def has(self, digest: Digest) -> bool:
        try:
            st = os.lstat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode)

    def size(self, digest: Digest) -> int:
        try:
            st = os.lstat(self.blob_path(digest))
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        return st.st_size

    def open(self, digest: Digest) -> VerifyingReader:
        """Open a blob for reading; the reader raises DigestMismatch at EOF if it was altered."""
        path = self.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreCorrupt(str(path), "blob is a symlink") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise StoreCorrupt(str(path), "blob is not a regular file")
        raw: BinaryIO = os.fdopen(fd, "rb", buffering=0)
        return VerifyingReader(raw, digest, st.st_size)

    def read(self, digest: Digest, *, max_size: int = MAX_JSON_BLOB) -> bytes:
        """Read a small blob whole, verified."""
        size = self.size(digest)
        if size > max_size:
            raise StoreCorrupt(str(self.blob_path(digest)), f"blob is {size} bytes, limit {max_size}")
        with self.open(digest) as f:
            data = f.read()
            f.verify_rest()
        return data

    @contextlib.contextmanager
    def ingest(self, *, expected: Digest | None = None, size: int | None = None,
               resume_key: str | None = None) -> Iterator[BlobWriter]:
        """Write a blob atomically. The block commits a verified blob or leaves nothing behind.

        With ``resume_key`` a failed ingest keeps its partial bytes under that key, and the
        next ingest with the same key starts at ``writer.offset`` (the pull resume path).
        """
        if resume_key and ("/" in resume_key or resume_key.startswith(".")):
            raise ValueError(f"bad resume key {resume_key!r}")
        with self.lock(shared=True):
            yield from self._ingest(expected, size, resume_key)

    def _ingest(self, expected: Digest | None, size: int | None,
                resume_key: str | None) -> Iterator[BlobWriter]:
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        name = f"k-{resume_key}" if resume_key else f"t-{_token(12)}"
        path = self.ingest_dir / name
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        if not resume_key:
            flags |= os.O_EXCL
        fd = os.open(path, flags, 0o644)
        committed = False
        try:
            # Two processes resuming the same key must not interleave their bytes.
            fcntl.flock(fd, fcntl.LOCK_EX)
            hasher = hashlib.sha256()
            offset = 0
            if resume_key:
                st = os.fstat(fd)
                if size is not None and st.st_size > size:
                    os.ftruncate(fd, 0)
                else:
                    while True:
                        chunk = os.read(fd, CHUNK)
                        if not chunk:
                            break
                        hasher.update(chunk)
                        offset += len(chunk)
            os.lseek(fd, offset, os.SEEK_SET)
            writer = BlobWriter(fd, hasher, offset)
            yield writer
            digest = writer.digest
            if size is not None and writer.written != size:
                os.ftruncate(fd, 0)
                raise SizeMismatch(str(expected or digest), size, writer.written)
            if expected is not None and digest != expected:
                os.ftruncate(fd, 0)
                raise DigestMismatch(str(expected), str(digest))
            os.fsync(fd)
            target = self.blob_path(digest)
            if self.has(digest):
                path.unlink()
            else:
                path.replace(target)
                fsync_dir(self.blobs_dir)
            committed = True
            writer.info = BlobInfo(digest, writer.written)
        finally:
            os.close(fd)
            if not committed and not resume_key:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            elif not committed and resume_key:
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_size == 0:
                        path.unlink()

    def put(self, data: bytes, media_type: str, *, annotations: dict[str, str] | None = None) -> Descriptor:
        """Store a small blob (manifest, config) and return its descriptor. Idempotent."""
        digest = Digest.of(data)
        if not self.has(digest):
            with self.ingest(expected=digest, size=len(data)) as w:
                w.write(data)
        return Descriptor(media_type, digest, len(data), annotations or {})

    def delete(self, digest: Digest) -> None:
        """Remove a blob; idempotent (absent afterwards)."""
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(digest).unlink()

    def walk(self) -> Iterator[Digest]:
        if not self.blobs_dir.is_dir():
            return
        for entry in os.scandir(self.blobs_dir):
            try:
                yield Digest.parse("sha256:" + entry.name)
            except InvalidDigest:
                continue

    # -- refs (index.json) ---------------------------------------------------------------
    @staticmethod
    def _render_index(manifests: list[Descriptor]) -> bytes:
        return canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                               "manifests": [d.to_dict() for d in manifests]})

    def entries(self) -> list[Descriptor]:
        """Every descriptor in index.json, in file order (tagged ones carry REF_NAME)."""
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
            return [Descriptor.from_dict(d) for d in doc.get("manifests") or ()]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupt(str(self.index_path), f"unreadable index.json ({exc})") from None

    def refs(self) -> list[tuple[str, Descriptor]]:
        return [(d.annotations[REF_NAME], d) for d in self.entries() if REF_NAME in d.annotations]

    def resolve(self, name: str) -> Descriptor:
        """The descriptor tagged ``name`` (an exact, already-normalized reference string)."""
        for ref, desc in self.refs():
            if ref == name:
                return desc
        raise ImageNotFound(name)

    def update_index(self, fn: IndexUpdate) -> None:
        """Read-modify-write index.json under ``index.lock``; ``fn`` returns the new list."""
        with self.lock(shared=True), flocked(self.root / "index.lock"):
            new = fn(self.entries())
            atomic_write(self.index_path, self._render_index(new))

    def tag(self, name: str, desc: Descriptor, *, keep_dangling: bool = True) -> None:
        """Point ``name`` at ``desc`` (replacing any previous target). The target must be stored.

        As with docker, an image that loses its last name this way stays listed as an untagged
        (``<none>``) entry until ``image prune`` (``keep_dangling=False`` drops it instead).
        """
        tagged = desc.with_annotations({**desc.annotations, REF_NAME: name})

        def update(entries: list[Descriptor]) -> list[Descriptor]:
            previous = [d for d in entries if d.annotations.get(REF_NAME) == name]
            out = [d for d in entries if d.annotations.get(REF_NAME) != name]
            # A dangling (untagged) entry for the same manifest becomes this tag.
            out = [d for d in out if REF_NAME in d.annotations or d.digest != desc.digest]
            out.append(tagged)
            if keep_dangling:
                for old in previous:
                    if all(d.digest != old.digest for d in out):
                        plain = {k: v for k, v in old.annotations.items() if k != REF_NAME}
                        out.append(old.with_annotations(plain))
            return out

        # Held across the check and the write so gc cannot collect the target in between.
        with self.lock(shared=True):
            if not self.has(desc.digest):
                raise BlobNotFound(desc.digest)
            self.update_index(update)

    def untag(self, name: str) -> Descriptor:
        """Remove tag ``name``; returns what it pointed to. ImageNotFound if absent."""
        found: list[Descriptor] = []

        def update(entries: list[Descriptor]) -> list[Descriptor]:
            keep = []
            for d in entries:
                if d.annotations.get(REF_NAME) == name:
                    found.append(d)
                else:
                    keep.append(d)
            return keep

        self.update_index(update)
        if not found:
            raise ImageNotFound(name)
        return found[0]

    def add_untagged(self, desc: Descriptor) -> None:
        """Record an image with no name (docker's <none>:<none>), unless it is already present."""

        def update(entries: list[Descriptor]) -> list[Descriptor]:
            if any(d.digest == desc.digest for d in entries):
                return entries
            plain = {k: v for k, v in desc.annotations.items() if k != REF_NAME}
            return [*entries, desc.with_annotations(plain)]

        with self.lock(shared=True):
            if not self.has(desc.digest):
                raise BlobNotFound(desc.digest)
            self.update_index(update)

    def remove_entries(self, digests: Iterable[Digest]) -> None:
        gone = set(digests)
        self.update_index(lambda entries: [d for d in entries if d.digest not in gone])

    def sweep_ingest(self, *, resumable_max_age: float = STALE_RESUMABLE_SECONDS) -> int:
        """Delete abandoned temporary ingests and spool directories (``t-*``), resumable
        partial blobs (``k-*``) older than ``resumable_max_age`` seconds, and temp files a
        killed atomic write left in the root. Caller holds the exclusive lock (gc does)."""
        count = 0
        now = time.time()
        if self.ingest_dir.is_dir():
            for entry in os.scandir(self.ingest_dir):
                path = Path(entry.path)
                try:
                    if entry.name.startswith("t-"):
                        if entry.is_dir(follow_symlinks=False):
                            import shutil

                            shutil.rmtree(path)
                        else:
                            path.unlink()
                        count += 1
                    elif entry.name.startswith("k-") and \
                            now - entry.stat(follow_symlinks=False).st_mtime > resumable_max_age:
                        path.unlink()
                        count += 1
                except FileNotFoundError:
                    continue
        for entry in os.scandir(self.root):
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    Path(entry.path).unlink()
                    count += 1
        return count

