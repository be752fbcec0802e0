"""The OCI / Docker v2 image model: descriptors, manifests, indexes, image configs as frozen dataclasses
parsed from and rendered to JSON; unknown fields kept in ``extra`` so a round trip loses nothing.
Digests of what we were given are over the raw bytes (DESIGN C1); ``canonical_json`` is the one
serializer for what pybuild creates. Imports registry (digest, errors, mediatypes) only."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from registry import mediatypes as mt
from registry.digest import Digest
from registry.errors import InvalidManifest

JSON = dict[str, Any]


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8: the same value always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _load(raw: bytes, what: str) -> JSON:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest(what, f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidManifest(what, "not a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class Platform:
    """os/architecture[/variant] of an image (an index entry's ``platform``)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """'linux/amd64', 'linux/arm64/v8', 'linux/arm/v7'."""
        parts = text.strip().lower().split("/")
        if len(parts) < 2 or len(parts) > 3 or not all(parts):
            raise ValueError(f"invalid platform {text!r}: want os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Platform:
        return cls(str(d.get("os", "")), str(d.get("architecture", "")), d.get("variant") or None,
                   d.get("os.version") or None, tuple(d.get("os.features") or ()))

    def to_dict(self) -> JSON:
        d: JSON = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        if self.os_version:
            d["os.version"] = self.os_version
        if self.os_features:
            d["os.features"] = list(self.os_features)
        return d

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: media type, digest and size of a blob (plus annotations)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Descriptor:
        try:
            size = d["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidManifest("descriptor", f"bad size {size!r}")
            return cls(
                media_type=str(d.get("mediaType", "")),
                digest=Digest.parse(str(d["digest"])),
                size=size,
                annotations=dict(d.get("annotations") or {}),
                platform=Platform.from_dict(d["platform"]) if d.get("platform") else None,
                urls=tuple(d.get("urls") or ()),
                artifact_type=d.get("artifactType"),
            )
        except KeyError as exc:
            raise InvalidManifest("descriptor", f"missing {exc.args[0]!r}") from None

    def to_dict(self) -> JSON:
        d: JSON = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = self.platform.to_dict()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        return replace(self, annotations=dict(annotations))


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, raw: bytes, *, media_type: str | None = None) -> Manifest:
        doc = _load(raw, "manifest")
        mtype = doc.get("mediaType") or media_type or mt.OCI_MANIFEST
        if mtype in mt.SCHEMA1 or doc.get("schemaVersion") == 1:
            raise InvalidManifest("manifest", "docker schema 1 is not supported (deprecated since 2015)")
        if "manifests" in doc:
            # A document that could be read as both an index and a manifest is ambiguous:
            # refuse it rather than guess (a known confusion attack on image verification).
            raise InvalidManifest("manifest", "document has both 'manifests' and manifest fields")
        if mtype not in mt.MANIFESTS:
            raise InvalidManifest("manifest", f"media type {mtype!r} is not an image manifest")
        if doc.get("schemaVersion") != 2:
            raise InvalidManifest("manifest", f"schemaVersion {doc.get('schemaVersion')!r}, want 2")
        if "config" not in doc:
            raise InvalidManifest("manifest", "missing 'config'")
        return cls(
            media_type=mtype,
            config=Descriptor.from_dict(doc["config"]),
            layers=tuple(Descriptor.from_dict(x) for x in doc.get("layers") or ()),
            annotations=dict(doc.get("annotations") or {}),
            subject=Descriptor.from_dict(doc["subject"]) if doc.get("subject") else None,
            artifact_type=doc.get("artifactType"),
        )

    def to_dict(self) -> JSON:
        d: JSON = {"schemaVersion": 2, "mediaType": self.media_type,
                   "config": self.config.to_dict(), "layers": [x.to_dict() for x in self.layers]}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.subject:
            d["subject"] = self.subject.to_dict()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


@dataclass(frozen=True, slots=True)
class Index:
    """An OCI image index or a Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes, *, media_type: str | None = None) -> Index:
        doc = _load(raw, "index")
        mtype = doc.get("mediaType") or media_type or mt.OCI_INDEX
        if "config" in doc or "layers" in doc:
            raise InvalidManifest("index", "document has both 'manifests' and manifest fields")
        if mtype not in mt.INDEXES:
            raise InvalidManifest("index", f"media type {mtype!r} is not an index")
        if doc.get("schemaVersion") != 2:
            raise InvalidManifest("index", f"schemaVersion {doc.get('schemaVersion')!r}, want 2")
        return cls(mtype, tuple(Descriptor.from_dict(x) for x in doc.get("manifests") or ()),
                   dict(doc.get("annotations") or {}))

    def to_dict(self) -> JSON:
        d: JSON = {"schemaVersion": 2, "mediaType": self.media_type,
                   "manifests": [x.to_dict() for x in self.manifests]}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


def sniff_media_type(raw: bytes, declared: str | None = None) -> str:
    """The media type of a manifest-ish document: its own field, else the declared one, else by shape."""
    doc = _load(raw, "manifest")
    mtype = doc.get("mediaType") or declared
    if mtype:
        return str(mtype)
    if doc.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1
    return mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST


@dataclass(frozen=True, slots=True)
class History:
    """One entry of an image config's ``history``."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        return cls(d.get("created"), d.get("created_by"), d.get("author"), d.get("comment"),
                   bool(d.get("empty_layer", False)))

    def to_dict(self) -> JSON:
        d: JSON = {}
        for key, value in (("created", self.created), ("created_by", self.created_by),
                           ("author", self.author), ("comment", self.comment)):
            if value is not None:
                d[key] = value
        if self.empty_layer:
            d["empty_layer"] = True
        return d


# Docker's container-config keys, in the spelling of the image spec.
_CC_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
            "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """The ``config`` object of an image config: how a container of this image runs."""

    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""
    healthcheck: Mapping[str, Any] | None = None
    onbuild: tuple[str, ...] = ()
    shell: tuple[str, ...] | None = None
    args_escaped: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ContainerConfig:
        if not d:
            return cls()
        return cls(
            user=d.get("User") or "",
            env=tuple(d.get("Env") or ()),
            entrypoint=tuple(d["Entrypoint"]) if d.get("Entrypoint") is not None else None,
            cmd=tuple(d["Cmd"]) if d.get("Cmd") is not None else None,
            working_dir=d.get("WorkingDir") or "",
            labels=dict(d.get("Labels") or {}),
            exposed_ports=tuple(sorted(d.get("ExposedPorts") or {})),
            volumes=tuple(sorted(d.get("Volumes") or {})),
            stop_signal=d.get("StopSignal") or "",
            healthcheck=dict(d["Healthcheck"]) if d.get("Healthcheck") else None,
            onbuild=tuple(d.get("OnBuild") or ()),
            shell=tuple(d["Shell"]) if d.get("Shell") else None,
            args_escaped=bool(d.get("ArgsEscaped", False)),
            extra={k: v for k, v in d.items() if k not in _CC_KEYS},
        )

    def to_dict(self) -> JSON:
        d: JSON = dict(self.extra)
        if self.user:
            d["User"] = self.user
        if self.exposed_ports:
            d["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            d["Env"] = list(self.env)
        if self.entrypoint is not None:
            d["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            d["Cmd"] = list(self.cmd)
        if self.volumes:
            d["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            d["WorkingDir"] = self.working_dir
        if self.labels:
            d["Labels"] = dict(self.labels)
        if self.stop_signal:
            d["StopSignal"] = self.stop_signal
        if self.args_escaped:
            d["ArgsEscaped"] = True
        if self.healthcheck:
            d["Healthcheck"] = dict(self.healthcheck)
        if self.onbuild:
            d["OnBuild"] = list(self.onbuild)
        if self.shell:
            d["Shell"] = list(self.shell)
        return d

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image config: platform, run config (``config``), rootfs diff_ids and history."""

    architecture: str
    os: str
    config: ContainerConfig = field(default_factory=ContainerConfig)
    diff_ids: tuple[Digest, ...] = ()
    history: tuple[History, ...] = ()
    created: str | None = None
    author: str | None = None
    variant: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes) -> ImageConfig:
        doc = _load(raw, "image config")
        rootfs = doc.get("rootfs") or {}
        if rootfs and rootfs.get("type") != "layers":
            raise InvalidManifest("image config", f"rootfs.type {rootfs.get('type')!r}, want 'layers'")
        known = {"architecture", "os", "config", "rootfs", "history", "created", "author", "variant"}
        return cls(
            architecture=str(doc.get("architecture", "")),
            os=str(doc.get("os", "")),
            config=ContainerConfig.from_dict(doc.get("config")),
            diff_ids=tuple(Digest.parse(x) for x in rootfs.get("diff_ids") or ()),
            history=tuple(History.from_dict(h) for h in doc.get("history") or ()),
            created=doc.get("created"),
            author=doc.get("author"),
            variant=doc.get("variant"),
            extra={k: v for k, v in doc.items() if k not in known},
        )

    def to_dict(self) -> JSON:
        d: JSON = dict(self.extra)
        d["architecture"] = self.architecture
        d["os"] = self.os
        if self.variant:
            d["variant"] = self.variant
        if self.created is not None:
            d["created"] = self.created
        if self.author is not None:
            d["author"] = self.author
        d["config"] = self.config.to_dict()
        d["rootfs"] = {"type": "layers", "diff_ids": [str(x) for x in self.diff_ids]}
        if self.history:
            d["history"] = [h.to_dict() for h in self.history]
        return d

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


def chain_ids(diff_ids: tuple[Digest, ...] | list[Digest]) -> list[Digest]:
    """OCI ChainIDs: ChainID(L0)=DiffID(L0); ChainID(Ln)=sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(Digest.of(f"{out[-1]} {diff_id}".encode()))
    return out
