"""Digest value type, sha256 helpers and a verifying reader.

A Digest is parsed once at the edge and carried as a value (DESIGN C1). VerifyingReader
checks size and digest when the stream reaches EOF, so nothing unverified is trusted.
Imports registry.errors only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

from registry.errors import DigestMismatch, InvalidDigest, SizeMismatch

_HEX = frozenset("0123456789abcdef")
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A parsed ``sha256:<hex>`` digest."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        algo, sep, value = text.partition(":")
        if not sep or algo != "sha256" or len(value) != 64 or not _HEX.issuperset(value):
            raise InvalidDigest(text)
        return cls(algo, value)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: hashlib._Hash) -> Digest:
        return cls("sha256", hasher.hexdigest())

    @property
    def short(self) -> str:
        """The 12-hex form docker prints for IDs."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(text: str) -> bool:
    try:
        Digest.parse(text)
    except InvalidDigest:
        return False
    return True


class VerifyingReader:
    """Wraps a binary stream; raises DigestMismatch/SizeMismatch when EOF is reached.

    Only a full read to EOF verifies; callers that stop early get no guarantee, so every
    consumer in pybuild reads to EOF (or calls ``verify_rest()``).
    """

    def __init__(self, raw: BinaryIO, expected: Digest, size: int | None = None) -> None:
        self._raw = raw
        self._expected = expected
        self._size = size
        self._hasher = hashlib.sha256()
        self._count = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hasher.update(data)
            self._count += len(data)
            if self._size is not None and self._count > self._size:
                raise SizeMismatch(str(self._expected), self._size, self._count)
        if not data or n is None or n < 0:
            self._finish()
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._size is not None and self._count != self._size:
            raise SizeMismatch(str(self._expected), self._size, self._count)
        actual = Digest.from_hasher(self._hasher)
        if actual != self._expected:
            raise DigestMismatch(str(self._expected), str(actual))

    def verify_rest(self) -> None:
        """Read (and hash) whatever is left, then verify."""
        while self.read(CHUNK):
            pass
        self._finish()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
