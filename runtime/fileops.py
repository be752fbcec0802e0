"""The builder's file actions (COPY, ADD, WORKDIR) as plain JSON-serializable dicts run by
``execute(action, root)``, inside the container's mount (and user) namespace, so ownership is
right rootless too. Destinations resolve inside ``root`` (image symlinks relative to the root),
sources inside ``source_root`` when given; files are replaced, never written through.
Imports: stdlib, registry.compression, runtime.pathsafe/unpack/errors.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import lzma
import os
import posixpath
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from runtime import pathsafe
from runtime.errors import SandboxError
from runtime.unpack import extract_tar, is_overlay_xattr, is_rootless

Action = Mapping[str, Any]
_DIR_RO = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class FileActionError(SandboxError):
    """A COPY/ADD/WORKDIR action that cannot be done as asked."""

    exit_code = 1


@dataclass
class _Result:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "dirs": self.dirs, "symlinks": self.symlinks,
                "hardlinks": self.hardlinks, "bytes": self.bytes, "warnings": self.warnings}


def copy_action(sources: list[str], dest: str, *, source_root: str | None = None, workdir: str = "/",
                owner: tuple[int, int] | None = None, preserve_owner: bool = False,
                mode: int | None = None, mtime: int | None = None,
                skip: list[str] | None = None) -> dict[str, Any]:
    """Build a copy action dict (a convenience for the builder)."""
    return {"op": "copy", "sources": list(sources), "dest": dest, "source_root": source_root,
            "workdir": workdir, "owner": list(owner) if owner else None,
            "preserve_owner": preserve_owner, "mode": mode, "mtime": mtime, "skip": list(skip or ())}


def mkdir_action(path: str, *, workdir: str = "/", owner: tuple[int, int] | None = None,
                 mode: int = 0o755) -> dict[str, Any]:
    return {"op": "mkdir", "path": path, "workdir": workdir, "owner": list(owner) if owner else None,
            "mode": mode}


def export_action(src: str, dest: str) -> dict[str, Any]:
    """RUN --mount from=STAGE: copy ``src`` of the rootfs into host directory ``dest``."""
    return {"op": "export", "src": src, "dest": dest}


def extract_action(archive: str, dest: str, *, workdir: str = "/",
                   owner: tuple[int, int] | None = None) -> dict[str, Any]:
    return {"op": "extract", "archive": archive, "dest": dest, "workdir": workdir,
            "owner": list(owner) if owner else None}


def execute(action: Action, root: str | os.PathLike[str]) -> dict[str, Any]:
    """Run one file action against the rootfs at ``root``; returns counts and warnings.

    Actions (build them with copy_action / mkdir_action / extract_action)::

      {"op": "copy", "sources": [...], "dest": "/app/", "workdir": "/", "source_root": "/ctx"|None,
       "owner": [uid, gid]|None, "preserve_owner": false, "mode": 0o755|None, "mtime": int|None,
       "skip": [source paths not to copy]}
      {"op": "mkdir", "path": "/work", "workdir": "/", "owner": [uid, gid]|None, "mode": 0o755}
      {"op": "extract", "archive": "/host/x.tar.gz", "dest": "/opt/", "workdir": "/",
       "owner": [uid, gid]|None}
      {"op": "export", "src": "/path/in/rootfs", "dest": "/existing/host/dir"}

    Raises FileActionError (bad request), UnsafePath/LayerError (hostile input) or OSError.
    """
    op = action.get("op")
    root_fd = pathsafe.open_root(root)
    try:
        ctx = _Ctx(root_fd, action)
        if op == "copy":
            ctx.copy()
        elif op == "mkdir":
            ctx.mkdir()
        elif op == "extract":
            ctx.extract()
        elif op == "export":
            ctx.export()
        else:
            raise FileActionError(f"file action: unknown op {op!r}")
        return ctx.result.to_dict()
    finally:
        os.close(root_fd)


def _container_path(path: str, workdir: str) -> str:
    """An absolute container path → a root-relative one; relative paths are under workdir."""
    trailing = path.endswith("/") or path.endswith("/.") or path in (".", "")
    full = path if path.startswith("/") else posixpath.join(workdir or "/", path)
    parts: list[str] = []
    for part in full.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    rel = "/".join(parts)
    return rel + "/" if trailing and rel else rel


def archive_codec(path: str | os.PathLike[str]) -> str | None:
    """The compression of a local tar archive ('none', 'gzip', 'bzip2', 'xz', 'zstd'), or
    None when the file is not a tar archive (ADD then copies it as a file, as docker does)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            codec = _sniff(head)
            f.seek(0)
            stream = _decompress(f, codec)
            block = stream.read(512)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return None
    if len(block) < 512:
        return None
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return codec


