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
