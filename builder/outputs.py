"""Build outputs: ``--push`` (every tag, registry.remote) and ``-o`` type=oci|docker (an archive,
registry.archive), type=local (the image's filesystem in a directory) or type=tar (as one tar;
``dest=-`` is stdout). Filesystems are applied layer by layer with runtime.unpack (whiteouts honoured,
every path inside the destination). Imports builder, registry and runtime."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from builder import progress as ev
from builder.errors import UsageError
from builder.options import OutputSpec
from registry.store import DirStore

if TYPE_CHECKING:
    from builder.result import BuildResult
    from registry.archive import Format
    from registry.image import StoreImage


def push_tags(store: DirStore, result: BuildResult, progress: ev.Progress) -> dict[str, str]:
    """Push every tag of the build; returns tag → pushed manifest digest."""
    from registry.remote.push import push

    if not result.tags:
        raise UsageError("--push needs at least one -t NAME to push to")
    out: dict[str, str] = {}
    for tag in result.tags:
        progress.emit(ev.Note(f"pushing {tag}"))
        out[tag] = str(push(store, tag))
    return out


def write_outputs(store: DirStore, result: BuildResult, outputs: Sequence[OutputSpec],
                  progress: ev.Progress) -> None:
    for spec in outputs:
        if spec.type == "image":
            if spec.attrs.get("push") == "true":
                push_tags(store, result, progress)
            continue
        if spec.type == "registry":
            push_tags(store, result, progress)
            continue
        assert spec.dest is not None
        progress.emit(ev.Note(f"exporting {spec.type} to {spec.dest}"))
        if spec.type in ("oci", "docker"):
            _archive(store, result, spec)
        elif spec.type == "local":
            _local(store, result, Path(spec.dest))
        elif spec.type == "tar":
            _tar(store, result, spec.dest)


def _image(store: DirStore, result: BuildResult) -> StoreImage:
    from registry.image import StoreImage

    return StoreImage(store, result.manifest, result.tags)


def _archive(store: DirStore, result: BuildResult, spec: OutputSpec) -> None:
    from registry.archive import SaveItem, save, save_to_path

    fmt: Format = "oci-archive" if spec.type == "oci" else "docker-archive"
    item = SaveItem(_image(store, result), tuple(result.tags))
    if spec.dest == "-":
        save(store, [item], sys.stdout.buffer, fmt=fmt)
        return
    save_to_path(store, [item], Path(str(spec.dest)), fmt=fmt)


def _local(store: DirStore, result: BuildResult, dest: Path) -> None:
    """The image's root filesystem, unpacked into ``dest`` (created; must be empty if it exists)."""
    from runtime.unpack import apply_layer

    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise UsageError(f"--output type=local: {dest} is not empty")
    image = _image(store, result)
    for layer in image.layers():
        with layer.open_uncompressed() as plain:
            apply_layer(plain, dest, layer=str(layer.digest))
            while plain.read(1 << 20):      # to EOF: the blob digest is verified there
                pass


def _tar(store: DirStore, result: BuildResult, dest: str) -> None:
    """The image's root filesystem as a tar (numeric owners, sorted)."""
    with tempfile.TemporaryDirectory(prefix="pybuild-export-", dir=store.subdir("tmp")) as tmp:
        root = Path(tmp) / "rootfs"
        _local(store, result, root)
        to_stdout = dest == "-"
        out = sys.stdout.buffer if to_stdout else open(dest, "wb")  # noqa: SIM115
        try:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(_walk(root)):
                    rel = os.path.relpath(path, root)
                    info = tar.gettarinfo(path, arcname=rel)
                    info.uname = info.gname = ""
                    if info.isreg():
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
        finally:
            if not to_stdout:
                out.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(root)


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [str(Path(dirpath) / name) for name in dirnames + filenames]
    return out
