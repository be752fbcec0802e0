"""runtime.unpack: what a layer can hold (modes, owners, xattrs, links, devices, sparse files,
long names, sub-second mtimes), checked against GNU tar's own extraction; whiteouts and opaque
directories in apply mode and as overlay markers; rootless behaviour in a user namespace."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from runtime.errors import LayerError
from runtime.unpack import ReadAhead, TarReader, apply_layer, extract_tar, unpack_overlay_layer
from tests.runtime.fsutil import E, make_tar, run_in_child, tree, tree_diff


def _gnu_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "f").write_text("hi")
    os.link(src / "a" / "f", src / "a" / "hl")
    os.symlink("../a/f", src / "a" / "b" / "sl")
    os.symlink("/etc/passwd", src / "abs")
    os.chmod(src / "a" / "f", 0o4755)
    (src / "sgid").write_text("g")
    os.chmod(src / "sgid", 0o2711)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    os.mkfifo(src / "fifo")
    os.setxattr(src / "a" / "f", "user.test", b"v\x00\xff")
    deep = src / ("d" * 60) / ("e" * 60) / ("f" * 60)
    deep.mkdir(parents=True)
    (deep / ("name-" + "x" * 150)).write_text("long")
    (src / "big").write_bytes(os.urandom(3 << 20))
    with open(src / "sparse", "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"middle")
    if os.geteuid() == 0:
        os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chown(src / "a" / "b", 33, 44)
        os.chown(src / "abs", 5, 6, follow_symlinks=False)
    os.chmod(src / "a", 0o2775)
    for p in (src / "a" / "b", src / "a"):
        os.utime(p, (978307200, 978307200))
    return src


@pytest.mark.parametrize("fmt", ["--format=posix", "--format=gnu"])
def test_matches_gnu_tar(tmp_path: Path, fmt: str) -> None:
    src = _gnu_tree(tmp_path)
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", fmt, "--xattrs", "--sparse", "-cf", str(archive), "-C", str(src), "."],
                   check=True)
    gnu, ours = tmp_path / "gnu", tmp_path / "ours"
    gnu.mkdir()
    ours.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-xpf", str(archive), "-C", str(gnu)],
                   check=True)
    with archive.open("rb") as f:
        stats = apply_layer(f, ours, rootless=os.geteuid() != 0)
    assert tree_diff(tree(gnu), tree(ours)) == []
    assert stats.hardlinks == 1 and stats.symlinks == 2
    assert os.stat(ours / "sparse").st_blocks * 512 < (1 << 20), "sparse file written dense"
    assert os.getxattr(ours / "a" / "f", "user.test") == b"v\x00\xff"


def test_sub_second_mtimes_and_late_directory_mtimes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("d")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o555, 1000
        tf.addfile(d)
        f = tarfile.TarInfo("d/f")
        f.pax_headers = {"mtime": "1700000000.123456789"}
        f.size = 1
        tf.addfile(f, io.BytesIO(b"x"))
    apply_layer(io.BytesIO(buf.getvalue()), tmp_path)
    assert os.stat(tmp_path / "d" / "f").st_mtime_ns == 1700000000_123456789
    st = os.stat(tmp_path / "d")
    assert st.st_mtime == 1000, "directory mtime must be set after its children"
    assert st.st_mode & 0o777 == 0o555, "read-only directory mode applied at the end"


def test_whiteouts_in_apply_mode(tmp_path: Path) -> None:
    base = make_tar([E("d", "dir"), E("d/a", data=b"a"), E("d/b", data=b"b"), E("d/sub", "dir"),
                     E("d/sub/x", data=b"x"), E("o", "dir"), E("o/old", data=b"o"), E("o/keep", "dir"),
                     E("o/keep/lower", data=b"l"), E("f", data=b"f")])
    apply_layer(io.BytesIO(base), tmp_path)
    layer = make_tar([E("d/.wh.a"), E("d/.wh.sub"), E(".wh.f"), E(".wh.never-existed"),
                      E("o/keep", "dir"), E("o/keep/new", data=b"n"), E("o/.wh..wh..opq"),
                      E("o/late", data=b"after the marker")])
    stats = apply_layer(io.BytesIO(layer), tmp_path)
    names = set(tree(tmp_path)) - {"."}
    assert names == {"d", "d/b", "o", "o/keep", "o/keep/new", "o/late"}
    assert stats.whiteouts == 4 and stats.opaques == 1


@pytest.mark.needs_root
def test_overlay_mode_markers(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    apply_layer(io.BytesIO(make_tar([E("etc", "dir", mode=0o700, uid=3, gid=4, mtime=123),
                                     E("etc/x", data=b"x")])), lower)
    upper = tmp_path / "upper"
    upper.mkdir()
    layer = make_tar([E("etc/.wh.x"), E("new", "dir"), E("new/.wh..wh..opq"), E("gone", data=b"g"),
                      E(".wh.gone2"), E("re", "dir")])
    stats = unpack_overlay_layer(io.BytesIO(layer), upper, lowers=[lower])
    st = os.lstat(upper / "etc" / "x")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(upper / "new", "user.overlay.opaque") == b"y"
    # an implied parent takes the lower layer's metadata, so the merged view does not change
    est = os.stat(upper / "etc")
    assert (est.st_mode & 0o7777, est.st_uid, est.st_gid, est.st_mtime) == (0o700, 3, 4, 123)
    assert stats.whiteouts == 2 and stats.opaques == 1


def test_overlay_mode_dir_over_whiteout_becomes_opaque(tmp_path: Path) -> None:
    (tmp_path / "lower").mkdir()
    layer = make_tar([E(".wh.d"), E("d", "dir"), E("d/n", data=b"n")])
    (tmp_path / "upper").mkdir()
    unpack_overlay_layer(io.BytesIO(layer), tmp_path / "upper", lowers=[tmp_path / "lower"],
                         xattr_ns="user")
    assert os.getxattr(tmp_path / "upper" / "d", "user.overlay.opaque") == b"y"


def test_overlay_mode_bottom_layer_has_no_markers(tmp_path: Path) -> None:
    layer = make_tar([E(".wh.gone"), E("d", "dir"), E("d/.wh..wh..opq"), E("d/f", data=b"f")])
    stats = unpack_overlay_layer(io.BytesIO(layer), tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["d", "d/f"]
    assert os.listxattr(tmp_path / "d") == []
    assert stats.whiteouts == 1 and stats.opaques == 1


def test_overlay_mode_xattr_whiteouts_when_mknod_is_refused(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.mknod

    def no_whiteout_devices(path: str, mode: int = 0o600, device: int = 0, *,
                            dir_fd: int | None = None) -> None:
        if stat.S_ISCHR(mode) and device == 0:
            raise PermissionError(1, "Operation not permitted")
        real(path, mode, device, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mknod", no_whiteout_devices)
    (tmp_path / "lower").mkdir()
    (tmp_path / "upper").mkdir()
    unpack_overlay_layer(io.BytesIO(make_tar([E("d", "dir"), E("d/.wh.x")])), tmp_path / "upper",
                         lowers=[tmp_path / "lower"])
    wh = tmp_path / "upper" / "d" / "x"
    assert wh.is_file() and wh.stat().st_size == 0
    assert os.getxattr(wh, "user.overlay.whiteout") == b"y"
    assert os.getxattr(tmp_path / "upper" / "d", "user.overlay.opaque") == b"x"


def test_extract_mode_has_no_whiteouts(tmp_path: Path) -> None:
    extract_tar(io.BytesIO(make_tar([E(".wh.x", data=b"1"), E(".wh..wh..opq", data=b"2")])), tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".wh..wh..opq", ".wh.x"]


def test_replacing_entries(tmp_path: Path) -> None:
    apply_layer(io.BytesIO(make_tar([E("x", "dir"), E("x/in", data=b"1"), E("y", data=b"y"),
                                     E("z", "symlink", link="y")])), tmp_path)
    apply_layer(io.BytesIO(make_tar([E("x", data=b"file now"), E("y", "dir"), E("z", data=b"z")])), tmp_path)
    assert (tmp_path / "x").read_bytes() == b"file now"
    assert (tmp_path / "y").is_dir()
    assert not (tmp_path / "z").is_symlink() and (tmp_path / "z").read_bytes() == b"z"


def test_missing_parents_are_created(tmp_path: Path) -> None:
    apply_layer(io.BytesIO(make_tar([E("a/b/c", data=b"c")])), tmp_path)
    assert (tmp_path / "a" / "b" / "c").read_bytes() == b"c"
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755


def test_truncated_stream_is_an_error(tmp_path: Path) -> None:
    data = make_tar([E("f", data=b"x" * 5000)])
    with pytest.raises(LayerError, match="end of stream"):
        apply_layer(io.BytesIO(data[:2048]), tmp_path)


def test_garbage_header_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="bad tar header"):
        apply_layer(io.BytesIO(b"\x01" * 1024), tmp_path)


def test_reader_drains_the_stream(tmp_path: Path) -> None:
    data = make_tar([E("f", data=b"x")]) + b"\0" * 50000     # trailing padding after the end marker
    stream = io.BytesIO(gzip.compress(data))
    with gzip.GzipFile(fileobj=stream) as g:
        apply_layer(g, tmp_path)
        assert g.read() == b""
    reader = TarReader(io.BytesIO(data))
    assert reader.next() is not None
    assert reader.next() is None
    assert reader.drain() > 0


def test_readahead_passes_errors_on() -> None:
    class Boom(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise OSError(5, "disk on fire")

    ra = ReadAhead(Boom())  # type: ignore[arg-type]
    with pytest.raises(OSError, match="disk on fire"):
        ra.readinto(bytearray(10))
    ra.close()
    ok = ReadAhead(io.BytesIO(b"abc" * 1000))
    assert io.BufferedReader(ok).read() == b"abc" * 1000


def _child_rootless_unpack(data_path: str, target: str) -> dict[str, object]:
    stats = apply_layer(open(data_path, "rb"), Path(target))  # noqa: SIM115
    return {"owners_dropped": stats.owners_dropped, "warnings": list(stats.warnings),
            "uid": os.stat(Path(target) / "mine").st_uid}


@pytest.mark.needs_userns
def test_rootless_unpack_in_a_user_namespace(tmp_path: Path) -> None:
    data = make_tar([E("mine", data=b"m", uid=0, gid=0), E("theirs", data=b"t", uid=33, gid=33),
                     E("dev", "dir"), E("dev/null", "char", dev=(1, 3)),
                     E("setuid", data=b"s", mode=0o4755),
                     E("tx", data=b"x", xattrs={"trusted.secret": b"1", "user.ok": b"2"})])
    (tmp_path / "l.tar").write_bytes(data)
    target = tmp_path / "t"
    target.mkdir()
    out = run_in_child("tests.runtime.test_unpack", "_child_rootless_unpack", str(tmp_path / "l.tar"),
                       str(target), userns=True)
    assert out["owners_dropped"] == 1
    assert (target / "theirs").read_bytes() == b"t"
    assert not (target / "dev" / "null").exists()
    assert (target / "setuid").stat().st_mode & 0o7777 == 0o4755
    assert os.getxattr(target / "tx", "user.ok") == b"2"
    warnings = " ".join(out["warnings"])  # type: ignore[arg-type]
    assert "device node skipped" in warnings and "trusted.secret" in warnings
    shutil.rmtree(target)


def _child_unprivileged_unpack(data_path: str, target: str) -> dict[str, object]:
    stats = apply_layer(open(data_path, "rb"), Path(target))  # noqa: SIM115
    return {"owners_dropped": stats.owners_dropped, "warnings": list(stats.warnings)}


@pytest.mark.needs_root
def test_unprivileged_unpack_keeps_files_as_the_user(tmp_path: Path) -> None:
    """No user namespace at all (an ordinary user): the image's 0:0 becomes the user itself
    (what a later user namespace maps to root); other owners are counted as dropped."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="pybuild-unpriv-", dir="/tmp"))
    try:
        work.chmod(0o777)
        data = make_tar([E("d", "dir", mode=0o555), E("d/mine", data=b"m"),
                         E("theirs", data=b"t", uid=33, gid=33), E("null", "char", dev=(1, 3)),
                         E("d2", "dir"), E("d2/.wh.nothing")])
        (work / "l.tar").write_bytes(data)
        target = work / "t"
        target.mkdir()
        target.chmod(0o777)
        out = run_in_child("tests.runtime.test_unpack", "_child_unprivileged_unpack", str(work / "l.tar"),
                           str(target), user=65534)
        assert out["owners_dropped"] == 1
        for p in (target / "d", target / "d" / "mine", target / "theirs"):
            assert p.stat().st_uid == 65534, p
        assert (target / "d").stat().st_mode & 0o777 == 0o555
        assert not (target / "null").exists()
    finally:
        shutil.rmtree(work)


