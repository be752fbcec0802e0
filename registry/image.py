"""Images in the local store as users name them: resolution as docker does it (full or short name,
``name@sha256:…``, an image ID or a unique prefix), ``StoreImage`` (the Image protocol of DESIGN C4),
platform choice from an index, and what ``images`` lists. Reads only small JSON blobs (manifests,
configs), never layers, so listing stays fast. Imports registry only."""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from registry import mediatypes as mt
from registry.compression import Codec, codec_of, decompressor
from registry.digest import Digest, VerifyingReader
from registry.errors import (
    AmbiguousImage,
    BlobNotFound,
    ImageInUse,
    ImageNotFound,
    InvalidManifest,
    InvalidReference,
    NoMatchingPlatform,
    RegistryError,
)
from registry.model import Descriptor, ImageConfig, Index, Manifest, Platform
from registry.reference import Reference, parse_reference
from registry.store import REF_NAME, DirStore

if TYPE_CHECKING:
    from datetime import datetime

# (platform and datetime are not imported here: `pybuild run` resolves an image on its start-up
# path; os.uname() is what platform.machine() reads, and only listings parse times)

_HEX_PREFIX = re.compile(r"^[a-f0-9]{1,64}$")
NONE = "<none>"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm",
         "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


# -- platforms ---------------------------------------------------------------------------
def default_platform() -> Platform:
    """The host's platform as image indexes spell it (linux/amd64, linux/arm64/v8, linux/arm/v7)."""
    machine = os.uname().machine
    arch = _ARCH.get(machine, machine)
    variant = {"arm64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine if arch == "arm" else arch)
    return Platform("linux", arch, variant)


def _norm(p: Platform) -> tuple[str, str, str]:
    variant = p.variant or ""
    if p.architecture == "arm64" and variant in ("", "v8"):
        variant = "v8"
    if p.architecture == "arm" and variant == "":
        variant = "v7"
    if p.architecture == "amd64" and variant == "v1":
        variant = ""
    return p.os, p.architecture, variant


def platform_matches(want: Platform, have: Platform | None) -> bool:
    """Does ``have`` (an index entry's platform) satisfy ``want``? A ``want`` without a
    variant accepts any variant; arm64 means v8 and arm means v7 when the variant is absent."""
    if have is None:
        return False
    w_os, w_arch, w_var = _norm(want)
    h_os, h_arch, h_var = _norm(have)
    if (w_os, w_arch) != (h_os, h_arch):
        return False
    return not want.variant or w_var == h_var


def _is_attestation(desc: Descriptor) -> bool:
    return (desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest"
            or (desc.platform is not None and desc.platform.os == "unknown"))


def select_manifest(index: Index, want: Platform | None = None, *,
                    present: Callable[[Digest], bool] | None = None,
                    what: str = "image index") -> Descriptor:
    """The entry of ``index`` for platform ``want`` (default: the host's).

    Prefers an exact variant match, then entries whose blob is ``present`` (locally stored),
    in index order. Attestation manifests never match. Raises NoMatchingPlatform listing
    what the index offers.
    """
    want = want or default_platform()
    candidates = [d for d in index.manifests
                  if (mt.is_manifest(d.media_type) or mt.is_index(d.media_type) or not d.media_type)
                  and not _is_attestation(d) and platform_matches(want, d.platform)]
    if not candidates:
        # A single-platform index without platform fields: take its only image.
        plain = [d for d in index.manifests if d.platform is None and not _is_attestation(d)]
        if len(plain) == 1 and len(index.manifests) == 1:
            return plain[0]
        available = sorted({str(d.platform) for d in index.manifests
                            if d.platform is not None and not _is_attestation(d)})
        raise NoMatchingPlatform(what, str(want), available)

    def rank(d: Descriptor) -> tuple[int, int]:
        exact = 0 if d.platform is not None and _norm(d.platform) == _norm(want) else 1
        local = 0 if present is None or present(d.digest) else 1
        return exact, local

    return min(candidates, key=rank)


# -- layers and images ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Layer:
    """One layer of a stored image: the compressed blob and its diff_id."""

    store: DirStore = field(repr=False)
    descriptor: Descriptor
    diff_id: Digest | None

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    def open_compressed(self) -> VerifyingReader:
        """The blob as stored; verifies its digest at EOF."""
        return self.store.open(self.descriptor.digest)

    def open_uncompressed(self) -> BinaryIO:
        """The uncompressed tar stream (the compressed digest is verified when read to EOF);
        closing it closes the blob too."""
        media = self.descriptor.media_type
        codec: Codec = codec_of(media) if mt.is_layer(media) else "gzip"
        raw = self.open_compressed()
        return cast(BinaryIO, _Closing(decompressor(cast(BinaryIO, raw), codec), raw))


class _Closing(io.RawIOBase):
    """A decompressed view whose close() also closes the compressed source (gzip's doesn't)."""

    def __init__(self, inner: BinaryIO, source: VerifyingReader) -> None:
        self._inner = inner
        self._source: object = source

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)

    def readinto(self, buf: Any) -> int:
        data = self._inner.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                if self._inner is not self._source:
                    self._inner.close()
            finally:
                cast(VerifyingReader, self._source).close()
        super().close()


