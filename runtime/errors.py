"""Error base for runtime/. Stdlib only (the CLI imports it eagerly).

Exit codes follow podman: 125 for pybuild's own failure, 126 when the command cannot be
executed, 127 when it is not found.
"""

from __future__ import annotations

from typing import ClassVar


class SandboxError(Exception):
    """Base for everything runtime/ raises on purpose."""

    exit_code: ClassVar[int] = 125
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UnsupportedHost(SandboxError):
    """A kernel feature the run needs is missing (and the user did not opt out)."""


class ExecNotFound(SandboxError):
    exit_code: ClassVar[int] = 127

    def __init__(self, argv0: str) -> None:
        super().__init__(f"exec {argv0}: no such file or directory in the container",
                         hint="check CMD/ENTRYPOINT and the image's PATH")
        self.argv0 = argv0


class ExecDenied(SandboxError):
    exit_code: ClassVar[int] = 126

    def __init__(self, argv0: str, why: str = "permission denied") -> None:
        super().__init__(f"exec {argv0}: {why}")
        self.argv0 = argv0


class UnsafePath(SandboxError):
    """A path from a layer, a context or a mount would escape its root."""

    exit_code: ClassVar[int] = 1

    def __init__(self, entry: str, why: str) -> None:
        super().__init__(f"unsafe path {entry!r}: {why}")
        self.entry, self.why = entry, why


class LayerError(SandboxError):
    """A layer tar that is malformed or hostile."""

    exit_code: ClassVar[int] = 1

    def __init__(self, layer: str, entry: str, why: str, *, hint: str | None = None) -> None:
        where = f" entry {entry!r}" if entry else ""
        super().__init__(f"layer {layer}{where}: {why}", hint=hint)
        self.layer, self.entry, self.why = layer, entry, why