def test_overlay_mode_keeps_the_tar_order(tmp_path: Path) -> None:
    """Later entries see earlier ones: a second entry with a name replaces the first, a
    hardlink, a whiteout and a symlink of an earlier file all apply in order."""
    (tmp_path / "lower").mkdir()
    (tmp_path / "up").mkdir()
    entries = [E("d", "dir")] + [E(f"d/f{i}", data=str(i).encode()) for i in range(300)]
    entries += [E("d/f1", data=b"second version"), E("d/h", "hardlink", link="d/f2"),
                E("d/.wh.f3"), E("d/f4", "symlink", link="f5"), E("d/f6", "dir"), E("d/f6/in", data=b"x")]
    stats = unpack_overlay_layer(io.BytesIO(make_tar(entries)), tmp_path / "up",
                                 lowers=[tmp_path / "lower"])
    d = tmp_path / "up" / "d"
    assert (d / "f0").read_bytes() == b"0" and (d / "f299").read_bytes() == b"299"
    assert (d / "f1").read_bytes() == b"second version"
    assert os.stat(d / "h").st_ino == os.stat(d / "f2").st_ino
    assert stat.S_ISCHR(os.lstat(d / "f3").st_mode)
    assert os.readlink(d / "f4") == "f5"
    assert (d / "f6" / "in").read_bytes() == b"x"
    assert stats.files == 302 and stats.hardlinks == 1