def _sniff(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def _decompress(raw: IO[bytes], codec: str) -> IO[bytes]:
    if codec == "bzip2":
        return bz2.BZ2File(raw, "rb")
    if codec == "xz":
        return lzma.LZMAFile(raw, "rb")
    if codec in ("gzip", "zstd"):
        from registry.compression import decompressor

        return decompressor(raw, codec)  # type: ignore[arg-type]
    return raw


class _Ctx:
    def __init__(self, root_fd: int, action: Action) -> None:
        self.root_fd = root_fd
        self.a = action
        self.result = _Result()
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.rootless = is_rootless()
        owner = action.get("owner")
        self.owner: tuple[int, int] | None = (int(owner[0]), int(owner[1])) if owner else None
        self.workdir = str(action.get("workdir") or "/")
        self.src_root_fd: int | None = None
        self.dest_root_fd = root_fd          # where hardlink partners are looked up
        self.skip: set[str] = set()
        self.links: dict[tuple[int, int], str] = {}

    # -- helpers
    def _chown(self, target: int | str, uid: int, gid: int, *, dir_fd: int | None = None) -> None:
        try:
            if isinstance(target, int):
                st = os.fstat(target)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.fchown(target, uid, gid)
            else:
                st = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.chown(target, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EINVAL) and self.rootless:
                self.result.warnings.append(f"owner {uid}:{gid} not applied (not mapped here)")
                return
            raise

    def _dest_dir(self, rel: str, *, mode: int = 0o755) -> int:
        """An O_PATH fd of directory ``rel`` inside the root, created (0755, owned by the
        action's owner or root) where missing."""
        created: list[str] = []
        try:
            fd = pathsafe.makedirs(self.root_fd, rel.rstrip("/"), mode=mode, created=created)
        except NotADirectoryError:
            raise FileActionError(f"destination {'/' + rel!r}: a path component is not a directory") from None
        uid, gid = self.owner or (0, 0)
        for path in created:
            self.result.dirs += 1
            head, _, name = path.rpartition("/")
            pfd = pathsafe.open_dir(self.root_fd, head, follow=False)
            try:
                os.chmod(name, mode, dir_fd=pfd, follow_symlinks=True)  # just created: a directory
                self._chown(name, uid, gid, dir_fd=pfd)
            finally:
                os.close(pfd)
        return fd

    # -- WORKDIR
    def mkdir(self) -> None:
        rel = _container_path(str(self.a["path"]), self.workdir).rstrip("/")
        if not rel:
            return
        os.close(self._dest_dir(rel, mode=int(self.a.get("mode") or 0o755)))

    # -- ADD <archive>
    def extract(self) -> None:
        archive = str(self.a["archive"])
        rel = _container_path(str(self.a["dest"]), self.workdir)
        dfd = self._dest_dir(rel.rstrip("/"))
        try:
            with open(archive, "rb") as raw:
                codec = _sniff(raw.read(6))
                raw.seek(0)
                stream = _decompress(raw, codec)
                stats = extract_tar(stream, dfd, owner=self.owner, layer=posixpath.basename(archive))
        finally:
            os.close(dfd)
        self.result.files += stats.files
        self.result.dirs += stats.dirs
        self.result.symlinks += stats.symlinks
        self.result.hardlinks += stats.hardlinks
        self.result.bytes += stats.bytes
        self.result.warnings.extend(stats.warnings)

    # -- RUN --mount from=STAGE: a path of the rootfs copied out to a host directory
    def export(self) -> None:
        """Copy ``src`` (resolved inside the root) into the existing host directory ``dest``:
        a directory's contents, or a file as dest/<name>. Owners, modes and mtimes are kept;
        symlinks are copied, never followed; device nodes are skipped."""
        src = str(self.a["src"])
        dest = str(self.a["dest"])
        self.src_root_fd = self.root_fd
        dest_fd = os.open(dest, _DIR_RO | os.O_NOFOLLOW)
        self.dest_root_fd = dest_fd
        try:
            fd, st, name = self._open_source(src)
            try:
                if stat.S_ISDIR(st.st_mode):
                    self._copy_tree(fd, dest_fd, posixpath.normpath(src), "")
                elif stat.S_ISREG(st.st_mode):
                    self._copy_file(fd, st, dest_fd, name, "")
                else:
                    raise FileActionError(f"export: {src!r} is not a regular file or directory")
            finally:
                os.close(fd)
        finally:
            os.close(dest_fd)
            self.src_root_fd = None
            self.dest_root_fd = self.root_fd

    # -- COPY / ADD <files>
    def copy(self) -> None:
        sources = [str(s) for s in self.a.get("sources") or ()]
        if not sources:
            raise FileActionError("copy: no source files")
        dest_raw = str(self.a["dest"])
        rel = _container_path(dest_raw, self.workdir)
        dest_is_dir = rel.endswith("/") or not rel.rstrip("/")
        if len(sources) > 1 and not dest_is_dir:
            raise FileActionError(f"copy: with more than one source the destination {dest_raw!r} "
                                  "must be a directory and end with '/'")
        rel = rel.rstrip("/")
        src_root = self.a.get("source_root")
        self.src_root_fd = pathsafe.open_root(src_root) if src_root else None
        self.skip = {posixpath.normpath(str(p)) for p in self.a.get("skip") or ()}
        try:
            for src in sources:
                self._copy_one(src, rel, dest_is_dir)
        finally:
            if self.src_root_fd is not None:
                os.close(self.src_root_fd)

    def _open_source(self, src: str) -> tuple[int, os.stat_result, str]:
        """(fd, stat, name) of a source; a top-level symlink is followed (inside source_root)."""
        name = posixpath.basename(src.rstrip("/")) or "."
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            if self.src_root_fd is not None:
                pfd, final = pathsafe.resolve_in_root(self.src_root_fd, src, follow_last=True)
                try:
                    fd = os.open(final or ".", flags, dir_fd=pfd)
                finally:
                    os.close(pfd)
            else:
                fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise FileActionError(f"copy: source {src!r} not found") from None
        return fd, os.fstat(fd), name

    def _copy_one(self, src: str, rel: str, dest_is_dir: bool) -> None:
        fd, st, name = self._open_source(src)
        try:
            if stat.S_ISDIR(st.st_mode):
                # a directory source copies its *contents* into the destination directory
                existed = self._exists_dir(rel)
                dfd = self._dest_dir(rel)
                try:
                    dest_fd = os.open(".", _DIR_RO, dir_fd=dfd)
                finally:
                    os.close(dfd)
                try:
                    self._copy_tree(fd, dest_fd, posixpath.normpath(src), rel)
                    if not existed and rel:
                        self._set_meta(dest_fd, st)
                finally:
                    os.close(dest_fd)
                return
            if not stat.S_ISREG(st.st_mode):
                raise FileActionError(f"copy: source {src!r} is not a regular file or directory")
            if dest_is_dir or self._exists_dir(rel):
                parent_rel, final = rel, name
            else:
                parent_rel, _, final = rel.rpartition("/")
            if not final:
                raise FileActionError("copy: cannot copy a file onto the root directory")
            pfd = self._dest_dir(parent_rel)
            try:
                self._copy_file(fd, st, pfd, final, parent_rel)
            finally:
                os.close(pfd)
        finally:
            os.close(fd)

    def _exists_dir(self, rel: str) -> bool:
        if not rel:
            return True
        try:
            fd = pathsafe.open_dir(self.root_fd, rel)
        except (FileNotFoundError, NotADirectoryError):
            return False
        os.close(fd)
        return True

    def _ids(self, st: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        if self.a.get("preserve_owner") or self.a.get("op") == "export":
            return st.st_uid, st.st_gid
        return 0, 0

    def _mode(self, st: os.stat_result) -> int:
        m = self.a.get("mode")
        return int(m) & 0o7777 if m is not None else stat.S_IMODE(st.st_mode)

    def _mtime(self, st: os.stat_result) -> int:
        m = self.a.get("mtime")
        return int(m) * 1_000_000_000 if m is not None else st.st_mtime_ns

    def _set_meta(self, fd: int, st: os.stat_result) -> None:
        uid, gid = self._ids(st)
        self._chown(fd, uid, gid)
        os.fchmod(fd, self._mode(st))
        mt = self._mtime(st)
        os.utime(fd, ns=(mt, mt))

    def _clear(self, pfd: int, name: str, *, want_dir: bool) -> bool:
        """Make room for a new entry; True if a directory is already there (kept)."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if want_dir:
                return True
            raise FileActionError(f"copy: cannot overwrite directory {name!r} with a non-directory")
        if want_dir:
            raise FileActionError(f"copy: cannot overwrite non-directory {name!r} with a directory")
        os.unlink(name, dir_fd=pfd)
        return False

    def _copy_file(self, sfd: int, st: os.stat_result, pfd: int, name: str, prel: str) -> None:
        ident = (st.st_dev, st.st_ino)
        self._clear(pfd, name, want_dir=False)
        if st.st_nlink > 1 and ident in self.links:
            first = self.links[ident]
            head, _, fname = first.rpartition("/")
            lfd = pathsafe.open_dir(self.dest_root_fd, head)
            try:
                os.link(fname, name, src_dir_fd=lfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(lfd)
            self.result.hardlinks += 1
            return
        dfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=pfd)
        try:
            os.set_blocking(sfd, True)
            _copy_data(sfd, dfd, st.st_size)
            self._set_meta(dfd, st)
            _copy_xattrs(sfd, dfd)
        finally:
            os.close(dfd)
        self.result.files += 1
        self.result.bytes += st.st_size
        if st.st_nlink > 1:
            self.links[ident] = f"{prel}/{name}" if prel else name

    def _copy_tree(self, sfd: int, dfd: int, src_path: str, drel: str) -> None:
        with os.scandir(sfd) as it:
            entries = sorted(((e.name, e.stat(follow_symlinks=False)) for e in it), key=lambda x: x[0])
        for name, st in entries:
            child_src = posixpath.normpath(posixpath.join(src_path, name))
            if child_src in self.skip:
                continue
            child_rel = f"{drel}/{name}" if drel else name
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                kept = self._clear(dfd, name, want_dir=True)
                if not kept:
                    os.mkdir(name, 0o700, dir_fd=dfd)
                    self.result.dirs += 1
                cs = os.open(name, _DIR_RO | os.O_NOFOLLOW, dir_fd=sfd)
                cd = os.open(name, _DIR_RO | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    self._copy_tree(cs, cd, child_src, child_rel)
                    self._set_meta(cd, st)
                finally:
                    os.close(cs)
                    os.close(cd)
            elif stat.S_ISREG(mode):
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=sfd)
                try:
                    self._copy_file(f, os.fstat(f), dfd, name, drel)
                finally:
                    os.close(f)
            elif stat.S_ISLNK(mode):
                target = os.readlink(name, dir_fd=sfd)
                self._clear(dfd, name, want_dir=False)
                os.symlink(target, name, dir_fd=dfd)
                uid, gid = self._ids(st)
                self._chown(name, uid, gid, dir_fd=dfd)
                mt = self._mtime(st)
                os.utime(name, ns=(mt, mt), dir_fd=dfd, follow_symlinks=False)
                self.result.symlinks += 1
            elif stat.S_ISFIFO(mode):
                self._clear(dfd, name, want_dir=False)
                os.mkfifo(name, self._mode(st), dir_fd=dfd)
            else:
                self.result.warnings.append(f"{child_src}: special file skipped")


def _copy_data(src: int, dst: int, size: int) -> None:
    """In-kernel copy: copy_file_range (same filesystem, reflinks where possible), then
    sendfile (any two files), then read/write."""
    left = size
    with contextlib.suppress(OSError):
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                break
            left -= n
    if left <= 0:
        return
    offset = size - left
    with contextlib.suppress(OSError):
        while left > 0:
            n = os.sendfile(dst, src, offset, min(left, 1 << 30))
            if n == 0:
                break
            offset += n
            left -= n
    if left <= 0:
        return
    os.lseek(src, size - left, os.SEEK_SET)
    os.lseek(dst, size - left, os.SEEK_SET)
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            return
        os.write(dst, chunk)


def _copy_xattrs(src: int, dst: int) -> None:
    try:
        names = os.listxattr(src)
    except OSError:
        return
    for name in names:
        if is_overlay_xattr(name) or name.startswith("trusted."):
            continue
        with contextlib.suppress(OSError):
            os.setxattr(dst, name, os.getxattr(src, name))


def run_actions(actions: list[Action], root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Execute several actions in order (the sandbox's child may call this once)."""
    return [execute(a, root) for a in actions]