class StoreImage:
    """An image in the store: ``target`` is what index.json points at (a manifest, or an index
    from which ``descriptor``, the platform's manifest, was chosen); ``names`` are the full
    references tagged to it. Manifest and config are read (verified) once and cached."""

    def __init__(self, store: DirStore, target: Descriptor, names: Iterable[str] = (), *,
                 platform: Platform | None = None, descriptor: Descriptor | None = None) -> None:
        self.store = store
        self.target = target
        self.names = tuple(sorted(set(names)))
        self._platform = platform
        self._descriptor = descriptor

    def __repr__(self) -> str:
        return f"StoreImage({self.digest}, names={list(self.names)})"

    # -- the Image protocol ---------------------------------------------------------------
    @functools.cached_property
    def descriptor(self) -> Descriptor:
        """The image manifest's descriptor (platform-selected when the target is an index)."""
        if self._descriptor is not None:
            return self._descriptor
        desc = self.target
        for _ in range(3):  # an index may nest one more index (rare); no deeper
            media = desc.media_type or self._sniff(desc.digest)
            if not mt.is_index(media):
                return desc
            index = Index.from_json(self.store.read(desc.digest), media_type=media)
            desc = select_manifest(index, self._platform, present=self.store.has,
                                   what=f"image index {desc.digest}")
        raise InvalidManifest("image index", f"{self.target.digest} nests indexes too deeply")

    def _sniff(self, digest: Digest) -> str:
        from registry.model import sniff_media_type

        return sniff_media_type(self.store.read(digest))

    def raw_manifest(self) -> bytes:
        return self._raw_manifest

    @functools.cached_property
    def _raw_manifest(self) -> bytes:
        return self.store.read(self.descriptor.digest)

    @functools.cached_property
    def manifest(self) -> Manifest:
        return Manifest.from_json(self._raw_manifest, media_type=self.descriptor.media_type or None)

    def raw_config(self) -> bytes:
        return self._raw_config

    @functools.cached_property
    def _raw_config(self) -> bytes:
        return self.store.read(self.manifest.config.digest)

    @functools.cached_property
    def config(self) -> ImageConfig:
        return ImageConfig.from_json(self._raw_config)

    def layers(self) -> list[Layer]:
        diff_ids: tuple[Digest | None, ...] = tuple(self.config.diff_ids)
        if len(diff_ids) != len(self.manifest.layers):
            diff_ids = (None,) * len(self.manifest.layers)
        return [Layer(self.store, d, diff) for d, diff in zip(self.manifest.layers, diff_ids, strict=True)]

    def layer(self, digest: Digest) -> Layer:
        for layer in self.layers():
            if layer.digest == digest:
                return layer
        raise BlobNotFound(digest)

    # -- derived ---------------------------------------------------------------------------
    @property
    def digest(self) -> Digest:
        """The manifest digest (what a registry calls the image's digest)."""
        return self.descriptor.digest

    @property
    def id(self) -> Digest:
        """docker's image ID: the config digest."""
        return self.manifest.config.digest

    @property
    def size(self) -> int:
        """Content size in the store: config plus (compressed) layers, as the manifest says."""
        return self.manifest.config.size + sum(d.size for d in self.manifest.layers)

    @property
    def created(self) -> datetime | None:
        return parse_time(self.config.created)

    def blobs(self) -> list[Digest]:
        """Every blob this image needs: target (+ index), manifest, config, layers."""
        out = [self.target.digest]
        if self.descriptor.digest != self.target.digest:
            out.append(self.descriptor.digest)
        out.append(self.manifest.config.digest)
        out += [d.digest for d in self.manifest.layers]
        return out

    def references(self) -> list[Reference]:
        return [parse_reference(n) for n in self.names]


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 (with nanoseconds, as Go writes them) → aware datetime; None if absent/bad."""
    if not text:
        return None
    value = text.strip()
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", value)
    if m:
        frac = (m.group(2) or "")[:7]
        value = m.group(1) + frac + (m.group(3) or "Z").replace("Z", "+00:00")
    from datetime import datetime

    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# -- listing ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One row of ``images``: a name (full reference, None for a dangling image) → image."""

    name: str | None
    image: StoreImage

    @property
    def reference(self) -> Reference | None:
        return parse_reference(self.name) if self.name else None

    def repository(self) -> str:
        ref = self.reference
        return ref.familiar_name() if ref else NONE

    def tag(self) -> str:
        ref = self.reference
        return (ref.tag or NONE) if ref else NONE