def test_os_errors_name_the_entry(tmp_path: Path) -> None:
    entries = [E("ok", data=b"1"), E("x" * 300, data=b"2"), E("after", data=b"3")]
    with pytest.raises(LayerError) as err:
        unpack_overlay_layer(io.BytesIO(make_tar(entries)), tmp_path)
    assert err.value.entry == "x" * 300 and "too long" in str(err.value)


# -- the fast header path is tarfile's own answer ------------------------------------------------
_ATTRS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname",
          "gname", "devmajor", "devminor", "offset", "offset_data", "pax_headers", "sparse")


def _members(raw: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    import runtime.unpack as unpack

    with monkeypatch.context() as m:
        if not fast:
            m.setattr(unpack, "_plain_header", lambda buf, end: None)
        reader = TarReader(io.BytesIO(raw))
        out: list[tuple[object, ...]] = []
        while True:
            try:
                info = reader.next()
            except LayerError as exc:
                out.append(("error", exc.why))
                break
            if info is None:
                break
            out.append((*(getattr(info, a) for a in _ATTRS), reader.offset))
    return out


def _crafted(name: bytes, kind: bytes = b"0", *, prefix: bytes = b"", uid: bytes = b"0000000\0",
             size: bytes = b"00000000003\0", magic: bytes = b"ustar\x0000", chksum: int | None = None,
             data: bytes = b"abc") -> bytes:
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = uid
    block[116:124] = b"0000000\0"
    block[124:136] = size
    block[136:148] = b"00000000001\0"
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[257:265] = magic
    block[345:345 + len(prefix)] = prefix
    value = sum(block) if chksum is None else chksum
    block[148:156] = b"%06o\0 " % value
    return bytes(block) + data + bytes(-len(data) % 512)


def test_fast_header_path_equals_tarfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member of tars made by GNU tar (gnu/ustar/pax), Python's tarfile (ustar prefixes,
    pax) and hand-made odd headers parses to the same TarInfo and next offset either way."""
    src = _gnu_tree(tmp_path)
    tars: list[bytes] = []
    for fmt in ("gnu", "ustar", "pax"):
        out = tmp_path / f"{fmt}.tar"
        proc = subprocess.run(["tar", f"--format={fmt}", "-cf", str(out), "-C", str(src), "."],
                              capture_output=True)
        if proc.returncode == 0:     # ustar refuses the 150-character name: that is fine
            tars.append(out.read_bytes())
    for fmt in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for i, path in enumerate(("a" * 90 + "/" + "b" * 90, "dir/", "ü/x", "p" * 120 + "/q")):
                info = tarfile.TarInfo(path)
                info.type = tarfile.DIRTYPE if path.endswith("/") else tarfile.REGTYPE
                info.size = 0 if info.isdir() else 3
                info.uid = 3_000_000 if i == 1 and fmt != tarfile.USTAR_FORMAT else 7
                tf.addfile(info, None if info.isdir() else io.BytesIO(b"xyz"))
        tars.append(buf.getvalue())
    odd = [
        _crafted(b"plain"),
        _crafted(b"d//", b"5", prefix=b"pre//", size=b"00000000000\0", data=b""),
        _crafted(b"spaces", size=b" 3 \0\0\0\0\0\0\0\0\0"),
        _crafted(b"b256", uid=b"\x80\0\0\0\0\0\0\x07"),
        _crafted(b"badsum", chksum=1),
        _crafted(b"gnumagic", magic=b"ustar  \0"),
        _crafted(b"sym", b"2", size=b"00000000003\0"),   # data after a symlink is not skipped
        _crafted(b"notoctal", size=b"0000000009\0\0"),
        _crafted(b"v7dir/", b"\0", size=b"00000000000\0", data=b""),
    ]
    for block in odd:
        tars.append(block + bytes(1024))
    tars.append(b"".join(odd[:4]) + bytes(1024))
    for raw in tars:
        assert _members(raw, True, monkeypatch) == _members(raw, False, monkeypatch)
    assert any(len(_members(t, True, monkeypatch)) > 10 for t in tars)
