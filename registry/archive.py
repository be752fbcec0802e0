"""Image tarballs: ``save`` (docker-archive, oci-archive), ``load`` (both, detected, compressed or not)
and ``import_rootfs`` (a rootfs tar -> a one-layer image). docker-archive is written as docker 25+
writes it (an OCI layout plus docker's manifest.json over the same blobs); a classic one loads with its
image ID kept. Every blob entering the store is verified; members are never extracted to disk. Imports
registry only."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

from registry import mediatypes as mt
from registry.changes import apply_changes
from registry.compression import Codec, Readable, Writable, compressor, decompressor, sniff
from registry.digest import CHUNK, Digest
from registry.errors import ArchiveError, InvalidReference, RegistryError
from registry.image import StoreImage
from registry.imagebuild import host_arch, now_rfc3339
from registry.layertar import LayerBlob
from registry.model import (
    ContainerConfig,
    Descriptor,
    History,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    canonical_json,
)
from registry.reference import parse_reference
from registry.store import MAX_JSON_BLOB, REF_NAME, DirStore, atomic_file

Format = Literal["docker-archive", "oci-archive"]
FORMATS: tuple[Format, ...] = ("docker-archive", "oci-archive")
CONTAINERD_NAME = "io.containerd.image.name"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"


# -- save ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SaveItem:
    """One image to save and the full references to record for it (none: saved by ID)."""

    image: StoreImage
    names: tuple[str, ...] = ()


def _tarinfo(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0          # deterministic: the same images always give the same archive bytes
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.mode = 0o644
    return info


def _image_blobs(item: SaveItem, fmt: Format) -> tuple[Descriptor, list[Descriptor]]:
    """(the descriptor index.json should list, the blobs to write) for one image.

    oci-archive keeps a stored multi-platform index when all its children are present;
    docker-archive (one config per image) always saves the platform's manifest.
    """
    image = item.image
    blobs: list[Descriptor] = []
    top = image.descriptor
    if fmt == "oci-archive" and image.target.digest != image.descriptor.digest:
        index = Index.from_json(image.store.read(image.target.digest),
                                media_type=image.target.media_type or None)
        children = [d for d in index.manifests if image.store.has(d.digest)]
        if len(children) == len(index.manifests):
            top = image.target
            blobs.append(image.target)
            for child in children:
                sub = StoreImage(image.store, child, descriptor=child)
                blobs += [child, sub.manifest.config, *sub.manifest.layers]
            return _platformed(top, image), blobs
    blobs += [image.descriptor, image.manifest.config, *image.manifest.layers]
    return _platformed(top, image), blobs


def _platformed(desc: Descriptor, image: StoreImage) -> Descriptor:
    plain = Descriptor(desc.media_type or image.descriptor.media_type, desc.digest, desc.size)
    if mt.is_manifest(plain.media_type):
        cfg = image.config
        return Descriptor(plain.media_type, plain.digest, plain.size,
                          platform=Platform(cfg.os, cfg.architecture, cfg.variant))
    return plain


def save(store: DirStore, items: Sequence[SaveItem], out: BinaryIO, *,
         fmt: Format = "docker-archive") -> None:
    """Stream a tar of ``items`` to ``out`` (a file or a pipe; nothing is seeked).

    Blobs are written as stored and verified while they are read. Each name becomes an
    index.json entry annotated with the full reference (``org.opencontainers.image.ref.name``
    and ``io.containerd.image.name``); docker-archive adds manifest.json with familiar
    ``RepoTags``.
    """
    if fmt not in FORMATS:
        raise ArchiveError(str(fmt), f"unknown archive format (want {' or '.join(FORMATS)})")
    if not items:
        raise ArchiveError("save", "no images given")
    entries: list[Descriptor] = []
    ordered: dict[Digest, Descriptor] = {}
    docker_manifest: list[dict[str, object]] = []
    for item in items:
        top, blobs = _image_blobs(item, fmt)
        for b in blobs:
            ordered.setdefault(b.digest, b)
        if item.names:
            for name in item.names:
                entries.append(top.with_annotations({CONTAINERD_NAME: name, REF_NAME: name}))
        else:
            entries.append(top)
        image = item.image
        docker_manifest.append({
            "Config": f"blobs/sha256/{image.manifest.config.digest.hex}",
            # Full names: docker normalizes them on load like familiar ones, and podman would
            # otherwise file "busybox:latest" under localhost/.
            "RepoTags": list(item.names) or None,
            "Layers": [f"blobs/sha256/{d.digest.hex}" for d in image.manifest.layers],
        })
    with store.writing(), tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo("blobs", directory=True))
        tar.addfile(_tarinfo("blobs/sha256", directory=True))
        for digest, desc in ordered.items():
            size = store.size(digest)
            if size != desc.size:
                raise ArchiveError(f"blob {digest}", f"stored size {size} != descriptor size {desc.size}")
            with store.open(digest) as reader:
                tar.addfile(_tarinfo(f"blobs/sha256/{digest.hex}", size), cast(Any, reader))
                reader.verify_rest()
        index = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                "manifests": [d.to_dict() for d in entries]})
        _add_bytes(tar, "index.json", index)
        if fmt == "docker-archive":
            _add_bytes(tar, "manifest.json", canonical_json(docker_manifest))
        _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def save_to_path(store: DirStore, items: Sequence[SaveItem], path: Path, *,
                 fmt: Format = "docker-archive") -> None:
    """``save`` into a file atomically (temp file + fsync + rename)."""
    with atomic_file(path.absolute(), mode=0o666) as f:
        save(store, items, f, fmt=fmt)


# -- reading helpers -------------------------------------------------------------------------------
def open_decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw`` decompressed by its magic number: gzip, zstd, xz, bzip2 or plain."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(Any, raw), 1 << 16)
    head = buffered.peek(6)[:6]
    if head.startswith(XZ_MAGIC):
        import lzma

        return cast(BinaryIO, lzma.open(buffered, "rb"))     # an LZMAFile: a binary reader
    if head.startswith(BZIP2_MAGIC):
        import bz2

        return cast(BinaryIO, bz2.open(buffered, "rb"))
    return decompressor(buffered, sniff(head))


def _safe_name(name: str, where: str) -> str:
    """A tar member name as a clean relative path; hostile names are refused."""
    rel = name
    while rel.startswith("./"):
        rel = rel[2:]
    clean = posixpath.normpath(rel) if rel else "."
    if name.startswith("/") or clean == ".." or clean.startswith("../") or "\0" in name:
        raise ArchiveError(where, f"unsafe member name {name!r}")
    return "" if clean == "." else clean


class _Tee:
    """A reader that copies everything read through it into a sink and a hasher."""

    def __init__(self, src: Readable, sink: Writable | None) -> None:
        self.src = src
        self.sink = sink
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n if n is not None and n >= 0 else CHUNK)
        if data:
            self.hasher.update(data)
            self.size += len(data)
            if self.sink is not None:
                self.sink.write(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _store_layer(store: DirStore, src: Readable, codec: Codec = "gzip") -> LayerBlob:
    """Store a layer tar from a stream: a plain tar is compressed with ``codec`` (one pass:
    diff_id and digest together); an already compressed one is stored as is and its
    diff_id computed from the stored copy."""
    buffered = io.BufferedReader(cast(Any, src), 1 << 16)
    kind = sniff(buffered.peek(4)[:4])
    if kind == "none":
        with store.ingest() as blob:
            comp = compressor(blob, codec)
            tee = _Tee(buffered, comp)
            tee.drain()
            comp.close()
        info = blob.descriptor_info
        return LayerBlob(Descriptor(mt.layer_type(codec), info.digest, info.size),
                         Digest.from_hasher(tee.hasher), tee.size)
    with store.ingest() as blob:
        while chunk := buffered.read(CHUNK):
            blob.write(chunk)
    info = blob.descriptor_info
    with store.open(info.digest) as reader:
        tee = _Tee(decompressor(reader, kind), None)
        tee.drain()
    return LayerBlob(Descriptor(mt.layer_type(kind), info.digest, info.size),
                     Digest.from_hasher(tee.hasher), tee.size)


# -- load ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Loaded:
    """One image that ``load`` stored: its name (full reference; None when untagged), the
    descriptor the name points at, and the image ID (config digest)."""

    name: str | None
    descriptor: Descriptor
    image_id: Digest


@dataclass
class _Scan:
    small: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    layers: dict[str, LayerBlob] = field(default_factory=dict)
    blobs: set[Digest] = field(default_factory=set)

    def resolve(self, name: str) -> str:
        for _ in range(16):
            if name not in self.links:
                return name
            name = self.links[name]
        raise ArchiveError(name, "symlink loop in archive")


_SMALL_SUFFIXES = (".json", "/json", "/VERSION")
_SMALL_NAMES = ("manifest.json", "index.json", "oci-layout", "repositories")


def _scan(store: DirStore, stream: BinaryIO, source: str) -> _Scan:
    """One pass over the archive: blobs/sha256/* go straight into the store (verified),
    small JSON files are kept, legacy layer tars are compressed into the store."""
    scan = _Scan()
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - ReadError must be mapped first
    except tarfile.ReadError as exc:
        raise ArchiveError(source, f"not a tar archive ({exc})") from None
    with tar:
        try:
            for member in tar:
                name = _safe_name(member.name, source)
                if not name or member.isdir():
                    continue
                if member.issym() or member.islnk():
                    base = posixpath.dirname(name) if member.issym() else ""
                    target = _safe_name(posixpath.join(base, member.linkname), source)
                    scan.links[name] = target
                    continue
                if not member.isreg():
                    continue
                f = tar.extractfile(member)
                assert f is not None
                parts = name.split("/")
                if len(parts) == 3 and parts[:2] == ["blobs", "sha256"]:
                    digest = Digest.parse("sha256:" + parts[2])
                    if not store.has(digest):
                        with store.ingest(expected=digest, size=member.size) as blob:
                            while chunk := f.read(CHUNK):
                                blob.write(chunk)
                    scan.blobs.add(digest)
                elif name in _SMALL_NAMES or name.endswith(_SMALL_SUFFIXES):
                    if member.size > MAX_JSON_BLOB:
                        raise ArchiveError(source, f"{name} is {member.size} bytes, limit {MAX_JSON_BLOB}")
                    scan.small[name] = f.read()
                else:
                    scan.layers[name] = _store_layer(store, f)
        except tarfile.TarError as exc:
            raise ArchiveError(source, f"corrupt tar archive ({exc})") from None
    return scan


def load(store: DirStore, stream: BinaryIO, *, source: str = "-") -> list[Loaded]:
    """Load a docker-archive or oci-archive (auto-detected; gzip/zstd/xz/bzip2 or plain).

    The whole load holds the store lock shared; every blob is verified; names are tagged
    last, so a failed load tags nothing. Returns what was loaded, in archive order.
    """
    with store.writing():
        scan = _scan(store, open_decompressed(stream), source)
        if "index.json" in scan.small:
            return _load_oci(store, scan, source)
        if "manifest.json" in scan.small:
            return _load_docker(store, scan, source)
    raise ArchiveError(source, "not a docker-archive or oci-archive (no manifest.json or index.json)")


def _require(store: DirStore, desc: Descriptor, source: str) -> None:
    """The descriptor's blob and everything below it must be in the store (and parse)."""
    if not store.has(desc.digest):
        raise ArchiveError(source, f"archive lacks blob {desc.digest} ({desc.media_type or 'unknown type'})")
    if store.size(desc.digest) != desc.size:
        raise ArchiveError(source, f"blob {desc.digest}: size {store.size(desc.digest)} != {desc.size}")
    if mt.is_index(desc.media_type):
        index = Index.from_json(store.read(desc.digest), media_type=desc.media_type)
        for child in index.manifests:
            _require(store, child, source)
    elif mt.is_manifest(desc.media_type):
        manifest = Manifest.from_json(store.read(desc.digest), media_type=desc.media_type)
        _require(store, manifest.config, source)
        for layer in manifest.layers:
            _require(store, layer, source)


def _name_of(desc: Descriptor, repo_tags: dict[Digest, list[str]], image: StoreImage) -> list[str]:
    """Names for one index.json entry: containerd's full name, else a ref.name that parses as
    a reference, else manifest.json's RepoTags for the same config."""
    for key in (CONTAINERD_NAME, REF_NAME):
        value = desc.annotations.get(key)
        if value:
            try:
                ref = parse_reference(value)
            except InvalidReference:
                continue
            if key == REF_NAME and "/" not in value and ":" not in value and image.id in repo_tags:
                break  # a bare tag ("latest"): docker's manifest.json knows the real name
            return [str(ref)]
    return repo_tags.get(image.id, [])


def _repo_tags(scan: _Scan, source: str) -> dict[Digest, list[str]]:
    """manifest.json's RepoTags by config digest (full references)."""
    out: dict[Digest, list[str]] = {}
    raw = scan.small.get("manifest.json")
    if raw is None:
        return out
    for entry in _docker_manifest(raw, source):
        config_name = scan.resolve(_safe_name(str(entry.get("Config", "")), source))
        data = scan.small.get(config_name)
        digest = Digest.of(data) if data is not None else _digest_from_path(config_name)
        if digest is None:
            continue
        out.setdefault(digest, []).extend(_normalize_tags(entry.get("RepoTags"), source))
    return out


def _digest_from_path(name: str) -> Digest | None:
    parts = name.split("/")
    if len(parts) == 3 and parts[:2] == ["blobs", "sha256"]:
        with contextlib.suppress(RegistryError):
            return Digest.parse("sha256:" + parts[2])
    return None


def _normalize_tags(tags: object, source: str) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list):
        raise ArchiveError(source, "manifest.json: RepoTags is not a list")
    out = []
    for tag in tags:
        try:
            out.append(str(parse_reference(str(tag))))
        except InvalidReference as exc:
            raise ArchiveError(source, f"manifest.json: bad RepoTag {tag!r} ({exc.why})") from None
    return out


def _docker_manifest(raw: bytes, source: str) -> list[dict[str, object]]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ArchiveError(source, f"manifest.json is not JSON ({exc})") from None
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise ArchiveError(source, "manifest.json is not a list of objects")
    return doc


def _load_oci(store: DirStore, scan: _Scan, source: str) -> list[Loaded]:
    try:
        index = Index.from_json(scan.small["index.json"])
    except RegistryError as exc:
        raise ArchiveError(source, f"index.json: {exc}") from None
    repo_tags = _repo_tags(scan, source)
    plan: list[tuple[list[str], Descriptor, Digest]] = []
    for desc in index.manifests:
        media = desc.media_type
        if not media:
            from registry.model import sniff_media_type

            media = sniff_media_type(store.read(desc.digest))
            desc = Descriptor(media, desc.digest, desc.size, desc.annotations, desc.platform)
        if not (mt.is_manifest(media) or mt.is_index(media)):
            continue  # artifacts and the like: not images
        _require(store, desc, source)
        clean = Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform)
        image = StoreImage(store, clean)
        plan.append((_name_of(desc, repo_tags, image), clean, image.id))
    if not plan:
        raise ArchiveError(source, "index.json lists no image")
    return _commit(store, plan)


def _load_docker(store: DirStore, scan: _Scan, source: str) -> list[Loaded]:
    plan: list[tuple[list[str], Descriptor, Digest]] = []
    for entry in _docker_manifest(scan.small["manifest.json"], source):
        config_name = scan.resolve(_safe_name(str(entry.get("Config", "")), source))
        raw_config = scan.small.get(config_name)
        if raw_config is None:
            digest = _digest_from_path(config_name)
            if digest is None or not store.has(digest):
                raise ArchiveError(source, f"manifest.json names config {config_name!r}, not in the archive")
            raw_config = store.read(digest)
        config = ImageConfig.from_json(raw_config)
        layer_names = entry.get("Layers") or []
        if not isinstance(layer_names, list):
            raise ArchiveError(source, "manifest.json: Layers is not a list")
        layers: list[LayerBlob] = []
        for raw_name in layer_names:
            name = scan.resolve(_safe_name(str(raw_name), source))
            layers.append(_docker_layer(store, scan, name, source))
        got = tuple(layer.diff_id for layer in layers)
        if got != tuple(config.diff_ids):
            raise ArchiveError(source, f"layers do not match the config's rootfs.diff_ids "
                                       f"(config {config_name}: want {len(config.diff_ids)} layers "
                                       f"{[str(d)[:19] for d in config.diff_ids]}, got "
                                       f"{[str(d)[:19] for d in got]})")
        config_desc = store.put(raw_config, mt.OCI_CONFIG)
        manifest = Manifest(mt.OCI_MANIFEST, config_desc, tuple(layer.descriptor for layer in layers))
        mdesc = store.put(manifest.to_json(), mt.OCI_MANIFEST)
        mdesc = Descriptor(mdesc.media_type, mdesc.digest, mdesc.size, platform=config.platform)
        plan.append((_normalize_tags(entry.get("RepoTags"), source), mdesc, config_desc.digest))
    if not plan:
        raise ArchiveError(source, "manifest.json lists no image")
    return _commit(store, plan)


def _docker_layer(store: DirStore, scan: _Scan, name: str, source: str) -> LayerBlob:
    if name in scan.layers:
        return scan.layers[name]
    digest = _digest_from_path(name)
    if digest is not None and store.has(digest):
        # A layer kept in blobs/ (docker 25+ without index.json): store it as our codec would.
        with store.open(digest) as reader:
            layer = _store_layer(store, reader)
        scan.layers[name] = layer
        return layer
    raise ArchiveError(source, f"manifest.json names layer {name!r}, not in the archive")


def _commit(store: DirStore, plan: list[tuple[list[str], Descriptor, Digest]]) -> list[Loaded]:
    out: list[Loaded] = []
    for names, desc, image_id in plan:
        if names:
            for name in names:
                store.tag(name, desc)
                out.append(Loaded(name, desc, image_id))
        else:
            store.add_untagged(desc)
            out.append(Loaded(None, desc, image_id))
    return out


# -- import ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Imported:
    descriptor: Descriptor     # the manifest
    image_id: Digest           # the config digest
    layer: LayerBlob
    members: int


def import_rootfs(store: DirStore, stream: BinaryIO, *, tags: Iterable[str] = (),
                  changes: Iterable[str] = (), message: str | None = None,
                  platform: Platform | None = None, codec: Codec = "gzip",
                  source: str = "-") -> Imported:
    """``docker import``: a root filesystem tar (plain, gzip, zstd, xz or bzip2) becomes a
    one-layer image. The tar's bytes are kept exactly (its sha256 is the diff_id) and
    compressed deterministically; the creation time is SOURCE_DATE_EPOCH when set, so the
    same input always gives the same image digest. ``changes`` are Dockerfile instructions
    (CMD, ENV, …). Tags (full references) are applied last.
    """
    container = apply_changes(ContainerConfig(), changes)
    names = [str(parse_reference(t)) for t in tags]
    with store.writing():
        with store.ingest() as blob:
            comp = compressor(blob, codec)
            tee = _Tee(open_decompressed(stream), comp)
            members = _validate_tar(tee, source)
            tee.drain()
            comp.close()
        info = blob.descriptor_info
        layer = LayerBlob(Descriptor(mt.layer_type(codec), info.digest, info.size),
                          Digest.from_hasher(tee.hasher), tee.size)
        created = now_rfc3339()
        comment = message if message is not None else f"Imported from {source}"
        plat = platform or Platform("linux", host_arch())
        config = ImageConfig(architecture=plat.architecture, os=plat.os, config=container,
                             diff_ids=(layer.diff_id,),
                             history=(History(created=created, comment=comment),),
                             created=created, variant=plat.variant, extra={"comment": comment})
        config_desc = store.put(config.to_json(), mt.OCI_CONFIG)
        manifest = Manifest(mt.OCI_MANIFEST, config_desc, (layer.descriptor,))
        mdesc = store.put(manifest.to_json(), mt.OCI_MANIFEST)
        mdesc = Descriptor(mdesc.media_type, mdesc.digest, mdesc.size, platform=config.platform)
        if names:
            for name in names:
                store.tag(name, mdesc)
        else:
            store.add_untagged(mdesc)
    return Imported(mdesc, config_desc.digest, layer, members)


def _validate_tar(src: _Tee, source: str) -> int:
    """Read the tar's headers (the data flows on through the tee); returns the member count."""
    try:
        # stream mode ("r|") only read()s the tee; typeshed asks for a whole file object
        with tarfile.open(fileobj=cast(IO[bytes], src), mode="r|") as tar:
            return sum(1 for _ in tar)
    except tarfile.TarError as exc:
        if src.size == 0:
            raise ArchiveError(source, "empty input: want a tar archive") from None
        raise ArchiveError(source, f"not a tar archive ({exc})") from None