@dataclass(frozen=True, slots=True)
class Listing:
    """What ``list_images`` found."""

    entries: list[ImageEntry]
    problems: list[tuple[str, str]]   # (name or digest, what is wrong) for unreadable entries


def list_images(store: DirStore, *, platform: Platform | None = None) -> Listing:
    """Every index.json entry as an ImageEntry, one StoreImage per target digest, newest first.

    Entries whose manifest or config is missing or unreadable are reported in ``problems``
    instead of failing the whole listing.
    """
    by_digest: dict[Digest, list[Descriptor]] = {}
    for desc in store.entries():
        by_digest.setdefault(desc.digest, []).append(desc)
    rows: list[ImageEntry] = []
    problems: list[tuple[str, str]] = []
    for digest, descs in by_digest.items():
        names = [d.annotations[REF_NAME] for d in descs if REF_NAME in d.annotations]
        image = StoreImage(store, descs[0], _valid_names(names), platform=platform)
        try:
            image.config  # noqa: B018 - read and verify now, so a broken entry is reported here
        except RegistryError as exc:
            problems.append((names[0] if names else str(digest), str(exc)))
            continue
        if image.names:
            rows += [ImageEntry(n, image) for n in image.names]
        else:
            rows.append(ImageEntry(None, image))
    rows.sort(key=lambda e: (-(e.image.created.timestamp() if e.image.created else 0), e.name or "~"))
    return Listing(rows, problems)


def _normalized(name: str) -> str | None:
    try:
        return str(parse_reference(name))
    except InvalidReference:
        return None


def _valid_names(names: Iterable[str]) -> list[str]:
    """Tags written by other tools may not be references (``oci:dir:v1``): keep the ones that are."""
    out = []
    for name in names:
        try:
            out.append(str(parse_reference(name)))
        except InvalidReference:
            continue
    return out


def images(store: DirStore, *, platform: Platform | None = None) -> list[StoreImage]:
    """Distinct images (by target digest), each with all its names."""
    seen: dict[Digest, StoreImage] = {}
    for entry in list_images(store, platform=platform).entries:
        seen.setdefault(entry.image.target.digest, entry.image)
    return list(seen.values())


# -- resolution --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Resolution:
    """How a user's argument matched: by ``name`` (a tag; ``name`` is the index.json ref name,
    a full reference unless another tool wrote it), by
    ``digest`` (name@sha256:…, or a manifest digest) or by ``id`` (config digest or prefix)."""

    image: StoreImage
    kind: Literal["name", "digest", "id"]
    name: str | None = None


def resolve(store: DirStore, text: str, *, platform: Platform | None = None) -> Resolution:
    """Resolve a user's image argument like docker.

    Order: a ``sha256:`` digest or a 64-hex string is an ID (config digest; a full manifest
    digest is accepted too); otherwise a reference (``busybox`` → docker.io/library/busybox:
    latest; ``name@sha256:…`` matches that repository's image with that manifest digest);
    failing that, a hex string is tried as a unique ID prefix. Raises ImageNotFound,
    AmbiguousImage, or InvalidReference for a malformed name that is no ID either.
    """
    text = text.strip()
    entries = store.entries()
    if text.startswith("sha256:"):
        hexpart = text[len("sha256:"):]
        if not _HEX_PREFIX.match(hexpart):
            raise ImageNotFound(text)
        return _by_id(store, entries, hexpart, text, platform)
    if len(text) == 64 and _HEX_PREFIX.match(text):
        return _by_id(store, entries, text, text, platform)
    try:
        ref = parse_reference(text)
    except InvalidReference:
        if _HEX_PREFIX.match(text):
            return _by_id(store, entries, text, text, platform)
        raise
    if ref.digest is not None:
        found = _by_repo_digest(store, entries, ref, platform)
        if found is not None:
            return found
        raise ImageNotFound(ref.familiar())
    name = str(ref)
    # Names pybuild writes are normalized already; ones other tools wrote (skopeo copy …
    # oci:$ROOT:busybox) are compared in normalized form too.
    matching = [d for d in entries if d.annotations.get(REF_NAME) == name] or \
        [d for d in entries if REF_NAME in d.annotations and _normalized(d.annotations[REF_NAME]) == name]
    if matching:
        names = [d.annotations[REF_NAME] for d in entries if d.digest == matching[0].digest
                 and REF_NAME in d.annotations]
        return Resolution(StoreImage(store, matching[0], _valid_names(names), platform=platform),
                          "name", matching[0].annotations[REF_NAME])
    if _HEX_PREFIX.match(text):
        try:
            return _by_id(store, entries, text, text, platform)
        except ImageNotFound:
            pass
    raise ImageNotFound(ref.familiar())


