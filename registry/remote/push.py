"""Push: an image (or index) from the store -> missing blobs uploaded in parallel -> manifests, children
before their index, as the stored bytes. Per blob: HEAD, else a cross-repo mount (blob-info cache),
else POST+PUT or PATCH chunks (--chunk-size, OCI-Chunk-Min-Length, a 413), resuming a broken upload.
Blobs stream from the store, verified in the pass that sends them: the last block leaves only after
the digest matched. Imports registry (requests through the client)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from registry import mediatypes as mt
from registry.digest import Digest
from registry.errors import ImageNotFound, InvalidReference, StoreCorrupt
from registry.model import Descriptor, Index, Manifest
from registry.reference import Reference, parse_reference
from registry.remote.blobinfo import BlobInfoCache
from registry.remote.client import Remote, RepositoryClient
from registry.remote.config import RegistriesConfig
from registry.remote.errors import RegistryHTTPError, RemoteError, TransportError, UploadError
from registry.remote.progress import Event, Progress, ignore
from registry.remote.transport import SEND_BLOCK
from registry.store import REF_NAME, DirStore

if TYPE_CHECKING:
    import requests

log = logging.getLogger("pybuild." + __name__)

DEFAULT_CHUNK = 16 << 20
MIN_CHUNK = 64 << 10
UPLOAD_ATTEMPTS = 4


class _Verifier:
    """The sha256 of one store blob, computed from the bytes the upload bodies read (in order,
    whatever the chunking), so a blob is checked in the same pass that sends it. A body that
    starts elsewhere (a resumed or retried chunk) first hashes, or re-hashes, the bytes before
    it from the file."""

    def __init__(self, path: str, digest: Digest, size: int) -> None:
        self.path, self.digest, self.size = path, digest, size
        self.hasher = hashlib.sha256()
        self.done = 0                      # bytes hashed so far (a prefix of the blob)
        self.lock = threading.Lock()

    def seek(self, fd: int, start: int) -> None:
        """Make the hash cover exactly [0, start) (caller holds the lock)."""
        if start < self.done:
            self.hasher, self.done = hashlib.sha256(), 0
        while self.done < start:
            data = os.pread(fd, min(SEND_BLOCK, start - self.done), self.done)
            if not data:
                break
            self.hasher.update(data)
            self.done += len(data)

    def feed(self, data: bytes) -> None:
        self.hasher.update(data)
        self.done += len(data)
        if self.done == self.size and self.hasher.hexdigest() != self.digest.hex:
            raise StoreCorrupt(
                self.path, f"blob {self.digest} has digest sha256:{self.hasher.hexdigest()}; not pushed"
            )


class _Slice:
    """The body of one upload request: [start, start+length) of a store blob, read in large
    blocks straight from the file and verified on the way: the blob's last block is handed
    to the socket only after the whole blob matched its digest."""

    def __init__(
        self,
        verifier: _Verifier,
        start: int,
        length: int,
        on_read: Progress | None = None,
    ) -> None:
        self._fd = os.open(verifier.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._v = verifier
        self._pos, self._left, self._length = start, length, length
        self._on_read = on_read
        self._locked = False
        verifier.lock.acquire()   # one body of a blob at a time feeds its hash
        self._locked = True
        try:
            verifier.seek(self._fd, start)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = os.pread(self._fd, want, self._pos)
        if not data:
            raise StoreCorrupt(self._v.path, f"blob {self._v.digest} is shorter than {self._v.size} bytes")
        if self._v.done == self._pos:
            self._v.feed(data)     # raises before the last block leaves if the blob is corrupt
        self._left -= len(data)
        self._pos += len(data)
        if self._on_read is not None:
            self._on_read(Event("progress", str(self._v.digest), self._v.size, self._pos))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(SEND_BLOCK):
            yield chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._locked:
            self._locked = False
            self._v.lock.release()


@dataclass(frozen=True)
class PushResult:
    """What a push did (the CLI prints parts of it)."""

    digest: Digest
    dest: str
    media_type: str
    size: int
    uploaded: int = 0
    mounted: int = 0
    existed: int = 0


class Pusher:
    def __init__(
        self,
        store: DirStore,
        remote: Remote,
        *,
        jobs: int = 4,
        chunk_size: int | None = None,
        progress: Progress = ignore,
    ) -> None:
        self.store = store
        self.remote = remote
        self.jobs = max(1, jobs)
        self.chunk_size = chunk_size
        self.progress = progress
        self.blobinfo = BlobInfoCache(store)
        self.counts = {"uploaded": 0, "mounted": 0, "existed": 0}
        self._verifiers: dict[Digest, _Verifier] = {}
        self._vlock = threading.Lock()

    # -- blobs -----------------------------------------------------------------------------
    def _body(self, digest: Digest, start: int, length: int, total: int) -> Callable[[], _Slice]:
        if not self.store.has(digest):
            raise ImageNotFound(f"blob {digest}", hint="the local image is incomplete; pull or rebuild it")
        with self._vlock:
            verifier = self._verifiers.get(digest)
            if verifier is None:
                path = str(self.store.blob_path(digest))
                verifier = self._verifiers[digest] = _Verifier(path, digest, total)
        return lambda: _Slice(verifier, start, length, self.progress)

    def push_blob(self, repo: RepositoryClient, desc: Descriptor) -> str:
        digest, size = desc.digest, desc.size
        self.progress(Event("start", str(digest), size, 0))
        have = repo.head_blob(digest)
        if have is not None and (have < 0 or have == size):
            self.progress(Event("skip", str(digest), size, size, "exists"))
            self.counts["existed"] += 1
            return "exists"
        host = repo.registry.host
        location: str | None = None
        headers: dict[str, str] = {}
        for source in self.blobinfo.candidates(digest, host):
            if source == repo.name:
                continue
            try:
                status, location, headers = repo.start_upload(mount=digest, from_repo=source)
            except RegistryHTTPError as exc:
                log.debug("mount of %s from %s failed: %s", digest, source, exc)
                continue
            if status == 201:
                self.progress(Event("done", str(digest), size, size, f"mounted from {source}"))
                self.counts["mounted"] += 1
                return "mounted"
            break  # 202: the registry opened a normal upload session instead; use it
        self._upload(repo, desc, location, headers)
        self.counts["uploaded"] += 1
        self.progress(Event("done", str(digest), size, size, "pushed"))
        return "pushed"

    def _upload(
        self, repo: RepositoryClient, desc: Descriptor, location: str | None, headers: dict[str, str]
    ) -> None:
        digest, size = desc.digest, desc.size
        chunk = self.chunk_size
        for attempt in range(UPLOAD_ATTEMPTS):
            if location is None:
                _, location, headers = repo.start_upload()
            min_len = _int(headers.get("OCI-Chunk-Min-Length"))
            if min_len:
                chunk = max(chunk or DEFAULT_CHUNK, min_len)
            try:
                if chunk and size > 0:
                    self._chunked(repo, desc, location, chunk, min_len or 0)
                else:
                    resp = repo.finish_upload(location, digest, self._body(digest, 0, size, size), size)
                    with _released(resp):
                        if resp.status_code == 413:
                            # too large for one request: chunks, in a fresh session
                            chunk = min(DEFAULT_CHUNK, max(MIN_CHUNK, size // 4))
                            location = None
                            continue
                        if resp.status_code not in (201, 204):
                            raise repo.fail(resp, f"upload blob {digest} to {repo}")
                return
            except TransportError as exc:
                if attempt == UPLOAD_ATTEMPTS - 1 or location is None:
                    raise
                log.info("upload of %s interrupted (%s); checking the session", digest, exc)
                self.progress(Event("retry", str(digest), size, 0, str(exc)))
                # A broken upload: resume from the session's Range with PATCH, else restart.
                try:
                    location, received = repo.upload_status(location)
                except (RegistryHTTPError, TransportError):
                    location = None
                    continue
                if not received:
                    continue
                try:
                    self._chunked(repo, desc, location, chunk or DEFAULT_CHUNK, min_len or 0, start=received)
                    return
                except TransportError:
                    location = None

    def _chunked(
        self,
        repo: RepositoryClient,
        desc: Descriptor,
        location: str,
        chunk: int,
        min_len: int,
        *,
        start: int = 0,
    ) -> None:
        digest, size = desc.digest, desc.size
        offset = start
        recoveries = 0
        while offset < size:
            n = min(chunk, size - offset)
            try:
                resp = repo.patch(location, self._body(digest, offset, n, size), offset, n)
            except TransportError:
                recoveries += 1
                if recoveries > UPLOAD_ATTEMPTS:
                    raise
                location, offset = repo.upload_status(location)
                continue
            with _released(resp):
                if resp.status_code in (202, 204):
                    location = _location(resp, location)
                    rng = resp.headers.get("Range")
                    offset = _range_end(rng) if rng else offset + n
                    continue
                if resp.status_code == 416:
                    # Our idea of the offset is wrong: ask the session where it really is.
                    recoveries += 1
                    if recoveries > UPLOAD_ATTEMPTS:
                        raise repo.fail(resp, f"upload blob {digest} to {repo}")
                    resp.close()
                    location, offset = repo.upload_status(location)
                    continue
                if resp.status_code == 413 and chunk > max(MIN_CHUNK, min_len):
                    chunk = max(MIN_CHUNK, min_len, chunk // 2)
                    continue
                raise repo.fail(resp, f"upload chunk of {digest} to {repo}")
        resp = repo.finish_upload(location, digest)
        with _released(resp):
            if resp.status_code not in (201, 204):
                raise repo.fail(resp, f"finish upload of {digest} to {repo}")

    def _push_blobs(self, repo: RepositoryClient, blobs: list[Descriptor]) -> None:
        unique = list({d.digest: d for d in blobs}.values())
        if self.jobs == 1 or len(unique) <= 1:
            for d in unique:
                self.push_blob(repo, d)
            return
        with ThreadPoolExecutor(max_workers=min(self.jobs, len(unique)), thread_name_prefix="push") as pool:
            futures = [pool.submit(self.push_blob, repo, d) for d in unique]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f in done:
                    f.result()
        for f in futures:
            f.result()

    # -- manifests -------------------------------------------------------------------------
    def push_manifest_tree(self, repo: RepositoryClient, desc: Descriptor, reference: str | None) -> Digest:
        raw = self.store.read(desc.digest)
        mtype = desc.media_type
        if mt.is_index(mtype):
            index = Index.from_json(raw, media_type=mtype)
            for child in index.manifests:
                if not self.store.has(child.digest):
                    raise RemoteError(
                        f"push {repo}: manifest {child.digest} of the index is not in the local store",
                        hint="pull it with --all-platforms first, or push one platform's manifest",
                    )
                self.push_manifest_tree(repo, child, None)
        else:
            manifest = Manifest.from_json(raw, media_type=mtype)
            self._push_blobs(repo, [manifest.config, *manifest.layers])
        digest = repo.put_manifest(reference or str(desc.digest), raw, mtype)
        self.progress(Event("manifest", str(digest), len(raw), len(raw), reference or ""))
        return digest

    def push(self, desc: Descriptor, dest: Reference) -> PushResult:
        host = self.remote.config.endpoints(dest, for_push=True)[-1].host
        repo = self.remote.registry(host).repository(dest.path, push=True)
        with self.store.lock(shared=True):
            reference = dest.tag if dest.tag else None
            digest = self.push_manifest_tree(repo, desc, reference)
            if dest.digest is not None and dest.digest != digest:
                raise UploadError(f"push {dest}: the image has digest {digest}, not {dest.digest}")
        self._record(repo, desc)
        return PushResult(
            digest,
            str(dest),
            desc.media_type,
            desc.size,
            self.counts["uploaded"],
            self.counts["mounted"],
            self.counts["existed"],
        )

    def _record(self, repo: RepositoryClient, desc: Descriptor) -> None:
        digests: list[Digest] = []
        try:
            raw = self.store.read(desc.digest)
            if mt.is_index(desc.media_type):
                for child in Index.from_json(raw, media_type=desc.media_type).manifests:
                    m = Manifest.from_json(self.store.read(child.digest), media_type=child.media_type)
                    digests += [m.config.digest, *(x.digest for x in m.layers)]
            else:
                m = Manifest.from_json(raw, media_type=desc.media_type)
                digests += [m.config.digest, *(x.digest for x in m.layers)]
        except (OSError, RemoteError):
            return
        self.blobinfo.record(digests, repo.registry.host, repo.name)
        self.blobinfo.flush()


@contextlib.contextmanager
def _released(resp: Any) -> Iterator[Any]:
    """Like contextlib.closing, but a successful answer's (small) body is read first so the
    connection is reused (an error answer is read by repo.fail)."""
    try:
        yield resp
    finally:
        if resp.status_code < 300:
            with contextlib.suppress(Exception):
                resp.raw.read(64 * 1024, decode_content=False)
        resp.close()


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _range_end(value: str) -> int:
    from registry.remote.client import range_end

    return range_end(value)


def _location(resp: requests.Response, current: str) -> str:
    from urllib.parse import urljoin

    loc = resp.headers.get("Location")
    return urljoin(resp.url, loc) if loc else current


def resolve_local(store: DirStore, text: str) -> tuple[str, Descriptor]:
    """A stored image by name (normalized), digest or ID prefix, the way every verb resolves
    (registry.image); returns (its name or digest, the tagged descriptor: manifest or index)."""
    if not text.startswith("sha256:") and not (len(text) == 64 and _is_hex(text)):
        # The common case, a name tagged exactly so: what registry.image.resolve answers for
        # it (the first index entry with that name), without importing it.
        try:
            ref = parse_reference(text.strip())
        except InvalidReference:
            ref = None
        if ref is not None and ref.digest is None:
            with contextlib.suppress(ImageNotFound):
                return str(ref), store.resolve(str(ref))
    try:
        from registry.image import resolve
    except ImportError:  # pragma: no cover - the foundation module is part of the tree
        return _resolve_fallback(store, text)
    res = resolve(store, text)
    image = res.image
    name = res.name if res.kind == "name" and res.name else (image.names[0] if image.names else "")
    return name or str(image.target.digest), image.target


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _resolve_fallback(store: DirStore, text: str) -> tuple[str, Descriptor]:
    try:
        ref = parse_reference(text)
        name = str(ref) if ref.digest is None or ref.tag else f"{ref.name}@{ref.digest}"
        with contextlib.suppress(ImageNotFound):
            return name, store.resolve(name)
    except InvalidReference:
        pass
    want = text.removeprefix("sha256:")
    if len(want) >= 4 and all(c in "0123456789abcdef" for c in want):
        for d in store.entries():
            if d.digest.hex.startswith(want):
                return d.annotations.get(REF_NAME, str(d.digest)), d
            with contextlib.suppress(Exception):
                m = Manifest.from_json(store.read(d.digest), media_type=d.media_type)
                if m.config.digest.hex.startswith(want):
                    return d.annotations.get(REF_NAME, str(d.digest)), d
    raise ImageNotFound(text, hint="see `pybuild images`")


class PushOptions(TypedDict, total=False):
    """push_image's keyword options (push takes the same)."""

    jobs: int
    chunk_size: int | None
    config: RegistriesConfig | None
    remote: Remote | None
    progress: Progress


