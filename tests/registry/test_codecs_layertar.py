"""Compression codecs (gzip, zstd, none; streaming both ways) and deterministic layer tars."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import pytest

from registry import mediatypes as mt
from registry.compression import compressor, decompressor, open_sniffed, sniff
from registry.digest import Digest
from registry.layertar import TarEntry, opaque, whiteout, write_layer, write_tar

DATA = bytes(range(256)) * 4096 + b"tail"


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_codec_round_trip_and_determinism(codec: str) -> None:
    outs = []
    for _ in range(2):
        buf = io.BytesIO()
        w = compressor(buf, codec)  # type: ignore[arg-type]
        for i in range(0, len(DATA), 65536):
            w.write(DATA[i:i + 65536])
        w.close()
        assert not buf.closed
        outs.append(buf.getvalue())
    assert outs[0] == outs[1]
    assert sniff(outs[0][:4]) == codec
    back = decompressor(io.BytesIO(outs[0]), codec).read()  # type: ignore[arg-type]
    assert back == DATA
    kind, stream = open_sniffed(io.BytesIO(outs[0]))
    assert kind == codec and stream.read() == DATA


def test_gzip_header_has_no_mtime_or_name() -> None:
    buf = io.BytesIO()
    w = compressor(buf, "gzip")
    w.write(b"abc")
    w.close()
    raw = buf.getvalue()
    assert raw[4:8] == b"\0\0\0\0"         # MTIME
    assert not raw[3] & 0x08               # no FNAME


def test_multi_member_gzip_is_read_whole() -> None:
    raw = gzip.compress(b"one") + gzip.compress(b"two")
    assert decompressor(io.BytesIO(raw), "gzip").read() == b"onetwo"


def _entries() -> list[TarEntry]:
    return [
        TarEntry("usr/bin/tool", "file", mode=0o4755, uid=1000, gid=1000, mtime=2_000_000_000, size=5,
                 data=b"hello", xattrs={"user.k": b"v"}),
        TarEntry("usr", "dir", mode=0o755, mtime=10),
        TarEntry("usr/bin", "dir", mode=0o755, mtime=10),
        TarEntry("usr/bin/link", "hardlink", linkname="usr/bin/tool"),
        TarEntry("lib", "symlink", linkname="usr/lib", mode=0o777),
        TarEntry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
        whiteout("etc/gone"),
        opaque("var/cache"),
    ]


def test_layer_tar_is_deterministic_sorted_pax_numeric(store) -> None:
    a = write_layer(_entries(), store, "gzip", clamp_mtime=1_700_000_000)
    b = write_layer(list(reversed(_entries())), store, "gzip", clamp_mtime=1_700_000_000)
    assert a == b
    assert a.descriptor.media_type == mt.OCI_LAYER_GZIP
    with store.open(a.descriptor.digest) as f:
        raw = gzip.decompress(f.read())
    assert Digest.of(raw) == a.diff_id and len(raw) == a.uncompressed_size
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names, key=lambda n: tuple(n.split("/")))
        tool = tf.getmember("usr/bin/tool")
        assert tool.mode == 0o4755 and (tool.uid, tool.gid) == (1000, 1000)
        assert tool.uname == tool.gname == ""
        assert tool.mtime == 1_700_000_000              # clamped
        assert tool.pax_headers["SCHILY.xattr.user.k"] == "v"
        assert tf.getmember("usr").mtime == 10          # older stays
        assert tf.getmember("etc/.wh.gone").isfile()
        assert tf.getmember("var/cache/.wh..wh..opq").isfile()
        assert tf.getmember("dev/null").ischr()
        assert tf.getmember("usr/bin/link").islnk()


def test_write_tar_reads_file_sources(tmp_path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"z" * 1000)
    buf = io.BytesIO()
    write_tar([TarEntry("f", "file", size=1000, source=src)], buf)
    raw = buf.getvalue()
    assert len(raw) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.extractfile("f").read() == b"z" * 1000  # type: ignore[union-attr]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_bytes_do_not_depend_on_write_sizes(codec: str) -> None:
    """ISA-L deflate output depends on input chunking; the codec wrapper must hide that."""
    data = os.urandom(3 << 20) + b"layer text " * 200_000
    digests = set()
    for size in (512, 4096, 65536, 1 << 20, len(data)):
        out = io.BytesIO()
        w = compressor(out, codec)
        for i in range(0, len(data), size):
            w.write(data[i:i + size])
        w.close()
        digests.add(hashlib.sha256(out.getvalue()).hexdigest())
        out.seek(0)
        assert decompressor(out, codec).read() == data
    assert len(digests) == 1


# -- the header encoder and the threaded layer writer -------------------------------------------
from registry import layertar  # noqa: E402
from registry.compression import REBLOCK, block_compressor  # noqa: E402
from registry.layertar import _header_tarfile, header  # noqa: E402

_NAMES = ["f", "a" * 99, "a" * 100, "a" * 101, "d/" + "x" * 150 + "/y", "ünï/çødé", "bad-\udcff-utf8",
          "sp ace/new\nline", "x" * 300]


def _header_cases() -> list[TarEntry]:
    cases = []
    for name in _NAMES:
        for kind in ("file", "dir", "symlink", "hardlink", "char", "block", "fifo"):
            link = {"symlink": "../" + name, "hardlink": name}.get(kind, "")
            cases.append(TarEntry(name, kind, size=7 if kind == "file" else 0,  # type: ignore[arg-type]
                                  linkname=link, devmajor=8, devminor=1))
    big = [0, 1, 0o7777777, 0o10000000, 2**32, -1]
    for i, v in enumerate(big):
        cases.append(TarEntry(f"ids{i}", "file", uid=v, gid=big[-1 - i], mode=0o7777 if i % 2 else 0o600))
    for size in (0, 8**11 - 1, 8**11, 2**40):
        cases.append(TarEntry("sz", "file", size=size))
    cases += [
        TarEntry("x", "file", xattrs={"user.a": b"1", "security.capability": b"\x01\x00\x00\x02"}),
        TarEntry("bin", "dir", xattrs={"user.bin": b"\xff\xfe\x00", "trusted.t": b"v" * 1000}),
        TarEntry("dev/big", "char", devmajor=0o7777777, devminor=0),
        TarEntry("l", "symlink", linkname="ü" * 40),
    ]
    return cases


@pytest.mark.parametrize("mtime", [0, 1_700_000_000, 8**11 - 1, 8**11, 2**40])
def test_header_encoder_matches_tarfile(mtime: int) -> None:
    """The fast encoder is byte-identical to tarfile's PAX writer (layer digests depend on it)."""
    for entry in _header_cases():
        assert header(entry, mtime) == _header_tarfile(entry, mtime), entry


