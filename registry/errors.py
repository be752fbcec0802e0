"""Error base for registry/: everything the package raises on purpose subclasses RegistryError.

Stdlib only (the CLI imports this eagerly; see DESIGN C5/C9). Messages are lowercase,
"what failed: why", name the digest/reference/path, and never contain secrets.
"""

from __future__ import annotations

from typing import ClassVar


class RegistryError(Exception):
    """Base for everything registry/ raises on purpose."""

    exit_code: ClassVar[int] = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class InvalidDigest(RegistryError):
    def __init__(self, text: str) -> None:
        super().__init__(f"invalid digest {text!r}: want sha256:<64 lowercase hex>")
        self.text = text


class DigestMismatch(RegistryError):
    def __init__(self, expected: str, actual: str, *, what: str = "blob") -> None:
        super().__init__(f"{what} {expected}: content has digest {actual}")
        self.expected, self.actual = expected, actual


class SizeMismatch(RegistryError):
    def __init__(self, digest: str, expected: int, actual: int) -> None:
        super().__init__(f"blob {digest}: expected {expected} bytes, got {actual}")
        self.digest, self.expected, self.actual = digest, expected, actual


class BlobNotFound(RegistryError):
    def __init__(self, digest: object) -> None:
        super().__init__(f"blob {digest} not found in store")
        self.digest = digest


class InvalidReference(RegistryError):
    exit_code: ClassVar[int] = 1

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"invalid reference {text!r}: {why}")
        self.text, self.why = text, why


class ImageNotFound(RegistryError):
    """A name or ID that the local store does not know."""

    def __init__(self, name: str, *, hint: str | None = None) -> None:
        super().__init__(f"no such image: {name}", hint=hint)
        self.name = name


class ImageInUse(RegistryError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"image {name} is in use: {why}", hint="use -f to remove it anyway")
        self.name = name


class InvalidManifest(RegistryError):
    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"invalid {what}: {why}")


class StoreCorrupt(RegistryError):
    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"store corrupt at {path}: {why}",
                         hint="run `pybuild system check` or remove the damaged entry")


class UnsupportedMediaType(RegistryError):
    def __init__(self, media_type: str, *, where: str = "") -> None:
        at = f" in {where}" if where else ""
        super().__init__(f"unsupported media type {media_type!r}{at}")
        self.media_type = media_type


class ArchiveError(RegistryError):
    """A save/load/import archive that is malformed or hostile."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