def resolve_image(store: DirStore, text: str, *, platform: Platform | None = None) -> StoreImage:
    return resolve(store, text, platform=platform).image


def _group(store: DirStore, entries: list[Descriptor], digest: Digest,
           platform: Platform | None) -> StoreImage:
    descs = [d for d in entries if d.digest == digest]
    names = [d.annotations[REF_NAME] for d in descs if REF_NAME in d.annotations]
    return StoreImage(store, descs[0], _valid_names(names), platform=platform)


def _by_repo_digest(store: DirStore, entries: list[Descriptor], ref: Reference,
                    platform: Platform | None) -> Resolution | None:
    assert ref.digest is not None
    for desc in entries:
        name = desc.annotations.get(REF_NAME)
        if name is None:
            continue
        try:
            if parse_reference(name).name != ref.name:
                continue
        except InvalidReference:
            continue
        if desc.digest == ref.digest:
            return Resolution(_group(store, entries, desc.digest, platform), "digest")
        if mt.is_index(desc.media_type):
            # name@<platform manifest digest> of a stored index
            try:
                index = Index.from_json(store.read(desc.digest), media_type=desc.media_type)
            except RegistryError:
                continue
            for child in index.manifests:
                if child.digest == ref.digest and store.has(child.digest):
                    group = _group(store, entries, desc.digest, platform)
                    return Resolution(StoreImage(store, desc, group.names, descriptor=child), "digest")
    return None


def _by_id(store: DirStore, entries: list[Descriptor], hexpart: str, text: str,
           platform: Platform | None) -> Resolution:
    """Match a config-digest prefix (docker's image ID); a full manifest digest also matches."""
    ids: dict[Digest, list[Digest]] = {}   # config digest -> target digests
    for digest in dict.fromkeys(d.digest for d in entries):
        image = _group(store, entries, digest, platform)
        try:
            config_digest = image.id
        except RegistryError:
            continue
        if config_digest.hex.startswith(hexpart):
            ids.setdefault(config_digest, []).append(digest)
    if len(ids) > 1:
        raise AmbiguousImage(text, len(ids))
    if ids:
        (targets,) = ids.values()
        # Several manifests may share a config (the same image saved with other compression):
        # prefer a named one, as docker shows one ID for them.
        best = max(targets, key=lambda t: len(_group(store, entries, t, platform).names))
        return Resolution(_group(store, entries, best, platform), "id")
    if len(hexpart) == 64:
        digest = Digest("sha256", hexpart)
        if any(d.digest == digest for d in entries):
            return Resolution(_group(store, entries, digest, platform), "digest")
    raise ImageNotFound(text)


@dataclass(frozen=True, slots=True)
class Removal:
    """What ``remove_image`` did: the ref names it removed, the image ID when no entry of that
    image remains (docker's "Deleted:"), the manifest digest, and the blobs that may now be
    garbage (for a targeted ``gc(only=…)``)."""

    untagged: tuple[str, ...]
    deleted: Digest | None
    digest: Digest
    blobs: tuple[Digest, ...]


