"""Pull: reference -> manifest (or index -> platform manifest) -> config and layers into the store.
Every blob is verified (size, digest) while it streams into ``store.ingest``; an interrupted one
resumes with Range (also in a later process); stored blobs are skipped; the exact manifest bytes are
stored and the tag written last, so a tag always names a complete image. Mirrors first, then the
origin. Imports registry and urllib3 (requests through the client)."""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, Unpack

import urllib3

from registry import mediatypes as mt
from registry.digest import CHUNK, Digest
from registry.errors import DigestMismatch, ImageNotFound, InvalidManifest, RegistryError, SizeMismatch
from registry.imagebuild import host_arch
from registry.model import Descriptor, ImageConfig, Index, Manifest, Platform, sniff_media_type
from registry.reference import Reference, parse_reference
from registry.remote.blobinfo import BlobInfoCache
from registry.remote.client import MAX_MANIFEST, Remote, RepositoryClient
from registry.remote.config import Endpoint, RegistriesConfig
from registry.remote.errors import (
    BlobVerifyError,
    ManifestError,
    NotFound,
    PlatformNotFound,
    RemoteError,
    TransportError,
    Unauthorized,
)
from registry.remote.progress import Event, Progress, ignore
from registry.store import BlobWriter, DirStore

if TYPE_CHECKING:
    import requests

log = logging.getLogger("pybuild." + __name__)

ANNOTATION_REPO_DIGEST = "io.pybuild.repo.digest"  # name@digest the registry served (index for multi-arch)
ANNOTATION_INDEX = "io.pybuild.index.digest"  # the index the platform manifest was picked from
MAX_INDEX_DEPTH = 4
RESUME_ATTEMPTS = 6
PullPolicy = str  # "missing" | "always" | "never" | "newer"


class _Interrupted(Exception):
    """The blob stream ended early; its bytes so far are kept for a Range resume."""


@dataclass(frozen=True)
class PullResult:
    """What a pull did (the CLI prints parts of it)."""

    descriptor: Descriptor  # the image manifest, as tagged in the store
    name: str  # the tag written ("docker.io/library/busybox:latest")
    repo_digest: Digest  # what the registry served for the ref (index digest if any)
    endpoint: str  # where it came from (a mirror or the origin)
    downloaded: int = 0  # bytes fetched
    blobs_fetched: int = 0
    blobs_skipped: int = 0
    index: Descriptor | None = None
    up_to_date: bool = False


@dataclass
class _Stats:
    """Byte and blob counts of one pull (updated from worker threads)."""

    downloaded: int = 0
    fetched: int = 0
    skipped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self.lock:
            self.downloaded += n


def default_platform() -> Platform:
    return Platform("linux", host_arch())


def _norm_variant(arch: str, variant: str | None) -> str | None:
    if variant:
        return variant
    return {"arm64": "v8", "arm": "v7"}.get(arch)


def pick_platform(index: Index, want: Platform) -> Descriptor:
    """The index entry for ``want`` (variant defaults as containerd: arm64→v8, arm→v7)."""
    wv = _norm_variant(want.architecture, want.variant)
    for d in index.manifests:
        p = d.platform
        if p is None or p.os != want.os or p.architecture != want.architecture:
            continue
        if wv is not None and _norm_variant(p.architecture, p.variant) != wv:
            continue
        if d.media_type and not (mt.is_manifest(d.media_type) or mt.is_index(d.media_type)):
            continue
        return d
    have = sorted(
        {str(d.platform) for d in index.manifests if d.platform is not None and d.platform.os != "unknown"}
    )
    raise PlatformNotFound(
        f"no image for platform {want} in the index (it has: {', '.join(have) or 'none'})",
        hint="choose one with --platform",
    )