def push(store: DirStore, src: str, dest: str | Reference | None = None,
         **options: Unpack[PushOptions]) -> Digest:
    """Push the stored image ``src`` to ``dest`` (default: ``src`` itself); returns the manifest digest.

    Raises ImageNotFound for an unknown ``src``, RemoteError subclasses for registry failures.
    """
    return push_image(store, src, dest, **options).digest


def push_image(
    store: DirStore,
    src: str,
    dest: str | Reference | None = None,
    *,
    jobs: int = 4,
    chunk_size: int | None = None,
    config: RegistriesConfig | None = None,
    remote: Remote | None = None,
    progress: Progress = ignore,
) -> PushResult:
    name, desc = resolve_local(store, src)
    if dest is None:
        try:
            target = parse_reference(name)
        except InvalidReference:
            raise InvalidReference(
                src, "an image without a name needs a destination: pybuild push IMAGE REGISTRY/REPO:TAG"
            ) from None
    else:
        target = parse_reference(dest) if isinstance(dest, str) else dest
    plain = Descriptor(desc.media_type, desc.digest, desc.size)
    own = remote is None
    rem = remote or Remote(config, notify=lambda msg: progress(Event("warning", note=msg)))
    try:
        return Pusher(store, rem, jobs=jobs, chunk_size=chunk_size, progress=progress).push(plain, target)
    finally:
        if own:
            rem.close()
