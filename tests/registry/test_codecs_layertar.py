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
