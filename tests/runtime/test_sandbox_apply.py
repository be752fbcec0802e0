"""sandbox.apply: the builder's COPY/ADD/WORKDIR file actions (runtime.fileops) run in a child
with its own mount namespace, on the rootfs overlay mounted there (never on the host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import sandbox
from runtime.errors import SandboxError, UnsafePath
from runtime.snapshots import Mount
from tests.runtime import sandboxkit as kit
from tests.runtime.sandboxkit import Rootfs

busybox_chain, rootfs, no_leaks = kit.busybox_chain, kit.rootfs, kit.no_leaks

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_overlay, pytest.mark.usefixtures("no_leaks")]


def test_copy_lands_in_the_writable_layer_with_owner(rootfs: Rootfs, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.sh").write_text("echo app\n")
    result = sandbox.apply({"op": "copy", "sources": ["app.sh"], "dest": "/opt/app/", "source_root": str(ctx),
                            "owner": [33, 33], "mode": 0o755},
                           root=rootfs.target, rootfs_mounts=rootfs.mounts)
    assert result["files"] == 1
    out = rootfs.upper / "opt" / "app" / "app.sh"
    assert out.read_text() == "echo app\n"
    st = out.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (33, 33, 0o755)
    assert not any(rootfs.target.iterdir())          # the mount point stayed empty on the host


def test_batch_and_extra_mounts(rootfs: Rootfs, tmp_path: Path) -> None:
    other = tmp_path / "stage"
    (other / "out").mkdir(parents=True)
    (other / "out" / "bin").write_text("built")
    view = tmp_path / "view"
    view.mkdir()
    res = sandbox.apply({"op": "batch", "actions": [
        {"op": "mkdir", "path": "/work", "owner": None, "mode": 0o755},
        {"op": "copy", "sources": ["/out/bin"], "dest": "/work/", "source_root": str(view)},
    ]}, root=rootfs.target, rootfs_mounts=rootfs.mounts,
        extra_mounts=[(view, [Mount("bind", str(other), ("rbind", "ro"))])])
    assert len(res) == 2
    assert (rootfs.upper / "work" / "bin").read_text() == "built"
    assert not any(view.iterdir())


def test_escaping_source_is_refused(rootfs: Rootfs, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "link").symlink_to("/etc/shadow")
    with pytest.raises((UnsafePath, SandboxError)):
        sandbox.apply({"op": "copy", "sources": ["../../../etc/shadow"], "dest": "/x",
                       "source_root": str(ctx)}, root=rootfs.target, rootfs_mounts=rootfs.mounts)
    assert not (rootfs.upper / "x").exists()


def test_bad_action_is_a_sandbox_error(rootfs: Rootfs) -> None:
    from runtime.fileops import FileActionError

    with pytest.raises(FileActionError, match="unknown op 'frobnicate'"):
        sandbox.apply({"op": "frobnicate"}, root=rootfs.target, rootfs_mounts=rootfs.mounts)


@pytest.mark.needs_root
@pytest.mark.needs_overlay
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_layer_action_in_a_child_writes_the_same_blob(tmp_path: Path, codec: str) -> None:
    """The file-action child (`python -I -S`) finds the same codecs as the parent: a layer
    committed there (the rootless build path) has the digest an in-process commit gives."""
    from registry.store import DirStore
    from runtime.diff import write_diff
    from runtime.fileops import layer_action
    from runtime.snapshots import OverlaySnapshotter

    store = DirStore(tmp_path / "store")
    sn = OverlaySnapshotter(store.subdir("snapshots"))
    sn.prepare("active", None)
    upper = sn.upper_dir("active")
    (upper / "etc").mkdir()
    (upper / "etc" / "data").write_bytes(b"layer bytes " * 50_000)
    (upper / "etc" / "data").chmod(0o640)
    here = write_diff(store, sn, "active", codec=codec, clamp_mtime=1700000000)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = sandbox.apply(layer_action(str(store.root), str(sn.root), sn.driver, "active", codec=codec,
                                     clamp_mtime=1700000000), root=str(empty))
    assert out["descriptor"]["digest"] == str(here.descriptor.digest)
    assert out["diff_id"] == str(here.diff_id)