def remove_image(store: DirStore, text: str, *, force: bool = False,
                 in_use: Iterable[Digest] = ()) -> Removal:
    """docker rmi for one argument. By name: remove that tag. By ID or digest: remove every
    entry of the image, refused (ImageInUse) when it has several names unless ``force``. The
    last entry of an image that a container uses (``in_use``: target, manifest or config
    digests) is refused unless ``force``. Blobs are left to gc."""
    res = resolve(store, text)
    image = res.image
    image_id = image.id
    entries = store.entries()
    if res.kind == "name":
        doomed = [d for d in entries if d.annotations.get(REF_NAME) == res.name]
    elif res.kind == "digest":
        doomed = [d for d in entries if d.digest == image.target.digest]
    else:
        doomed = targets_with_id(store, image_id)
    tagged = tuple(sorted({d.annotations[REF_NAME] for d in doomed if REF_NAME in d.annotations}))
    if res.kind != "name" and len(tagged) > 1 and not force:
        raise ImageInUse(f"{image_id.short} (must be forced)", "image is referenced in multiple repositories")

    def key(d: Descriptor) -> tuple[Digest, str | None]:
        return d.digest, d.annotations.get(REF_NAME)

    doomed_keys = {key(d) for d in doomed}
    remaining = {d.digest for d in entries if key(d) not in doomed_keys}
    still_there = any(_config_of(store, t) == image_id for t in remaining)
    if not still_there and not force and {image.target.digest, image.digest, image_id} & set(in_use):
        raise ImageInUse(image_id.short, "a container uses it (remove the container first, or use -f)")
    store.update_index(lambda cur: [d for d in cur if key(d) not in doomed_keys])
    blobs: list[Digest] = []
    if not still_there:
        for d in doomed:
            try:
                blobs += StoreImage(store, d).blobs()
            except RegistryError:
                blobs.append(d.digest)
    return Removal(tagged, None if still_there else image_id, image.digest, tuple(dict.fromkeys(blobs)))


def _config_of(store: DirStore, target: Digest) -> Digest | None:
    try:
        return StoreImage(store, Descriptor("", target, 0)).id
    except RegistryError:
        return None


def targets_with_id(store: DirStore, config_digest: Digest) -> list[Descriptor]:
    """Every index.json entry whose image has this ID (config digest)."""
    out = []
    entries = store.entries()
    cache: dict[Digest, Digest | None] = {}
    for desc in entries:
        if desc.digest not in cache:
            try:
                cache[desc.digest] = StoreImage(store, desc).id
            except RegistryError:
                cache[desc.digest] = None
        if cache[desc.digest] == config_digest:
            out.append(desc)
    return out


# -- docker-shaped views -------------------------------------------------------------------------
def _docker_container_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """docker inspect prints the full container config with zero values; keep that shape."""
    base: dict[str, Any] = {
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
        "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "Env": None, "Cmd": None, "Image": "", "Volumes": None, "WorkingDir": "",
        "Entrypoint": None, "OnBuild": None, "Labels": None,
    }
    base.update(cfg)
    return base


def inspect_view(image: StoreImage) -> dict[str, Any]:
    """The ``docker image inspect`` object for one image (plus the manifest ``Descriptor``,
    as docker 25+ prints it). ``Size`` is the stored (compressed) content size."""
    cfg = image.config
    refs = image.references()
    repo_digests = list(dict.fromkeys(f"{r.familiar_name()}@{image.digest}" for r in refs))
    comment = str(cfg.extra.get("comment", ""))
    view: dict[str, Any] = {
        "Id": str(image.id),
        "RepoTags": [r.familiar() for r in refs],
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": comment,
        "Created": cfg.created or "",
        "DockerVersion": str(cfg.extra.get("docker_version", "")),
        "Author": cfg.author or "",
        "Config": _docker_container_config(cfg.config.to_dict()),
        "Architecture": cfg.architecture,
    }
    if cfg.variant:
        view["Variant"] = cfg.variant
    view.update({
        "Os": cfg.os,
        "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": [str(d) for d in cfg.diff_ids]},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        "Descriptor": {"mediaType": image.descriptor.media_type, "digest": str(image.digest),
                       "size": image.descriptor.size},
    })
    return view


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One row of ``pybuild history``."""

    image_id: Digest | None     # the image's ID on the top row; None (docker's <missing>) below
    created: datetime | None
    created_raw: str
    created_by: str
    size: int                   # the layer's stored size; 0 for an empty layer
    comment: str
    empty_layer: bool


def history_rows(image: StoreImage) -> list[HistoryRow]:
    """``docker history`` rows, newest first. History entries that made a layer take the
    layers' sizes in order; an image without history gets one row per layer."""
    cfg = image.config
    layers = list(image.manifest.layers)
    rows: list[HistoryRow] = []
    if cfg.history:
        i = 0
        for h in cfg.history:
            size = 0
            if not h.empty_layer:
                size = layers[i].size if i < len(layers) else 0
                i += 1
            rows.append(HistoryRow(None, parse_time(h.created), h.created or "", h.created_by or "",
                                   size, h.comment or "", h.empty_layer))
    else:
        rows = [HistoryRow(None, parse_time(cfg.created), cfg.created or "", "", d.size, "", False)
                for d in layers]
    rows.reverse()
    if rows:
        top = rows[0]
        rows[0] = HistoryRow(image.id, top.created, top.created_raw, top.created_by, top.size,
                             top.comment, top.empty_layer)
    return rows
