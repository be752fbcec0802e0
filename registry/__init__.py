"""registry: images as data, the bottom layer: digests, media types, the OCI / Docker v2 model,
references, codecs, deterministic layer tars, the local store (an OCI layout) and registry.remote.
Public surface (lazy, PEP 562): Digest, Descriptor, Manifest, Index, ImageConfig, DirStore, StoreImage,
resolve_image, parse_reference, Reference, canonical_json. Imports no other pybuild package;
third-party (requests, zstandard, cryptography, isal) only lazily."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Digest": "registry.digest",
    "Descriptor": "registry.model",
    "Manifest": "registry.model",
    "Index": "registry.model",
    "ImageConfig": "registry.model",
    "canonical_json": "registry.model",
    "DirStore": "registry.store",
    "StoreImage": "registry.image",
    "resolve_image": "registry.image",
    "Reference": "registry.reference",
    "parse_reference": "registry.reference",
}


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'registry' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from registry.digest import Digest
    from registry.image import StoreImage, resolve_image
    from registry.model import Descriptor, ImageConfig, Index, Manifest, canonical_json
    from registry.reference import Reference, parse_reference
    from registry.store import DirStore

__all__ = ["Descriptor", "Digest", "DirStore", "ImageConfig", "Index", "Manifest", "Reference",
           "StoreImage", "canonical_json", "parse_reference", "resolve_image"]
