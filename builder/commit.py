"""Stage -> image: the ImageConfig (docker's fields in OCI form, as BuildKit), history, manifest,
stored and tagged like registry.imagebuild.store_image (index.json untouched when tags are unchanged).
Deterministic: with SOURCE_DATE_EPOCH every time is that epoch, else ``created`` is the last history
entry's, so a fully cached rebuild gives the same digest. Imports builder.state and registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from builder.state import StageState
from registry import mediatypes as mt
from registry.imagebuild import rfc3339
from registry.layertar import LayerBlob
from registry.model import Descriptor, History, ImageConfig, Manifest
from registry.store import REF_NAME, DirStore

_TO_OCI = {mt.DOCKER_LAYER: mt.OCI_LAYER_GZIP, mt.DOCKER_FOREIGN_LAYER: mt.OCI_LAYER_NONDIST_GZIP}


@dataclass(frozen=True, slots=True)
class Committed:
    manifest: Descriptor
    config: ImageConfig
    config_digest: str

    @property
    def image_id(self) -> str:
        return self.config_digest


def image_config(state: StageState, *, labels: Mapping[str, str] | None = None,
                 epoch: int | None = None) -> ImageConfig:
    """The image config of a finished stage (``labels``: --label, applied last)."""
    config = state.config
    if labels:
        config = replace(config, labels={**config.labels, **labels})
    history = _meta_times(list(state.history), int(state.extra.get("base_history", 0)))
    if epoch is not None:
        stamp = rfc3339(epoch)
        history = [replace(h, created=stamp) for h in history]
        created: str | None = stamp
    else:
        created = next((h.created for h in reversed(history) if h.created), None)
    os_name, _, rest = state.platform.partition("/")
    arch, _, variant = rest.partition("/")
    return ImageConfig(architecture=arch, os=os_name, config=config,
                       diff_ids=tuple(state.diff_ids), history=tuple(_fix_history(history, state)),
                       created=created, author=state.author, variant=variant or None)


def _meta_times(history: list[History], start: int) -> list[History]:
    """Metadata entries of this build take the time of the next layer step (as if written
    with it), else of the last one: stable across cached rebuilds, never the base's age."""
    out = list(history)
    pending: list[int] = []
    last: str | None = None
    for i in range(start, len(out)):
        h = out[i]
        if h.empty_layer and h.comment == "pybuild.dockerfile.v0":
            pending.append(i)
            continue
        last = h.created
        for j in pending:
            out[j] = replace(out[j], created=h.created)
        pending = []
    if last is not None:
        for j in pending:
            out[j] = replace(out[j], created=last)
    return out


def _fix_history(history: Sequence[History], state: StageState) -> list[History]:
    """Docker requires as many non-empty history entries as layers; base images from other
    tools sometimes have fewer. Pad at the front rather than write an inconsistent config."""
    layered = sum(1 for h in history if not h.empty_layer)
    missing = len(state.layers) - layered
    if missing > 0:
        return [History(created_by="(layer without history)") for _ in range(missing)] + list(history)
    return list(history)


def finalize(store: DirStore, state: StageState, *, tags: Sequence[str] = (),
             labels: Mapping[str, str] | None = None, epoch: int | None = None) -> Committed:
    """Write config + manifest for the stage and tag it (untagged images stay listed)."""
    config = image_config(state, labels=labels, epoch=epoch)
    layers = [LayerBlob(_oci(layer.descriptor), layer.diff_id, layer.size) for layer in state.layers]
    config_desc = store.put(config.to_json(), mt.OCI_CONFIG)
    manifest = Manifest(mt.OCI_MANIFEST, config_desc, tuple(layer.descriptor for layer in layers))
    desc = store.put(manifest.to_json(), mt.OCI_MANIFEST)
    desc = Descriptor(desc.media_type, desc.digest, desc.size, platform=config.platform)
    # A rebuild that changes nothing leaves index.json untouched (no rewrite, no fsync).
    current = {d.annotations.get(REF_NAME): d.digest for d in store.entries()}
    for name in tags:
        if current.get(name) != desc.digest:
            store.tag(name, desc)
    if not tags and desc.digest not in current.values():
        store.add_untagged(desc)
    return Committed(desc, config, str(config_desc.digest))


def _oci(desc: Descriptor) -> Descriptor:
    media = _TO_OCI.get(desc.media_type)
    if media is None:
        return Descriptor(desc.media_type, desc.digest, desc.size)
    return Descriptor(media, desc.digest, desc.size)
