"""apply(diff(x)) == x for a table of changes, for both snapshotters, and the overlay diff
(read from the upper dir) equals the copy diff (a walk against the parent): the same OCI tar
entries. Changes are made through the mounted snapshot in a private mount namespace, so the
overlay upper holds what the kernel really writes (whiteout devices, opaque xattrs)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from registry.layertar import TarEntry, write_tar
from runtime.diff import diff_entries_equal, layer_entries
from runtime.snapshots import CopySnapshotter, OverlaySnapshotter, Snapshotter
from runtime.unpack import apply_layer
from tests.runtime.fsutil import E, make_tar, tree
from tests.runtime.snaphelp import mounted_ops

EPOCH = 1700000000

BASE = [
    E("data", "dir"), E("data/a", data=b"a"), E("data/b", data=b"b"), E("data/sub", "dir"),
    E("data/sub/c", data=b"c"),
    E("etc", "dir"), E("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    E("gone", "dir"), E("gone/x", data=b"x"), E("gone/deep", "dir"), E("gone/deep/y", data=b"y"),
    E("re", "dir"), E("re/old1", data=b"1"), E("re/old2", data=b"2"),
    E("f_chmod", data=b"m", mode=0o644), E("f_chown", data=b"o"), E("f_mtime", data=b"t"),
    E("f_rename", data=b"r"), E("usr", "dir"), E("usr/bin", "dir"),
    E("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
]

CASES: dict[str, list[list[Any]]] = {
    "add": [["write", "new.txt", "hello"], ["mkdir", "newdir/sub"], ["write", "newdir/sub/x", "x"]],
    "delete_lower_file": [["rm", "data/a"]],
    "delete_lower_dir": [["rm", "gone"]],
    "recreate_dir_opaque": [["rm", "re"], ["mkdir", "re"], ["write", "re/new", "n"]],
    "chmod_only": [["chmod", "f_chmod", 0o600]],
    "chown_only": [["chown", "f_chown", 1000, 1001]],
    "symlink": [["symlink", "../etc/passwd", "data/lnk"]],
    "hardlink_new": [["write", "h1", "data"], ["link", "h1", "h2"]],
    "hardlink_lower": [["link", "data/b", "data/b2"]],
    "rename": [["rename", "f_rename", "f_renamed"]],
    "mtime_only": [["touch", "f_mtime", 1600000000]],
    "file_to_dir": [["rm", "data/a"], ["mkdir", "data/a"], ["write", "data/a/in", "i"]],
    "dir_to_file": [["rm", "data/sub"], ["write", "data/sub", "now a file"]],
    "append": [["append", "etc/passwd", "app:x:1000:1000::/app:/bin/sh\n"]],
    "deep_change": [["write", "data/sub/c", "changed"]],
}


def _snapshotter(kind: str, root: Path) -> Snapshotter:
    if kind == "overlay":
        from tests.conftest import have_overlay, skip_or_fail

        if not have_overlay():
            skip_or_fail("overlayfs cannot be mounted here")
        return OverlaySnapshotter(root)
    return CopySnapshotter(root)


def _base(sn: Snapshotter) -> str:
    sn.prepare("base-x", None)
    sn.apply_layer("base-x", io.BytesIO(make_tar(BASE)), layer="base")
    sn.commit("base", "base-x")
    return "base"


def _clamped(entries: list[TarEntry]) -> list[TarEntry]:
    from dataclasses import replace

    return [replace(e, mtime=min(e.mtime, EPOCH)) for e in entries]


def _tar(entries: list[TarEntry]) -> bytes:
    buf = io.BytesIO()
    write_tar(entries, buf, clamp_mtime=None)
    return buf.getvalue()


def _without_root(t: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in t.items() if k != "."}


def _changed(kind: str, root: Path, case: str) -> tuple[Snapshotter, dict[str, Any], list[TarEntry]]:
    sn = _snapshotter(kind, root)
    base = _base(sn)
    mounts = sn.prepare("work", base)
    (after,) = mounted_ops(mounts, [*CASES[case], ["tree"]])
    return sn, _without_root(after), list(layer_entries(sn, "work"))


@pytest.mark.needs_root
@pytest.mark.parametrize("kind", ["overlay", "copy"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_apply_of_diff_reproduces_the_change(kind: str, case: str, tmp_path: Path) -> None:
    sn, expected, entries = _changed(kind, tmp_path / "snaps", case)
    layer = _tar(entries)
    # 1. onto a plain directory holding the base (the apply-mode unpacker)
    flat = tmp_path / "flat"
    flat.mkdir()
    apply_layer(io.BytesIO(make_tar(BASE)), flat)
    apply_layer(io.BytesIO(layer), flat)
    got = {k: list(_jsonish(v)) for k, v in tree(flat, mtimes=False).items() if k != "."}
    assert got == expected
    # 2. as a layer of the same snapshotter (overlay: whiteout devices and opaque xattrs)
    sn.prepare("replay-x", "base")
    sn.apply_layer("replay-x", io.BytesIO(layer), layer="diff")
    sn.commit("replay", "replay-x")
    (seen,) = mounted_ops(sn.view("replay-view", "replay"), [["tree"]])
    assert _without_root(seen) == expected


def _jsonish(v: tuple[Any, ...]) -> list[Any]:
    from tests.runtime.snaphelp import _jsonable

    return _jsonable(v)


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.parametrize("case", sorted(CASES))
def test_overlay_diff_equals_copy_diff(case: str, tmp_path: Path) -> None:
    _, t1, overlay = _changed("overlay", tmp_path / "o", case)
    _, t2, copy = _changed("copy", tmp_path / "c", case)
    assert t1 == t2
    a, b = _clamped(overlay), _clamped(copy)
    assert diff_entries_equal(a, b), "\n".join(
        [f"overlay: {[(e.path, e.kind, e.linkname) for e in a]}",
         f"copy:    {[(e.path, e.kind, e.linkname) for e in b]}"])
    assert a, "a change must give a non-empty layer"


@pytest.mark.needs_root
@pytest.mark.needs_overlay
def test_overlay_diff_shapes(tmp_path: Path) -> None:
    """The translations the layer format needs, checked on the entries themselves."""
    sn, _, entries = _changed("overlay", tmp_path / "o", "recreate_dir_opaque")
    names = [e.path for e in entries]
    assert names == ["re", "re/.wh..wh..opq", "re/new"]
    _, _, entries = _changed("overlay", tmp_path / "o2", "delete_lower_dir")
    assert [e.path for e in entries] == [".wh.gone"]
    _, _, entries = _changed("overlay", tmp_path / "o3", "hardlink_new")
    kinds = {e.path: (e.kind, e.linkname) for e in entries}
    assert kinds == {"h1": ("file", ""), "h2": ("hardlink", "h1")}
    _, _, entries = _changed("overlay", tmp_path / "o4", "chmod_only")
    (only,) = entries
    assert (only.path, only.kind, only.mode, only.size) == ("f_chmod", "file", 0o600, 1)


def test_write_diff_is_deterministic_and_clamped(tmp_path: Path) -> None:
    """Same upper dir → same bytes (both digests); SOURCE_DATE_EPOCH-style clamping."""
    import tarfile

    from registry.store import DirStore
    from runtime.diff import write_diff

    sn = OverlaySnapshotter(tmp_path / "s")
    sn.prepare("w", None)
    up = sn.upper_dir("w")
    (up / "b").mkdir()
    (up / "b" / "z").write_text("z")
    (up / "a").write_text("a")
    blobs = [write_diff(DirStore(tmp_path / f"st{i}"), sn, "w", codec=codec, clamp_mtime=EPOCH)
             for i, codec in enumerate(["gzip", "gzip", "zstd", "zstd"])]
    assert blobs[0] == blobs[1] and blobs[2] == blobs[3]
    assert blobs[0].diff_id == blobs[2].diff_id        # the same tar under both codecs
    store = DirStore(tmp_path / "st0")
    import gzip

    with store.open(blobs[0].descriptor.digest) as f, \
            tarfile.open(fileobj=io.BytesIO(gzip.decompress(f.read())), mode="r:") as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == ["a", "b", "b/z"]
    assert all(m.mtime == EPOCH and m.uname == "" for m in members)


@pytest.mark.needs_root
def test_trusted_xattr_overlay_snapshots(tmp_path: Path) -> None:
    """The trusted.overlay.* flavour (no userxattr) also stacks whiteouts and opaque dirs."""
    from tests.conftest import have_overlay, skip_or_fail

    if not have_overlay():
        skip_or_fail("overlayfs cannot be mounted here")
    sn = OverlaySnapshotter(tmp_path / "s", xattr_ns="trusted")
    base = _base(sn)
    layer = make_tar([E("data/.wh.a"), E("re", "dir"), E("re/.wh..wh..opq"), E("re/n", data=b"n")])
    sn.prepare("l2-x", base)
    sn.apply_layer("l2-x", io.BytesIO(layer), layer="l2")
    sn.commit("l2", "l2-x")
    assert os.getxattr(sn.path("l2") / "re", "trusted.overlay.opaque") == b"y"
    mounts = sn.prepare("work", "l2")
    assert "userxattr" not in mounts[0].options
    (seen,) = mounted_ops(mounts, [["rm", "data/b"], ["tree"]])
    names = {k for k in seen if k != "."}
    assert {"data/a", "data/b", "re/old1"}.isdisjoint(names) and {"re/n", "data/sub/c"} <= names
    assert [e.path for e in layer_entries(sn, "work")] == ["data", "data/.wh.b"]
