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


class StoreBusy(RegistryError):
    """The store lock could not be taken in time (another pybuild holds it)."""

    def __init__(self, root: str, mode: str) -> None:
        super().__init__(f"store {root} is busy: could not take the {mode} lock",
                         hint="another pybuild (a build, pull or gc) is using the store; retry later")
        self.root = root


class AmbiguousImage(RegistryError):
    def __init__(self, text: str, candidates: int) -> None:
        super().__init__(f"ambiguous image ID prefix {text!r}: matches {candidates} images",
                         hint="give more characters of the ID, or a name")
        self.text = text


class NoMatchingPlatform(RegistryError):
    def __init__(self, what: str, want: str, available: list[str]) -> None:
        have = ", ".join(available) or "none"
        super().__init__(f"{what}: no manifest for platform {want} (available: {have})",
                         hint="pick one with --platform os/arch[/variant]")
        self.want, self.available = want, available


class InvalidChange(RegistryError):
    """A ``--change`` line that is not a supported Dockerfile instruction."""

    exit_code: ClassVar[int] = 125

    def __init__(self, line: str, why: str) -> None:
        super().__init__(f"invalid change {line!r}: {why}")
        self.line = line


class ArchiveError(RegistryError):
    """A save/load/import archive that is malformed or hostile."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
