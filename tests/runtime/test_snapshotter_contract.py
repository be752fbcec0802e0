"""One contract suite for every Snapshotter (DESIGN C4, containerd's testsuite idea): the same
tests run against OverlaySnapshotter and CopySnapshotter. Tests that look at a mounted view
mount inside a private mount namespace of a child process (tests/runtime/snaphelp.py)."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from runtime import snapshots as snap
from runtime.snapshots import (
    CopySnapshotter,
    Mount,
    OverlaySnapshotter,
    SnapshotExists,
    SnapshotInUse,
    SnapshotNotFound,
    SnapshotStateError,
    Snapshotter,
)
from tests.runtime.fsutil import E, make_tar
from tests.runtime.snaphelp import EROFS, mounted_ops


def _layer(snapshotter: Snapshotter, name: str, parent: str | None, entries: list[E]) -> str:
    key = f"extract-{name}"
    snapshotter.prepare(key, parent)
    snapshotter.apply_layer(key, io.BytesIO(make_tar(entries)), layer=name)
    snapshotter.commit(name, key)
    return name


def _files(tree_result: dict[str, list[object]]) -> set[str]:
    return {k for k in tree_result if k != "."}


class SnapshotterContract:
    needs_mount_marks: tuple[pytest.MarkDecorator, ...] = ()

    @pytest.fixture
    def snapshotter(self, tmp_path: Path) -> Snapshotter:
        raise NotImplementedError

    # -- bookkeeping (no mounts needed)
    def test_prepare_commit_stat(self, snapshotter: Snapshotter) -> None:
        snapshotter.prepare("a", None)
        info = snapshotter.stat("a")
        assert (info.kind, info.parent) == ("active", None)
        (snapshotter.path("a") / "hello").write_text("hi")
        snapshotter.commit("base", "a")
        info = snapshotter.stat("base")
        assert (info.kind, info.parent) == ("committed", None)
        snapshotter.prepare("b", "base")
        assert snapshotter.stat("b").parent == "base"
        assert {i.key for i in snapshotter.walk()} == {"base", "b"}
        assert snapshotter.parent_paths("b") == [snapshotter.path("base")]

    def test_commit_makes_key_unusable(self, snapshotter: Snapshotter) -> None:
        snapshotter.prepare("work", None)
        snapshotter.commit("done", "work")
        with pytest.raises(SnapshotNotFound):
            snapshotter.stat("work")
        with pytest.raises(SnapshotNotFound):
            snapshotter.mounts("work")
        with pytest.raises(SnapshotNotFound):
            snapshotter.commit("again", "work")
        with pytest.raises(SnapshotNotFound):
            snapshotter.prepare("child", "work")
        # the key is free again, the committed name is not
        snapshotter.prepare("work", "done")
        with pytest.raises(SnapshotExists):
            snapshotter.prepare("done", None)

    def test_only_active_can_be_committed_and_only_committed_can_be_parent(
            self, snapshotter: Snapshotter) -> None:
        snapshotter.prepare("base-a", None)
        with pytest.raises(SnapshotStateError):
            snapshotter.prepare("child", "base-a")
        snapshotter.commit("base", "base-a")
        snapshotter.view("v", "base")
        with pytest.raises(SnapshotStateError):
            snapshotter.commit("x", "v")
        with pytest.raises(SnapshotStateError):
            snapshotter.commit("y", "base")

    def test_prepare_existing_key_refused(self, snapshotter: Snapshotter) -> None:
        snapshotter.prepare("k", None)
        with pytest.raises(SnapshotExists):
            snapshotter.prepare("k", None)
        with pytest.raises(SnapshotNotFound):
            snapshotter.prepare("k2", "missing-parent")

    def test_remove_with_children_refused(self, snapshotter: Snapshotter) -> None:
        _layer(snapshotter, "l1", None, [E("a", data=b"1")])
        snapshotter.prepare("c", "l1")
        with pytest.raises(SnapshotInUse):
            snapshotter.remove("l1")
        snapshotter.remove("c")
        snapshotter.view("v", "l1")
        with pytest.raises(SnapshotInUse):
            snapshotter.remove("l1")
        snapshotter.remove("v")
        fs = snapshotter.path("l1")
        snapshotter.remove("l1")
        assert not fs.exists()
        assert list(snapshotter.walk()) == []
        with pytest.raises(SnapshotNotFound):
            snapshotter.remove("l1")

    def test_view_mounts_are_readonly(self, snapshotter: Snapshotter) -> None:
        _layer(snapshotter, "l1", None, [E("a", data=b"1")])
        _layer(snapshotter, "l2", "l1", [E("b", data=b"2")])
        for parent in ("l1", "l2"):
            mounts = snapshotter.view(f"v-{parent}", parent)
            assert all(m.readonly for m in mounts)
        assert not any(m.readonly for m in snapshotter.prepare("rw", "l2"))

    def test_concurrent_prepare_of_one_key_has_one_winner(self, snapshotter: Snapshotter) -> None:
        results: list[str] = []

        def worker() -> None:
            try:
                snapshotter.prepare("race", None)
                results.append("ok")
            except SnapshotExists:
                results.append("exists")

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["exists"] * 5 + ["ok"]
        assert [i.key for i in snapshotter.walk()] == ["race"]

    def test_metadata_survives_a_new_instance(self, snapshotter: Snapshotter) -> None:
        _layer(snapshotter, "l1", None, [E("a", data=b"1")])
        again = type(snapshotter)(snapshotter.root)
        assert again.stat("l1").kind == "committed"
        assert (again.path("l1") / "a").read_bytes() == b"1"

    # -- mounted views (need root; overlay also needs overlayfs)
    @pytest.mark.needs_root
    def test_deleted_file_in_child_is_hidden(self, snapshotter: Snapshotter) -> None:
        _layer(snapshotter, "base", None, [E("d", "dir"), E("d/keep", data=b"k"), E("d/gone", data=b"g"),
                                           E("top", data=b"t")])
        mounts = snapshotter.prepare("child", "base")
        mounted_ops(mounts, [["rm", "d/gone"], ["rm", "top"], ["write", "new", "n"]])
        snapshotter.commit("child-c", "child")
        (seen,) = mounted_ops(snapshotter.view("v", "child-c"), [["tree"]])
        assert _files(seen) == {"d", "d/keep", "new"}
        (base_seen,) = mounted_ops(snapshotter.view("vb", "base"), [["tree"]])
        assert _files(base_seen) == {"d", "d/keep", "d/gone", "top"}

    @pytest.mark.needs_root
    def test_view_is_readonly(self, snapshotter: Snapshotter) -> None:
        _layer(snapshotter, "l1", None, [E("a", data=b"1")])
        _layer(snapshotter, "l2", "l1", [E("b", data=b"2")])
        for parent in ("l1", "l2"):
            mounts = snapshotter.view(f"v-{parent}", parent)
            codes = mounted_ops(mounts, [["try_write", "a"], ["try_write", "z"]])
            assert codes == [EROFS, EROFS]
        assert (snapshotter.path("l1") / "a").read_bytes() == b"1"

    @pytest.mark.needs_root
    def test_whiteouts_and_opaque_dirs_from_layers(self, snapshotter: Snapshotter) -> None:
        _layer(snapshotter, "l1", None, [E("a", "dir"), E("a/x", data=b"x"), E("a/y", data=b"y"),
                                         E("b", "dir"), E("b/old", data=b"o"), E("f", data=b"f")])
        _layer(snapshotter, "l2", "l1", [E("a/.wh.x"), E("b", "dir", mode=0o700), E("b/.wh..wh..opq"),
                                         E("b/new", data=b"n"), E(".wh.f")])
        (seen,) = mounted_ops(snapshotter.view("v", "l2"), [["tree"]])
        assert _files(seen) == {"a", "a/y", "b", "b/new"}
        assert seen["b"][1] == 0o700

    @pytest.mark.needs_root
    def test_parent_chain_depth_60(self, snapshotter: Snapshotter) -> None:
        parent = None
        for i in range(60):
            entries = [E(f"f{i}", data=str(i).encode()), E("common", data=f"v{i}".encode())]
            if i:
                entries.append(E(f".wh.f{i - 1}"))
            parent = _layer(snapshotter, f"layer-{i}", parent, entries)
        assert parent is not None
        assert len(snapshotter.parent_paths(parent)) == 59
        mounts = snapshotter.prepare("top", parent)
        seen, = mounted_ops(mounts, [["tree"]])
        assert _files(seen) == {"f59", "common"}
        assert seen["common"][4] == len("v59")


class TestOverlay(SnapshotterContract):
    @pytest.fixture
    def snapshotter(self, tmp_path: Path, request: pytest.FixtureRequest) -> Snapshotter:
        if request.node.get_closest_marker("needs_root") is not None:
            from tests.conftest import have_overlay, skip_or_fail

            if not have_overlay():
                skip_or_fail("overlayfs cannot be mounted here")
        return OverlaySnapshotter(tmp_path / "snapshots")

    @pytest.mark.needs_root
    @pytest.mark.needs_overlay
    def test_150_layers_exceed_a_page_of_options(self, snapshotter: Snapshotter, tmp_path: Path) -> None:
        parent = None
        for i in range(150):
            d = f"extract-{i}"
            snapshotter.prepare(d, parent)
            (snapshotter.path(d) / f"f{i}").write_text(str(i))
            snapshotter.commit(f"L{i}", d)
            parent = f"L{i}"
        mounts = snapshotter.prepare("top", parent)
        assert len(",".join(mounts[0].options)) > snap.PAGE_LIMIT
        seen, = mounted_ops(mounts, [["tree"]])
        assert _files(seen) == {f"f{i}" for i in range(150)}

    @pytest.mark.needs_root
    @pytest.mark.needs_userns
    @pytest.mark.needs_overlay
    def test_mount_and_diff_inside_a_user_namespace(self, snapshotter: Snapshotter) -> None:
        """Rootless shape: the same snapshots mounted by a user-namespace root (userxattr)."""
        from runtime.diff import layer_entries

        _layer(snapshotter, "l1", None, [E("a", "dir"), E("a/x", data=b"x"), E("a/y", data=b"y"),
                                         E("b", "dir"), E("b/old", data=b"o")])
        _layer(snapshotter, "l2", "l1", [E("a/.wh.x"), E("b", "dir"), E("b/.wh..wh..opq"),
                                         E("b/new", data=b"n")])
        mounts = snapshotter.prepare("work", "l2")
        seen, = mounted_ops(mounts, [["tree"]], userns=True)
        assert _files(seen) == {"a", "a/y", "b", "b/new"}
        mounted_ops(mounts, [["rm", "a/y"], ["rm", "b"], ["mkdir", "b"], ["write", "c", "c"]],
                    userns=True)
        entries = [e.path for e in layer_entries(snapshotter, "work")]
        assert entries == ["a", "a/.wh.y", "b", "b/.wh..wh..opq", "c"]

    @pytest.mark.needs_root
    @pytest.mark.needs_overlay
    def test_chdir_fallback_mounts_long_stacks(self, snapshotter: Snapshotter) -> None:
        from tests.runtime.fsutil import run_in_child

        parent = None
        for i in range(120):
            d = f"extract-{i}"
            snapshotter.prepare(d, parent)
            (snapshotter.path(d) / f"f{i}").write_text(str(i))
            snapshotter.commit(f"L{i}", d)
            parent = f"L{i}"
        mounts = snapshotter.view("v", parent)
        names = run_in_child("tests.runtime.test_snapshotter_contract", "_chdir_mount_listing",
                             mounts[0].to_dict(), mountns=True)
        assert set(names) == {f"f{i}" for i in range(120)}


def _chdir_mount_listing(mount: dict[str, object]) -> list[str]:
    import tempfile

    target = tempfile.mkdtemp()
    m = Mount.from_dict(mount)
    snap._mount_overlay_chdir(m.options, target)
    try:
        return sorted(os.listdir(target))
    finally:
        snap.unmount(target)
        os.rmdir(target)


class TestCopy(SnapshotterContract):
    @pytest.fixture
    def snapshotter(self, tmp_path: Path) -> Snapshotter:
        return CopySnapshotter(tmp_path / "snapshots")

    def test_prepare_copies_without_sharing_inodes(self, snapshotter: Snapshotter) -> None:
        _layer(snapshotter, "l1", None, [E("a", data=b"1", mode=0o4755), E("h", "hardlink", link="a"),
                                         E("s", "symlink", link="/etc/passwd")])
        snapshotter.prepare("c", "l1")
        src, dst = snapshotter.path("l1"), snapshotter.path("c")
        assert os.stat(src / "a").st_ino != os.stat(dst / "a").st_ino
        assert os.stat(dst / "a").st_ino == os.stat(dst / "h").st_ino
        assert os.stat(dst / "a").st_mode & 0o7777 == 0o4755
        assert os.readlink(dst / "s") == "/etc/passwd"
        (dst / "a").write_bytes(b"changed")
        assert (src / "a").read_bytes() == b"1"


def test_overlay_mount_options_use_userxattr_by_default(tmp_path: Path) -> None:
    s = OverlaySnapshotter(tmp_path / "s")
    _layer(s, "l1", None, [E("a", data=b"1")])
    (m,) = s.prepare("c", "l1")
    assert m.type == "overlay"
    assert "userxattr" in m.options
    assert f"lowerdir={s.path('l1')}" in m.options
    assert any(o.startswith("upperdir=") for o in m.options)


def test_a_store_keeps_its_driver(tmp_path: Path) -> None:
    OverlaySnapshotter(tmp_path / "s")
    with pytest.raises(snap.SnapshotError):
        CopySnapshotter(tmp_path / "s")
    assert isinstance(snap.default_snapshotter(tmp_path / "s"), OverlaySnapshotter)


@pytest.mark.parametrize("cls", [OverlaySnapshotter, CopySnapshotter])
def test_cleanup_removes_leftovers_of_killed_processes(cls: type, tmp_path: Path) -> None:
    s = cls(tmp_path / "s")
    _layer(s, "keep", None, [E("a", data=b"1")])
    (s.root / ".new-dead").mkdir()
    (s.root / ".trash-9-dead" / "fs").mkdir(parents=True)
    (s.root / "77" / "fs").mkdir(parents=True)          # a snapshot dir no key points to
    assert s.cleanup(min_age=3600) == []                 # too young: may belong to a live process
    assert sorted(s.cleanup(min_age=0)) == [".new-dead", ".trash-9-dead", "77"]
    assert [i.key for i in s.walk()] == ["keep"]
