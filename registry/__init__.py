"""registry: images as data. The bottom layer of pybuild.

Digests, media types, the OCI / Docker v2 model, references, compression codecs,
deterministic layer tars, the local content store (an OCI image layout) and, under
``registry.remote``, the distribution client. Imports nothing from the other pybuild
packages; third-party: requests, zstandard, cryptography, isal (all imported lazily).

Public surface (lazy, PEP 562): Digest, Descriptor, Manifest, Index, ImageConfig,
DirStore, StoreImage, resolve_image, parse_reference, Reference, canonical_json. Modules:
image (resolution, listing), archive (save/load/import), gc (roots, collection), changes.
"""

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
