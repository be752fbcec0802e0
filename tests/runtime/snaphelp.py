"""Run filesystem operations on a snapshot's mounted view, in a child process that owns a
private mount namespace (nothing reaches the host's mount table). Used by the snapshotter
contract suite and the diff round-trip tests. Ops are JSON lists:

  ["write", path, text] ["append", path, text] ["mkdir", path] ["rm", path] ["rename", a, b]
  ["chmod", path, mode] ["chown", path, uid, gid] ["symlink", target, path] ["link", src, path]
  ["touch", path, mtime] ["tree"] ["try_write", path] ["mkfifo", path]
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from runtime.snapshots import Mount, mount_all, unmount
from tests.runtime.fsutil import run_in_child, tree


def apply_ops(base: Path, ops: list[list[Any]]) -> list[Any]:
    results: list[Any] = []
    for op in ops:
        kind, args = op[0], op[1:]
        p = base / args[0] if args and kind not in ("symlink",) else None
        if kind == "write":
            assert p is not None
            p.write_text(args[1])
        elif kind == "append":
            assert p is not None
            with p.open("a") as f:
                f.write(args[1])
        elif kind == "mkdir":
            assert p is not None
            p.mkdir(parents=True, exist_ok=True)
        elif kind == "rm":
            assert p is not None
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        elif kind == "rename":
            assert p is not None
            os.rename(p, base / args[1])
        elif kind == "chmod":
            assert p is not None
            os.chmod(p, args[1])
        elif kind == "chown":
            assert p is not None
            os.chown(p, args[1], args[2], follow_symlinks=False)
        elif kind == "symlink":
            os.symlink(args[0], base / args[1])
        elif kind == "link":
            assert p is not None
            os.link(p, base / args[1])
        elif kind == "touch":
            assert p is not None
            os.utime(p, (args[1], args[1]), follow_symlinks=False)
        elif kind == "mkfifo":
            assert p is not None
            os.mkfifo(p)
        elif kind == "tree":
            t = tree(base, mtimes=False)
            results.append({k: _jsonable(v) for k, v in t.items()})
        elif kind == "try_write":
            assert p is not None
            try:
                p.write_text("x")
                results.append(0)
            except OSError as exc:
                results.append(exc.errno)
        else:
            raise ValueError(f"unknown op {kind}")
    return results


def _jsonable(v: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for x in v:
        if isinstance(x, tuple):
            out.append([list(y) if isinstance(y, tuple) else y for y in x])
        elif isinstance(x, bytes):
            out.append(x.decode("latin-1"))
        else:
            out.append(x)
    return out


def _child_mounted_ops(mounts: list[dict[str, Any]], ops: list[list[Any]]) -> list[Any]:
    target = tempfile.mkdtemp(prefix="pybuild-mnt-")
    try:
        mount_all([Mount.from_dict(m) for m in mounts], target)
        try:
            return apply_ops(Path(target), ops)
        finally:
            os.sync()
            unmount(target)
    finally:
        os.rmdir(target)


def mounted_ops(mounts: list[Mount], ops: list[list[Any]], *, userns: bool = False) -> list[Any]:
    """Mount ``mounts`` in a private mount namespace (of a child process) and run ``ops``."""
    return run_in_child("tests.runtime.snaphelp", "_child_mounted_ops", [m.to_dict() for m in mounts],
                        ops, mountns=True, userns=userns)


EROFS = errno.EROFS
