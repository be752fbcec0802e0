"""Assemble an image from layers and a config and store it: config blob, manifest, tag.

The one place pybuild creates manifests for images it makes (import, the offline base
images, and later the builder's commit). Timestamps come from the caller (clamped to
SOURCE_DATE_EPOCH there), so identical inputs give identical digests. Imports registry only.
"""

from __future__ import annotations

import os
import platform as _platform
from collections.abc import Sequence
from datetime import UTC, datetime

from registry import mediatypes as mt
from registry.layertar import LayerBlob
from registry.model import ContainerConfig, Descriptor, History, ImageConfig, Manifest
from registry.store import DirStore

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def host_arch() -> str:
    machine = _platform.machine()
    return _ARCH.get(machine, machine)


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH as an int, or None when unset/empty (invalid values are ignored)."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    try:
        return max(int(value), 0)
    except ValueError:
        return None


def rfc3339(ts: float) -> str:
    """UTC RFC 3339 with 'Z', second precision when ``ts`` is whole (as docker writes)."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    """The creation time to record: SOURCE_DATE_EPOCH when set, else now."""
    epoch = source_date_epoch()
    return rfc3339(epoch if epoch is not None else int(datetime.now(tz=UTC).timestamp()))


def store_image(store: DirStore, config: ImageConfig, layers: Sequence[LayerBlob], *,
                docker_media_types: bool = False, annotations: dict[str, str] | None = None,
                tags: Sequence[str] = ()) -> Descriptor:
    """Write config + manifest for ``layers`` (already ingested) and tag it. Returns the manifest
    descriptor. ``config.diff_ids`` must list the layers' diff_ids in order."""
    if tuple(config.diff_ids) != tuple(layer.diff_id for layer in layers):
        raise ValueError("config.rootfs.diff_ids does not match the layers")
    if docker_media_types:
        config_type, manifest_type = mt.DOCKER_CONFIG, mt.DOCKER_MANIFEST
    else:
        config_type, manifest_type = mt.OCI_CONFIG, mt.OCI_MANIFEST
    config_desc = store.put(config.to_json(), config_type)
    manifest = Manifest(manifest_type, config_desc, tuple(layer.descriptor for layer in layers),
                        annotations or {})
    desc = store.put(manifest.to_json(), manifest_type)
    desc = Descriptor(desc.media_type, desc.digest, desc.size,
                      platform=config.platform)
    if tags:
        for name in tags:
            store.tag(name, desc)
    else:
        store.add_untagged(desc)
    return desc


def single_layer_config(layer: LayerBlob, *, created: str, created_by: str,
                        container: ContainerConfig | None = None, comment: str | None = None,
                        arch: str | None = None) -> ImageConfig:
    return ImageConfig(
        architecture=arch or host_arch(), os="linux",
        config=container or ContainerConfig(),
        diff_ids=(layer.diff_id,),
        history=(History(created=created, created_by=created_by, comment=comment),),
        created=created,
    )
