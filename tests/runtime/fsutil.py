"""Test helpers for the filesystem side of runtime/: tree snapshots, tar builders, and running
a function in a child process inside new namespaces (user and/or mount)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def tree(root: Path, *, mtimes: bool = True, owners: bool = True, xattrs: bool = True,
         skip_overlay_xattrs: bool = True) -> dict[str, tuple[Any, ...]]:
    """A comparable snapshot of a directory tree: path -> (type, mode, uid, gid, size|target|rdev,
    sha256, mtime_ns, xattrs). The root itself is '.'."""
    out: dict[str, tuple[Any, ...]] = {}

    def one(path: Path, rel: str) -> None:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        kind = stat.S_IFMT(st.st_mode)
        extra: Any = None
        digest = None
        if stat.S_ISREG(st.st_mode):
            extra = st.st_size
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
            mode = 0
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
        xa: tuple[tuple[str, bytes], ...] = ()
        if xattrs and not stat.S_ISLNK(st.st_mode):
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError:
                names = []
            xa = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names
                              if not (skip_overlay_xattrs and ".overlay." in n)))
        mt = st.st_mtime_ns if mtimes else None
        out[rel] = (kind, mode, st.st_uid if owners else None, st.st_gid if owners else None,
                    extra, digest, mt, xa)
        if stat.S_ISDIR(st.st_mode):
            for child in sorted(os.listdir(path)):
                one(path / child, child if rel == "." else f"{rel}/{child}")

    one(root, ".")
    return out


def tree_diff(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> list[str]:
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            lines.append(f"{key}: {a.get(key)} != {b.get(key)}")
    return lines


@dataclass
class E:
    """A tar entry for crafted layers: E('a/b', 'file', data=b'x'), E('l', 'symlink', link='/x')."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    link: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 1700000000
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] | None = None


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def make_tar(entries: Iterable[E], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Deterministic tar bytes of crafted entries, in the order given (no sorting, no checks:
    these are meant to be hostile)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.link
            info.devmajor, info.devminor = e.dev
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in e.xattrs.items()}
            if e.kind == "file":
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


_CHILD = r"""
import ctypes, json, os, sys, importlib, traceback
spec = json.loads(sys.stdin.read())
libc = ctypes.CDLL(None, use_errno=True)
mod = importlib.import_module(spec["module"])   # before dropping privileges: the venv is root's
if spec.get("user") is not None:
    os.setgroups([])
    os.setgid(spec["user"])
    os.setuid(spec["user"])
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
uid, gid = os.geteuid(), os.getegid()
flags = 0
if spec["userns"]:
    flags |= CLONE_NEWUSER
if spec["mountns"]:
    flags |= CLONE_NEWNS
if flags and libc.unshare(flags) != 0:
    e = ctypes.get_errno(); raise OSError(e, "unshare: " + os.strerror(e))
if spec["userns"]:
    with open("/proc/self/setgroups", "w") as f: f.write("deny")
    with open("/proc/self/uid_map", "w") as f: f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f: f.write(f"0 {gid} 1")
if spec["mountns"]:
    MS_REC, MS_PRIVATE = 0x4000, 1 << 18
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        e = ctypes.get_errno(); raise OSError(e, "make / rprivate: " + os.strerror(e))
try:
    result = getattr(mod, spec["func"])(*spec["args"])
    out = {"ok": True, "result": result}
except BaseException as exc:
    out = {"ok": False, "type": type(exc).__name__, "error": str(exc), "tb": traceback.format_exc()}
sys.stdout.write("\n@@RESULT@@" + json.dumps(out))
"""


class ChildError(Exception):
    def __init__(self, kind: str, message: str, tb: str) -> None:
        super().__init__(f"{kind}: {message}\n{tb}")
        self.kind, self.message = kind, message


def run_in_child(module: str, func: str, *args: Any, userns: bool = False, mountns: bool = False,
                 user: int | None = None, timeout: float = 60) -> Any:
    """Call module.func(*args) (JSON-serializable in and out) in a fresh Python child that first
    unshares a user namespace (single-id map: 0 -> our uid) and/or a private mount namespace,
    so nothing it mounts is visible to the host; ``user`` first drops to that uid/gid (an
    unprivileged user, no namespace). Raises ChildError with the child's exception."""
    spec = {"module": module, "func": func, "args": list(args), "userns": userns, "mountns": mountns,
            "user": user}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(spec), text=True,
                          capture_output=True, timeout=timeout, env=env, cwd=str(REPO_ROOT))
    marker = proc.stdout.rfind("@@RESULT@@")
    if marker < 0:
        raise ChildError("crash", f"exit {proc.returncode}", proc.stderr)
    out = json.loads(proc.stdout[marker + len("@@RESULT@@"):])
    if not out["ok"]:
        raise ChildError(out["type"], out["error"], out["tb"])
    return out["result"]
