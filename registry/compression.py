"""Streaming layer codecs, both directions: gzip (python-isal's igzip when installed, else zlib), zstd
(zstandard, imported lazily) and none. Output is deterministic (DESIGN C3): gzip headers carry mtime 0
and no name, zstd a fixed level and worker count. ``compressor`` never closes the stream it writes to.
Imports registry.mediatypes; isal/zstandard lazily."""

from __future__ import annotations

import io
from typing import IO, Any, BinaryIO, Literal, Protocol, cast

from registry import mediatypes as mt

Codec = Literal["gzip", "zstd", "none"]
CODECS: tuple[Codec, ...] = ("gzip", "zstd", "none")
GZIP_LEVEL = 1      # isal level 1: ~470 MB/s here, ratio within 1% of zlib -6's
ZSTD_LEVEL = 3
ZSTD_THREADS = 2    # fixed, not cpu_count(): the bytes must not depend on the machine
REBLOCK = 1 << 20   # gzip input block size (see _Reblock)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def as_codec(name: str) -> Codec:
    """``name`` as a Codec (e.g. from a JSON action); ValueError for anything else."""
    for codec in CODECS:
        if name == codec:
            return codec
    raise ValueError(f"unknown codec {name!r}")


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Readable(Protocol):
    """Any byte source a decompressor can read: a file, a VerifyingReader, a tar member."""

    def read(self, n: int = -1, /) -> bytes: ...


class _NoClose(io.RawIOBase):
    """Lets a codec 'close' its output without closing the caller's stream."""

    def __init__(self, inner: Writable) -> None:
        self._inner = inner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._inner.write(bytes(data) if not isinstance(data, bytes) else data)
        return len(data)


class _Reblock(io.RawIOBase):
    """Feeds the codec fixed-size blocks, so the output depends only on the byte stream.

    ISA-L's deflate (unlike zlib's) emits different bytes for the same input split into
    different write() sizes; without this, a layer's digest would depend on how the tar
    writer happened to chunk its output.
    """

    def __init__(self, inner: BinaryIO, block: int = REBLOCK) -> None:
        self._inner = inner
        self._block = block
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(data)
        self._buf += data
        if len(self._buf) >= self._block:
            view = memoryview(self._buf)
            full = len(self._buf) - len(self._buf) % self._block
            for start in range(0, full, self._block):
                self._inner.write(view[start:start + self._block])
            view.release()
            del self._buf[:full]
        return n

    def close(self) -> None:
        if not self.closed:
            if self._buf:
                self._inner.write(bytes(self._buf))
                self._buf.clear()
            self._inner.close()
        super().close()


def codec_of(media_type: str) -> Codec:
    kind = mt.compression_of(media_type)
    assert kind in CODECS
    return kind


def sniff(head: bytes) -> Codec:
    """The codec of a stream from its first bytes (gzip and zstd magic numbers)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def compressor(out: Writable, codec: Codec, *, level: int | None = None) -> BinaryIO:
    """A writable whose ``close()`` finishes the compressed stream (``out`` stays open)."""
    stream, reblock = _codec_stream(out, codec, level)
    return cast(BinaryIO, _Reblock(stream)) if reblock else stream


def block_compressor(out: Writable, codec: Codec, *, level: int | None = None) -> BinaryIO:
    """The bare codec stream under ``compressor``, for a caller that already writes what
    ``_Reblock`` would pass on: ``REBLOCK``-byte writes, only the last one shorter. Fed that
    way it gives the same bytes as ``compressor`` (registry.layertar's block writer uses it
    to skip one copy of every block). ``close()`` finishes the stream; ``out`` stays open.
    """
    return _codec_stream(out, codec, level)[0]


def _codec_stream(out: Writable, codec: Codec, level: int | None) -> tuple[BinaryIO, bool]:
    """(the codec's writer into ``out``, whether its output depends on write sizes)."""
    sink = _NoClose(out)
    if codec == "none":
        return cast(BinaryIO, io.BufferedWriter(sink, buffer_size=1 << 20)), False
    if codec == "gzip":
        try:
            from isal import igzip
        except ImportError:
            import gzip

            return cast(BinaryIO, gzip.GzipFile(filename="", mode="wb", fileobj=cast(Any, sink),
                                                compresslevel=level or 6, mtime=0)), False
        factory: Any = igzip.IGzipFile  # untyped in isal's stubs
        gz = factory(filename="", mode="wb", fileobj=sink,
                     compresslevel=GZIP_LEVEL if level is None else level, mtime=0)
        return cast(BinaryIO, gz), True
    if codec == "zstd":
        import zstandard

        cctx = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL, threads=ZSTD_THREADS,
                                        write_content_size=False)
        return cast(BinaryIO, cctx.stream_writer(cast(Any, sink), closefd=False)), False
    raise ValueError(f"unknown codec {codec!r}")


def decompressor(raw: Readable, codec: Codec) -> BinaryIO:
    """A readable of the decompressed bytes of ``raw`` (multi-member gzip and multi-frame zstd)."""
    if codec == "none":
        return cast(BinaryIO, raw)
    if codec == "gzip":
        try:
            from isal import igzip
        except ImportError:
            import gzip

            # typeshed also asks the fileobj for seek(); reading never calls it
            return cast(BinaryIO, gzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb"))
        factory: Any = igzip.IGzipFile  # untyped in isal's stubs
        return cast(BinaryIO, factory(fileobj=raw, mode="rb"))
    if codec == "zstd":
        import zstandard

        # zstandard's stub asks for IO[bytes]; it only ever calls read()
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], raw), read_across_frames=True, closefd=False))
    raise ValueError(f"unknown codec {codec!r}")


def open_sniffed(raw: BinaryIO) -> tuple[Codec, BinaryIO]:
    """Decompress a stream whose codec is unknown (``pybuild load``/``import`` of any tarball)."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(Any, raw), 1 << 16)
    codec = sniff(buffered.peek(4)[:4])
    return codec, decompressor(buffered, codec)