def test_header_encoder_refuses_what_tarfile_refuses() -> None:
    for entry in (TarEntry("dev/x", "block", devmajor=8**7), TarEntry("dev/y", "char", devminor=-1)):
        with pytest.raises(ValueError):
            _header_tarfile(entry, 0)
        with pytest.raises(ValueError):
            header(entry, 0)
    odd = TarEntry("f", "file", mtime=0)
    assert header(odd, 1.5) == _header_tarfile(odd, 1.5)  # type: ignore[arg-type]


def _big_tree(tmp_path) -> list[TarEntry]:  # type: ignore[no-untyped-def]
    """~6 MiB over files of awkward sizes (block boundaries fall inside files and headers)."""
    entries = [TarEntry("d", "dir", mode=0o755, mtime=5)]
    for i, size in enumerate((0, 1, 511, 512, 513, REBLOCK - 512, REBLOCK + 1, 3 * REBLOCK + 77, 12345)):
        p = tmp_path / f"src{i}"
        p.write_bytes((b"%d-layer-bytes " % i) * (size // 14) + os.urandom(size % 14))
        entries.append(TarEntry(f"d/f{i}", "file", size=size, source=p, mtime=7,
                                xattrs={"user.i": b"%d" % i}))
    entries.append(TarEntry("d/mem", "file", size=5, data=b"hello"))
    return entries


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_threaded_layer_equals_inline_and_reference(store, tmp_path, monkeypatch, codec: str) -> None:
    """The codec thread changes nothing: threaded, inline and write_tar + compressor() give the
    same blob and diff_id."""
    entries = _big_tree(tmp_path)
    assert sum(e.size for e in entries) > layertar.THREADED_MIN
    threaded = write_layer(entries, store, codec)  # type: ignore[arg-type]
    monkeypatch.setattr(layertar, "THREADED_MIN", 1 << 62)
    inline = write_layer(entries, store, codec)  # type: ignore[arg-type]
    assert threaded == inline
    raw = io.BytesIO()
    write_tar(entries, raw)
    out = io.BytesIO()
    w = compressor(out, codec)  # type: ignore[arg-type]
    for i in range(0, len(raw.getvalue()), 4096):
        w.write(raw.getvalue()[i:i + 4096])
    w.close()
    assert Digest.of(raw.getvalue()) == threaded.diff_id
    assert len(raw.getvalue()) == threaded.uncompressed_size
    assert Digest.of(out.getvalue()) == threaded.descriptor.digest
    with tarfile.open(fileobj=io.BytesIO(raw.getvalue())) as tf:
        for e in entries:
            if e.kind == "file" and e.source is not None:
                assert tf.extractfile(e.path).read() == e.source.read_bytes()  # type: ignore[union-attr]


def test_block_compressor_fed_blocks_equals_compressor() -> None:
    data = os.urandom(REBLOCK) + b"text " * 400_000
    a, b = io.BytesIO(), io.BytesIO()
    w = compressor(a, "gzip")
    w.write(data)
    w.close()
    raw = block_compressor(b, "gzip")
    for i in range(0, len(data), REBLOCK):
        raw.write(data[i:i + REBLOCK])
    raw.close()
    assert a.getvalue() == b.getvalue()


def _ingest_leftovers(store) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.name for p in store.ingest_dir.iterdir())


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("threaded", [True, False])
def test_write_failure_leaves_nothing(store, tmp_path, monkeypatch, threaded: bool) -> None:
    """A source that vanishes mid-layer: the error surfaces, no blob is committed, the codec
    threads are gone, the switch interval is restored, and the abandoned codec writes nothing
    when it is finalized (its descriptor is closed by then)."""
    import gc
    import sys
    import threading

    if not threaded:
        monkeypatch.setattr(layertar, "THREADED_MIN", 1 << 62)
    entries = _big_tree(tmp_path)
    entries.append(TarEntry("zz/gone", "file", size=10, source=tmp_path / "does-not-exist"))
    from registry.store import BlobWriter

    late: list[int] = []
    failed = False
    real = BlobWriter.write

    def write(self, data):  # type: ignore[no-untyped-def]
        if failed:
            late.append(len(data))   # a write after the ingest closed its descriptor
        return real(self, data)

    monkeypatch.setattr(BlobWriter, "write", write)
    before = set(store.walk())
    interval = sys.getswitchinterval()
    try:
        write_layer(entries, store, "gzip")
    except FileNotFoundError:
        failed = True    # not pytest.raises: its traceback would keep the abandoned codec alive
    else:
        pytest.fail("no error")
    gc.collect()
    assert late == []
    assert set(store.walk()) == before
    assert _ingest_leftovers(store) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("pybuild-layer")]
    assert sys.getswitchinterval() == interval


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_threaded_store_failure_is_raised(store, tmp_path, monkeypatch) -> None:
    """The store write failing in the writer thread (disk full) stops the layer with that error."""
    import errno

    from registry.store import BlobWriter

    real = BlobWriter.write

    def write(self, data):  # type: ignore[no-untyped-def]
        if self.written > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(BlobWriter, "write", write)
    before = set(store.walk())
    try:
        write_layer(_big_tree(tmp_path), store, "gzip")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        pytest.fail("no error")
    import gc

    gc.collect()
    assert set(store.walk()) == before
    assert _ingest_leftovers(store) == []


def test_shrunk_source_is_padded(tmp_path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    buf = io.BytesIO()
    write_tar([TarEntry("f", "file", size=REBLOCK + 10, source=src)], buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.extractfile("f").read() == b"abc" + bytes(REBLOCK + 7)  # type: ignore[union-attr]