def tag_name(ref: Reference, digest: Digest | None = None) -> str:
    """The store tag for a pulled reference: 'domain/path:tag', or 'domain/path@digest'."""
    if ref.digest is not None:
        return f"{ref.name}@{ref.digest}"
    if digest is not None and ref.tag is None:
        return f"{ref.name}@{digest}"
    return str(ref)


class Puller:
    def __init__(
        self,
        store: DirStore,
        remote: Remote,
        *,
        platform: Platform | None = None,
        jobs: int = 4,
        progress: Progress = ignore,
        allow_foreign: bool = False,
        max_manifest: int = MAX_MANIFEST,
    ) -> None:
        self.store = store
        self.remote = remote
        self.platform = platform or default_platform()
        self.jobs = max(1, jobs)
        self.progress = progress
        self.allow_foreign = allow_foreign
        self.max_manifest = max_manifest
        self.blobinfo = BlobInfoCache(store)

    # -- manifests -----------------------------------------------------------------------
    def _fetch_manifest(
        self, repo: RepositoryClient, reference: str, expected: Digest | None
    ) -> tuple[bytes, str, Digest]:
        got = repo.get_manifest(reference, limit=self.max_manifest)
        if expected is not None and got.digest != expected:
            raise ManifestError(
                f"manifest {repo}@{expected}: the registry sent content with digest {got.digest}",
                hint="the registry or a proxy altered the manifest",
            )
        if (
            expected is None
            and got.header_digest
            and got.header_digest.startswith("sha256:")
            and got.header_digest != str(got.digest)
        ):
            raise ManifestError(
                f"manifest {repo}:{reference}: Docker-Content-Digest "
                f"{got.header_digest} does not match the content ({got.digest})"
            )
        try:
            mtype = sniff_media_type(got.raw, got.media_type or None)
        except InvalidManifest as exc:
            raise ManifestError(f"manifest {repo}:{reference}: {exc}") from None
        if mtype in mt.SCHEMA1 or got.media_type in mt.SCHEMA1:
            raise ManifestError(
                f"manifest {repo}:{reference}: docker schema 1 manifests are not supported "
                "(deprecated since 2015)",
                hint="re-push the image with a current docker, podman, skopeo or pybuild",
            )
        if not (mt.is_manifest(mtype) or mt.is_index(mtype)):
            raise ManifestError(f"manifest {repo}:{reference}: unsupported media type {mtype!r}")
        return got.raw, mtype, got.digest

    def _resolve(
        self, repo: RepositoryClient, ref: Reference
    ) -> tuple[bytes, str, Digest, list[tuple[bytes, str, Digest]]]:
        """(manifest raw, media type, digest, [index chain: raw, type, digest, outermost first])."""
        raw, mtype, digest = self._fetch_manifest(repo, ref.object, ref.digest)
        chain: list[tuple[bytes, str, Digest]] = []
        depth = 0
        while mt.is_index(mtype):
            depth += 1
            if depth > MAX_INDEX_DEPTH:
                raise ManifestError(f"{repo}: index nesting deeper than {MAX_INDEX_DEPTH}")
            try:
                index = Index.from_json(raw, media_type=mtype)
            except InvalidManifest as exc:
                raise ManifestError(f"index {repo}@{digest}: {exc}") from None
            chain.append((raw, mtype, digest))
            child = pick_platform(index, self.platform)
            raw, mtype, digest = self._fetch_manifest(repo, str(child.digest), child.digest)
            if child.size != len(raw):
                raise ManifestError(
                    f"manifest {repo}@{child.digest}: size {len(raw)}, index says {child.size}"
                )
        return raw, mtype, digest, chain

    # -- blobs -----------------------------------------------------------------------------
    def _fetch_blob(self, repo: RepositoryClient, desc: Descriptor, ref: str, stats: _Stats) -> None:
        digest = desc.digest
        if self.store.has(digest):
            stats.skipped += 1
            self.progress(Event("skip", str(digest), desc.size, desc.size, "exists"))
            return
        urls = [u for u in desc.urls if u.startswith(("https://", "http://"))]
        foreign_ok = bool(urls) and (
            self.allow_foreign or all(self.remote.config.foreign_allowed(u) for u in urls)
        )
        key = f"pull-{digest.hex}"
        restarted = False
        last: Exception | None = None
        self.progress(Event("start", str(digest), desc.size, 0))
        for attempt in range(RESUME_ATTEMPTS):
            resumed_from = 0
            try:
                with self.store.ingest(expected=digest, size=desc.size, resume_key=key) as w:
                    resumed_from = w.offset
                    if w.offset:
                        self.progress(
                            Event(
                                "retry" if attempt else "start",
                                str(digest),
                                desc.size,
                                w.offset,
                                f"resuming at {w.offset}",
                            )
                        )
                    if w.offset < desc.size:
                        self._stream(repo, desc, w, stats, urls if foreign_ok else None)
                stats.fetched += 1
                self.progress(Event("done", str(digest), desc.size, desc.size))
                return
            except _Interrupted as exc:
                last = exc
                self.progress(Event("retry", str(digest), desc.size, 0, str(exc)))
                continue
            except (DigestMismatch, SizeMismatch) as exc:
                if not restarted and resumed_from and isinstance(exc, DigestMismatch):
                    # the bytes kept from an earlier attempt may be the bad ones: once more from zero
                    restarted = True
                    continue
                raise BlobVerifyError(
                    ref,
                    str(digest),
                    f"{'digest' if isinstance(exc, DigestMismatch) else 'size'} mismatch ({exc})",
                ) from None
            except NotFound:
                if desc.urls and not foreign_ok:
                    raise RemoteError(
                        f"pull {ref}: foreign layer {digest} is not in the registry and its URLs "
                        "are not allowed",
                        hint="allow them with --allow-foreign-urls "
                        "(or allow_foreign_urls in registries.toml)",
                    ) from None
                raise
        raise TransportError("GET", f"{repo}/blobs/{digest}", f"download kept failing ({last})")

    def _stream(
        self, repo: RepositoryClient, desc: Descriptor, w: BlobWriter, stats: _Stats, urls: list[str] | None
    ) -> None:
        offset = w.offset
        targets: Sequence[str | None] = list(urls) if urls else [None]
        for i, url in enumerate(targets):
            try:
                with repo.open_blob(desc.digest, offset=offset, url=url) as resp:
                    if resp.status_code == 416:
                        w.restart()
                        raise _Interrupted("range not satisfiable; starting over")
                    if offset and resp.status_code == 200:
                        w.restart()  # the server ignored the Range: take the whole body
                    elif offset and resp.status_code == 206:
                        start = _content_range_start(resp.headers.get("Content-Range", ""))
                        if start != offset:
                            w.restart()
                            raise _Interrupted(f"server resumed at {start}, not {offset}")
                    self._copy(resp, desc, w, stats)
                return
            except NotFound:
                if i == len(targets) - 1:
                    raise

    def _copy(self, resp: requests.Response, desc: Descriptor, w: BlobWriter, stats: _Stats) -> None:
        raw = resp.raw
        # read1: whatever one recv gives; read(n) would buffer up to n bytes internally and lose
        # them when the connection breaks, and those bytes are what a resume keeps.
        read = getattr(raw, "read1", None) or raw.read
        size = desc.size
        report_every = max(CHUNK, size // 50)
        next_report = w.written + report_every
        try:
            while True:
                # identity: a CDN's Content-Encoding must not be undone, the digest is over raw bytes
                chunk = read(CHUNK, decode_content=False)
                if not chunk:
                    break
                if w.written + len(chunk) > size:
                    w.restart()
                    raise SizeMismatch(str(desc.digest), size, size + len(chunk))
                w.write(chunk)
                stats.add(len(chunk))
                if w.written >= next_report:
                    next_report = w.written + report_every
                    self.progress(Event("progress", str(desc.digest), size, w.written))
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise _Interrupted(
                f"connection broken after {w.written} of {size} bytes ({type(exc).__name__})"
            ) from None
        if w.written < size:
            raise _Interrupted(f"stream ended after {w.written} of {size} bytes")

    def _fetch_all(self, repo: RepositoryClient, blobs: list[Descriptor], ref: str, stats: _Stats) -> None:
        if self.jobs == 1 or len(blobs) <= 1:
            for d in blobs:
                self._fetch_blob(repo, d, ref, stats)
            return
        with ThreadPoolExecutor(max_workers=min(self.jobs, len(blobs)), thread_name_prefix="pull") as pool:
            futures = [pool.submit(self._fetch_blob, repo, d, ref, stats) for d in blobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f in done:
                    f.result()  # re-raises the first failure
        for f in futures:
            f.result()

    # -- whole pull ------------------------------------------------------------------------
    def pull(self, ref: Reference) -> PullResult:
        endpoints = self.remote.config.endpoints(ref)
        errors: list[str] = []
        for i, ep in enumerate(endpoints):
            last = i == len(endpoints) - 1
            try:
                return self._pull_from(ref, ep)
            except (ManifestError, BlobVerifyError):
                raise
            except RegistryError as exc:
                if last:
                    if errors and isinstance(exc, NotFound | TransportError | Unauthorized):
                        exc.args = (f"{exc.args[0]} (mirrors tried first: {'; '.join(errors)})",)
                    raise
                log.info("mirror %s failed: %s", ep.host, exc)
                errors.append(f"{ep.host}: {exc}")
                self.progress(Event("warning", note=f"mirror {ep.host} failed ({exc}); trying the next"))
        raise AssertionError("no endpoints")

    def _pull_from(self, ref: Reference, ep: Endpoint) -> PullResult:
        repo = self.remote.registry(ep.host).repository(ep.repository)
        self.progress(Event("resolve", note=f"{ref} from {ep}" if ep.mirror else str(ref)))
        raw, mtype, digest, chain = self._resolve(repo, ref)
        try:
            manifest = Manifest.from_json(raw, media_type=mtype)
        except InvalidManifest as exc:
            raise ManifestError(f"manifest {repo}@{digest}: {exc}") from None
        top_digest = chain[0][2] if chain else digest
        name = tag_name(ref, top_digest)
        repo_digest = Digest.parse(str(top_digest))
        # Up to date? (the same manifest already tagged with every blob present)
        stats = _Stats()
        blobs = [manifest.config, *manifest.layers]
        for d in blobs:
            if not (mt.is_layer(d.media_type) or d.media_type in mt.CONFIGS or not d.media_type):
                log.debug("unusual blob media type %s", d.media_type)
        with self.store.lock(shared=True):
            if manifest.config.size > MAX_MANIFEST:
                raise ManifestError(
                    f"image config {manifest.config.digest}: {manifest.config.size} bytes, "
                    f"over the {MAX_MANIFEST} limit"
                )
            self._fetch_all(repo, blobs, str(ref), stats)
            try:
                config = ImageConfig.from_json(self.store.read(manifest.config.digest))
            except InvalidManifest as exc:
                raise ManifestError(f"image config {manifest.config.digest}: {exc}") from None
            if len(config.diff_ids) != len(manifest.layers) and manifest.config.media_type in mt.CONFIGS:
                raise ManifestError(
                    f"image {ref}: {len(manifest.layers)} layers but "
                    f"{len(config.diff_ids)} diff_ids in the config"
                )
            index_desc: Descriptor | None = None
            for craw, ctype, _ in chain:
                d = self.store.put(craw, ctype)
                index_desc = index_desc or d
            mdesc = self.store.put(raw, mtype)
            previous = None
            with contextlib.suppress(ImageNotFound):
                previous = self.store.resolve(name)
            annotations = {ANNOTATION_REPO_DIGEST: f"{ref.name}@{repo_digest}"}
            if chain:
                annotations[ANNOTATION_INDEX] = str(chain[0][2])
            tagged = Descriptor(
                mtype, mdesc.digest, mdesc.size, annotations, platform=config.platform if config.os else None
            )
            self.store.tag(name, tagged)
        self.blobinfo.record([d.digest for d in blobs], ep.host, ep.repository)
        self.blobinfo.flush()
        self.progress(Event("manifest", str(repo_digest), note=name))
        return PullResult(
            tagged,
            name,
            repo_digest,
            str(ep),
            stats.downloaded,
            stats.fetched,
            stats.skipped,
            index_desc,
            up_to_date=previous is not None and previous.digest == mdesc.digest and stats.fetched == 0,
        )


def _content_range_start(value: str) -> int:
    # "bytes 100-199/200"
    value = value.strip().removeprefix("bytes").strip()
    start, _, _ = value.partition("-")
    try:
        return int(start)
    except ValueError:
        return -1


class PullOptions(TypedDict, total=False):
    """pull_image's keyword options (pull takes the same)."""

    platform: Platform | str | None
    jobs: int
    config: RegistriesConfig | None
    remote: Remote | None
    progress: Progress
    allow_foreign: bool


def pull(store: DirStore, ref: str | Reference, **options: Unpack[PullOptions]) -> Descriptor:
    """Pull ``ref`` into ``store`` and tag it; returns the image manifest descriptor.

    Raises RemoteError subclasses (NotFound, Unauthorized, TransportError, ManifestError,
    BlobVerifyError, PlatformNotFound). Idempotent: blobs already stored are not fetched again.
    """
    return pull_image(store, ref, **options).descriptor


def pull_image(
    store: DirStore,
    ref: str | Reference,
    *,
    platform: Platform | str | None = None,
    jobs: int = 4,
    config: RegistriesConfig | None = None,
    remote: Remote | None = None,
    progress: Progress = ignore,
    allow_foreign: bool = False,
) -> PullResult:
    """Like pull(), with the details the CLI prints (repo digest, bytes, skipped blobs)."""
    r = parse_reference(ref) if isinstance(ref, str) else ref
    plat = Platform.parse(platform) if isinstance(platform, str) else platform
    own = remote is None
    rem = remote or Remote(config, notify=lambda msg: progress(Event("warning", note=msg)))
    try:
        return Puller(
            store, rem, platform=plat, jobs=jobs, progress=progress, allow_foreign=allow_foreign
        ).pull(r)
    finally:
        if own:
            rem.close()


def ensure_image(
    store: DirStore,
    ref: str | Reference,
    *,
    policy: PullPolicy = "missing",
    platform: Platform | str | None = None,
    config: RegistriesConfig | None = None,
    remote: Remote | None = None,
    progress: Progress = ignore,
    jobs: int = 4,
) -> Descriptor:
    """The image for ``ref`` in the store, pulling it per ``policy`` (docker's --pull values):
    "missing" pulls only when the tag is absent, "always"/"newer" pull every time, "never"
    raises ImageNotFound when absent. Used by the builder's FROM and by `run --pull`.
    """
    r = parse_reference(ref) if isinstance(ref, str) else ref
    name = tag_name(r)
    if policy not in ("missing", "always", "never", "newer"):
        raise ValueError(f"unknown pull policy {policy!r}")
    if policy in ("missing", "never"):
        try:
            desc = store.resolve(name)
        except ImageNotFound:
            if policy == "never":
                raise ImageNotFound(name, hint=f"pull it first: pybuild pull {r.familiar()}") from None
        else:
            if store.has(desc.digest):
                return desc
    return pull(store, r, platform=platform, jobs=jobs, config=config, remote=remote, progress=progress)


def load_manifest(store: DirStore, desc: Descriptor) -> Manifest:
    return Manifest.from_json(store.read(desc.digest), media_type=desc.media_type)
