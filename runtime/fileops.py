"""The builder's file actions (COPY, ADD, WORKDIR) as JSON dicts run by ``execute(action, root)`` in the
container's mount (and user) namespace, so ownership is right rootless and --chown names come from
the root's /etc/passwd. Destinations resolve inside ``root``, sources and globs inside ``source_root``;
files are replaced, never written through. Imports registry.gomatch, runtime (_syscalls, pathsafe,
unpack, users, errors); registry.compression/layertar/store, runtime.diff/snapshots inside functions."""

from __future__ import annotations

import bz2
import contextlib
import errno
import lzma
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from registry import gomatch
from runtime import _syscalls, pathsafe, users
from runtime.errors import SandboxError
from runtime.unpack import extract_tar, is_overlay_xattr, is_rootless

Action = Mapping[str, Any]
ArchiveCodec = Literal["none", "gzip", "bzip2", "xz", "zstd"]
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


Owner = tuple[int, int] | list[int] | str | None


def _owner_field(owner: Owner) -> list[int] | str | None:
    if owner is None or isinstance(owner, str):
        return owner
    return [int(owner[0]), int(owner[1])]


def copy_action(sources: list[str], dest: str, *, source_root: str | None = None, workdir: str = "/",
                owner: Owner = None, preserve_owner: bool = False,
                mode: int | str | None = None, mtime: int | None = None,
                skip: list[str] | None = None, glob: bool = False, parents: str | None = None,
                exclude: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build a copy action dict (a convenience for the builder). ``owner`` is (uid, gid) or a
    --chown spec resolved inside the root; ``mode`` an int, an octal string or a symbolic one."""
    return {"op": "copy", "sources": list(sources), "dest": dest, "source_root": source_root,
            "workdir": workdir, "owner": _owner_field(owner), "preserve_owner": preserve_owner,
            "mode": mode, "mtime": mtime, "skip": list(skip or ()), "glob": glob, "parents": parents,
            "exclude": list(exclude or ())}


def mkdir_action(path: str, *, workdir: str = "/", owner: Owner = None, mode: int = 0o755,
                 owner_missing: str = "error") -> dict[str, Any]:
    """WORKDIR: ``owner_missing="root"`` is BuildKit's fallback for a USER the image lacks."""
    return {"op": "mkdir", "path": path, "workdir": workdir, "owner": _owner_field(owner), "mode": mode,
            "owner_missing": owner_missing}


def layer_action(store: str, snapshots: str, driver: str, key: str, *, codec: str = "gzip",
                 clamp_mtime: int | None = None) -> dict[str, Any]:
    """Write the layer of active snapshot ``key`` into ``store`` (see ``commit_layer``)."""
    return {"op": "layer", "store": store, "snapshots": snapshots, "driver": driver, "key": key,
            "codec": codec, "clamp_mtime": clamp_mtime}


def remove_action(path: str) -> dict[str, Any]:
    """Remove a path (a whole tree) inside the root, never following a symlink."""
    return {"op": "remove", "path": path}


def chown_action(path: str, owner: tuple[int, int]) -> dict[str, Any]:
    """Set the owner of one path inside the root (never following a final symlink)."""
    return {"op": "chown", "path": path, "owner": [int(owner[0]), int(owner[1])]}


def export_action(src: str, dest: str) -> dict[str, Any]:
    """RUN --mount from=STAGE: copy ``src`` of the rootfs into host directory ``dest``."""
    return {"op": "export", "src": src, "dest": dest}


def extract_action(archive: str, dest: str, *, workdir: str = "/", owner: Owner = None) -> dict[str, Any]:
    return {"op": "extract", "archive": archive, "dest": dest, "workdir": workdir,
            "owner": _owner_field(owner)}


def execute(action: Action, root: str | os.PathLike[str]) -> dict[str, Any]:
    """Run one file action against the rootfs at ``root``; returns counts and warnings.

    Actions (build them with copy_action / mkdir_action / extract_action)::

      {"op": "copy", "sources": [...], "dest": "/app/", "workdir": "/", "source_root": "/ctx"|None,
       "owner": [uid, gid]|"user[:group]"|None, "preserve_owner": false,
       "mode": 0o755|"0755"|"u+x,go=rX"|None, "mtime": int|None, "skip": [source paths],
       "glob": false, "parents": "base/dir"|None, "exclude": [{"pattern", "regex", "exclusion"}]}
      {"op": "mkdir", "path": "/work", "workdir": "/", "owner": ...|None, "mode": 0o755,
       "owner_missing": "error"|"root"}
      {"op": "extract", "archive": "/host/x.tar.gz", "dest": "/opt/", "workdir": "/", "owner": ...}
      {"op": "export", "src": "/path/in/rootfs", "dest": "/existing/host/dir"}
      {"op": "chown", "path": "/x", "owner": [uid, gid]}
      {"op": "remove", "path": "/x"}
      {"op": "layer", "store": "/store", "snapshots": "/store/snapshots", "driver": "overlay",
       "key": "active-key", "codec": "gzip", "clamp_mtime": int|None}   (root unused)

    ``owner`` as a string is a --chown spec resolved in the root's /etc/passwd and /etc/group
    (runtime.users.resolve_chown). With ``glob`` a source holding * ? [ is expanded inside
    ``source_root`` like Go's filepath.Match per path component (no match is an error naming
    the pattern); ``parents`` keeps each source's path relative to that directory under the
    destination (COPY --parents); ``exclude`` (COPY --exclude) is matched against paths
    relative to each copied source. Raises FileActionError (bad request), UnknownUser,
    UnsafePath/LayerError (hostile input) or OSError.
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
        elif op == "chown":
            ctx.chown()
        elif op == "remove":
            ctx.remove()
        elif op == "layer":
            return commit_layer(action)
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


def archive_codec(path: str | os.PathLike[str]) -> ArchiveCodec | None:
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


def _sniff(head: bytes) -> ArchiveCodec:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def _decompress(raw: IO[bytes], codec: ArchiveCodec) -> IO[bytes]:
    if codec == "bzip2":
        return bz2.BZ2File(raw, "rb")
    if codec == "xz":
        return lzma.LZMAFile(raw, "rb")
    if codec == "gzip" or codec == "zstd":
        from registry.compression import decompressor

        return decompressor(raw, codec)
    return raw


class _Ctx:
    def __init__(self, root_fd: int, action: Action) -> None:
        self.root_fd = root_fd
        self.a = action
        self.result = _Result()
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.rootless = is_rootless()
        self.owner = self._resolve_owner(action.get("owner"), str(action.get("owner_missing") or "error"))
        self.mode_change = parse_mode(action.get("mode")) if action.get("op") == "copy" else None
        self.exclude = _Excluder(action.get("exclude") or ())
        self.workdir = str(action.get("workdir") or "/")
        self.src_root_fd: int | None = None
        self.dest_root_fd = root_fd          # where hardlink partners are looked up
        self.skip: set[str] = set()
        self.links: dict[tuple[int, int], str] = {}

    # -- helpers
    def _resolve_owner(self, owner: Any, missing: str) -> tuple[int, int] | None:
        if owner is None or owner == "" or owner == []:
            return None
        if isinstance(owner, str):
            # names come from the root's /etc/passwd and /etc/group as mounted here: the
            # merged rootfs, so whiteouts and symlinks of every layer are honoured
            return users.resolve_chown(self.root_fd, owner, missing=missing)
        return int(owner[0]), int(owner[1])

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

    # -- one owner change (a file the builder made on the host, rootless)
    def chown(self) -> None:
        rel = _container_path(str(self.a["path"]), self.workdir).rstrip("/")
        if self.owner is None:
            raise FileActionError("chown: no owner given")
        pfd, name = pathsafe.resolve_in_root(self.root_fd, rel)
        try:
            if not name:
                os.chown(".", *self.owner, dir_fd=pfd)
            else:
                os.chown(name, *self.owner, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)

    # -- a tree the builder made (rootless: files of other container users it cannot remove)
    def remove(self) -> None:
        rel = _container_path(str(self.a["path"]), self.workdir).rstrip("/")
        if not rel:
            raise FileActionError("remove: refusing to remove the root itself")
        pfd, name = pathsafe.resolve_in_root(self.root_fd, rel)
        try:
            pathsafe.remove_tree_at(pfd, name)
        finally:
            os.close(pfd)

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
                    self._copy_tree(fd, dest_fd, posixpath.normpath(src), "", "")
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
        parents = self.a.get("parents")
        dest_is_dir = rel.endswith("/") or not rel.rstrip("/") or parents is not None
        rel = rel.rstrip("/")
        src_root = self.a.get("source_root")
        self.src_root_fd = pathsafe.open_root(src_root) if src_root else None
        self.skip = {posixpath.normpath(str(p)) for p in self.a.get("skip") or ()}
        try:
            expanded: list[str] = []
            for src in sources:
                if self.a.get("glob") and (has_glob(src) or "\\" in src):   # escapes too
                    matches = self._glob(src)
                    if not matches:
                        shown = "/" + src.lstrip("/") if src_root else src
                        raise FileActionError(f"copy: source {shown!r} matched no files")
                    expanded.extend(m for m in matches if not self._excluded_match(m, src))
                else:
                    expanded.append(src)
            if len(expanded) > 1 and not dest_is_dir:
                raise FileActionError(f"copy: with more than one source the destination {dest_raw!r} "
                                      "must be a directory and end with '/'")
            for src in expanded:
                if parents is None:
                    self._copy_one(src, rel, dest_is_dir)
                    continue
                kept = _relative_to(src, str(parents))
                self._copy_one(src, rel, True, kept=kept)
        finally:
            if self.src_root_fd is not None:
                os.close(self.src_root_fd)

    def _excluded_match(self, match: str, pattern: str) -> bool:
        """A glob match excluded by --exclude (its path under the pattern's fixed prefix)."""
        if not self.exclude:
            return False
        base, _ = _split_glob(pattern)
        return self.exclude.excluded(_relative_to(match, base), is_dir=False)

    def _glob(self, pattern: str) -> list[str]:
        """Paths under source_root matching ``pattern`` (BuildKit's ResolveWildcards): the part
        before the first wildcard component is resolved inside the root (symlinks followed);
        below it every component is matched by Go's filepath.Match rules (a '*' never crosses
        '/', '**' is no different from '*'), walking without following symlinks. Sorted."""
        if self.src_root_fd is None:
            raise FileActionError("copy: a glob source needs a source_root")
        base, rest = _split_glob(pattern)
        try:
            regexes = [gomatch.glob_regex(part) for part in rest]
        except ValueError as exc:
            raise FileActionError(f"copy: bad pattern {pattern!r}: {exc}") from None
        try:
            pfd = pathsafe.open_dir(self.src_root_fd, base)
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            fd = os.open(".", _DIR_RO, dir_fd=pfd)
        finally:
            os.close(pfd)
        out: list[str] = []

        def walk(dfd: int, prefix: str, depth: int) -> None:
            with os.scandir(dfd) as it:
                names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
            for name, is_dir in names:
                if not regexes[depth].match(name):
                    continue
                path = f"{prefix}/{name}" if prefix else name
                if depth == len(regexes) - 1:
                    out.append(path)
                elif is_dir:
                    child = os.open(name, _DIR_RO | os.O_NOFOLLOW, dir_fd=dfd)
                    try:
                        walk(child, path, depth + 1)
                    finally:
                        os.close(child)

        try:
            walk(fd, base, 0)
        finally:
            os.close(fd)
        return out

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

    def _copy_one(self, src: str, rel: str, dest_is_dir: bool, *, kept: str | None = None) -> None:
        fd, st, name = self._open_source(src)
        try:
            if kept:
                # --parents: the source's path (from the pivot) is kept under the destination
                head, _, tail = kept.rpartition("/")
                if stat.S_ISDIR(st.st_mode):
                    rel = f"{rel}/{kept}" if rel else kept
                else:
                    rel = f"{rel}/{head}" if rel and head else rel or head
                    name = tail
            if stat.S_ISDIR(st.st_mode):
                # a directory source copies its *contents* into the destination directory
                existed = self._exists_dir(rel)
                dfd = self._dest_dir(rel)
                try:
                    dest_fd = os.open(".", _DIR_RO, dir_fd=dfd)
                finally:
                    os.close(dfd)
                try:
                    self._copy_tree(fd, dest_fd, posixpath.normpath(src), rel, "")
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
        if self.mode_change is None:
            return stat.S_IMODE(st.st_mode)
        return self.mode_change.apply(stat.S_IMODE(st.st_mode), is_dir=stat.S_ISDIR(st.st_mode))

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
            _syscalls.copy_file_data(sfd, dfd, st.st_size)
            self._set_meta(dfd, st)
            _copy_xattrs(sfd, dfd)
        finally:
            os.close(dfd)
        self.result.files += 1
        self.result.bytes += st.st_size
        if st.st_nlink > 1:
            self.links[ident] = f"{prel}/{name}" if prel else name

    def _copy_tree(self, sfd: int, dfd: int, src_path: str, drel: str, xrel: str) -> None:
        """Copy directory ``sfd``'s entries into ``dfd``; ``xrel`` is the path below the copied
        source (what --exclude patterns see)."""
        with os.scandir(sfd) as it:
            entries = sorted(((e.name, e.stat(follow_symlinks=False)) for e in it), key=lambda x: x[0])
        for name, st in entries:
            child_src = posixpath.normpath(posixpath.join(src_path, name))
            if child_src in self.skip:
                continue
            child_x = f"{xrel}/{name}" if xrel else name
            mode = st.st_mode
            if self.exclude and self.exclude.excluded(child_x, is_dir=stat.S_ISDIR(mode)):
                continue
            child_rel = f"{drel}/{name}" if drel else name
            if stat.S_ISDIR(mode):
                kept = self._clear(dfd, name, want_dir=True)
                if not kept:
                    os.mkdir(name, 0o700, dir_fd=dfd)
                    self.result.dirs += 1
                cs = os.open(name, _DIR_RO | os.O_NOFOLLOW, dir_fd=sfd)
                cd = os.open(name, _DIR_RO | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    self._copy_tree(cs, cd, child_src, child_rel, child_x)
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


# -- modes (--chmod) -----------------------------------------------------------------------------
_CLASS_BITS = {"u": 0o4700, "g": 0o2070, "o": 0o0007}
_SHIFT = {"u": 6, "g": 3, "o": 0}


@dataclass(frozen=True, slots=True)
class ModeChange:
    """A parsed --chmod: an absolute (octal) mode, or chmod(1) symbolic clauses applied to each
    file's own mode. Clauses are (who, op, perms, copied classes); an empty ``who`` means all
    classes (BuildKit parses with umask 0)."""

    absolute: int | None
    clauses: tuple[tuple[str, str, str, str], ...] = ()

    def apply(self, mode: int, *, is_dir: bool = False) -> int:
        if self.absolute is not None:
            return self.absolute
        orig = mode & 0o7777
        new = orig
        for who, op, perms, copies in self.clauses:
            classes = who or "ugo"
            mask = 0
            for c in classes:
                mask |= _CLASS_BITS[c]
            special = not who or bool(set(who) - {"o"})   # s and t need u or g (or no who)
            bits = 0
            sticky = False
            for p in perms:
                if p == "r":
                    bits |= 0o444
                elif p == "w":
                    bits |= 0o222
                elif p == "x":
                    bits |= 0o111
                elif p == "X":
                    # execute only for directories and files some class may already execute;
                    # '-X' changes nothing (as BuildKit's mode library)
                    if op != "-" and (is_dir or orig & 0o111):
                        bits |= 0o111
                elif p == "s" and special:
                    bits |= 0o6000
                elif p == "t" and special:
                    sticky = True
            bits &= mask
            if sticky:
                bits |= 0o1000
            copied = 0
            for c in copies:               # g=u: the (current) bits of one class to others
                src = (new >> _SHIFT[c]) & 7
                for k in classes:
                    copied |= src << _SHIFT[k]
            if op == "=":
                new &= ~(mask | (0o1000 if sticky else 0))
                new |= bits | copied
            elif op == "+":
                new |= bits | copied
            else:
                new &= ~(bits | copied)
        return new & 0o7777


def parse_mode(spec: int | str | None) -> ModeChange | None:
    """--chmod as BuildKit accepts it: octal digits up to 07777, or chmod(1) symbolic clauses
    ``[ugoa]*([-+=]([rwxXst]*|[ugo]))+`` separated by commas (e.g. ``u+x,g-w``, ``a=rX``,
    ``go=u-w``). Raises FileActionError for anything else."""
    if spec is None:
        return None
    if isinstance(spec, int):
        return ModeChange(spec & 0o7777)
    text = str(spec)
    if not text:
        raise FileActionError("invalid mode '': want octal (0755) or symbolic (u+x,g-w)")
    if text[0].isdigit():
        if not all(c in "01234567" for c in text) or int(text, 8) > 0o7777:
            raise FileActionError(f"invalid mode {text!r}: an octal mode is 0 to 07777")
        return ModeChange(int(text, 8))
    clauses: list[tuple[str, str, str, str]] = []
    for clause in text.split(","):
        i, n = 0, len(clause)
        who = ""
        while i < n and clause[i] in "ugoa":
            who += "ugo" if clause[i] == "a" else clause[i]
            i += 1
        who = "".join(c for c in "ugo" if c in who)
        if i == n:
            raise FileActionError(f"invalid mode {text!r}: {clause!r} has no operator (+, - or =)")
        while i < n:
            op = clause[i]
            if op not in "+-=":
                raise FileActionError(f"invalid mode {text!r}: unexpected {op!r} in {clause!r}")
            i += 1
            perms = copies = ""
            while i < n and clause[i] in "rwxXstugo":
                if clause[i] in "ugo":
                    copies += clause[i]
                else:
                    perms += clause[i]
                i += 1
            clauses.append((who, op, perms, copies))
    return ModeChange(None, tuple(clauses))


# -- globs and --exclude -------------------------------------------------------------------------
def has_glob(path: str) -> bool:
    """Whether a path holds a wildcard (Go's filepath.Match metacharacters, '\\' escapes)."""
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def _split_glob(pattern: str) -> tuple[str, list[str]]:
    """(fixed directory before the first wildcard component, the remaining components)."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if has_glob(part) or "\\" in part:
            return "/".join(parts[:i]), parts[i:]
    return "/".join(parts), []


def _relative_to(path: str, base: str) -> str:
    path = path.strip("/")
    base = base.strip("/")
    if not base:
        return path
    if path == base:
        return ""
    if path.startswith(base + "/"):
        return path[len(base) + 1:]
    return path


class _Excluder:
    """COPY --exclude patterns (.dockerignore syntax; the builder compiles each to a regex):
    a path is excluded when the last pattern matching it or one of its parent directories is
    not a '!' exception. An excluded directory is skipped whole unless an exception names
    something inside it (BuildKit's copier rule)."""

    def __init__(self, patterns: Any) -> None:
        self.patterns = [(str(p.get("pattern", "")), re.compile(str(p["regex"]), re.DOTALL),
                          bool(p.get("exclusion"))) for p in patterns]
        self.exceptions = [text for text, _, exc in self.patterns if exc]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excluded(self, path: str, *, is_dir: bool) -> bool:
        parents = []
        head = path
        while "/" in head:
            head = head.rpartition("/")[0]
            parents.append(head)
        excluded = False
        for _text, rx, exception in self.patterns:
            if exception != excluded:
                continue
            if rx.match(path) or any(rx.match(p) for p in parents):
                excluded = not exception
        if excluded and is_dir and self.exceptions:
            inside = path + "/"
            if any((text + "/").startswith(inside) for text in self.exceptions):
                return False
        return excluded


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


def commit_layer(action: Action) -> dict[str, Any]:
    """The "layer" action: diff an active snapshot and write its layer blob into the store.

    Rootless, the builder runs this inside the user namespace the step ran in: there the
    upper dir's files show the ids the container saw (33, not the host's subordinate id) and
    root of the namespace may read files private to other container users (a 0600 key owned
    by 33), which the unprivileged host user cannot. Returns the layer's descriptor, diff_id
    and size, or {"empty": true} when nothing changed."""
    from registry.layertar import write_layer
    from registry.store import DirStore
    from runtime.diff import layer_entries
    from runtime.snapshots import open_snapshotter

    sn = open_snapshotter(str(action["snapshots"]), str(action.get("driver") or "") or None)
    entries = list(layer_entries(sn, str(action["key"])))
    if not entries:
        return {"empty": True}
    clamp = action.get("clamp_mtime")
    from registry.compression import as_codec

    blob = write_layer(entries, DirStore(str(action["store"])), as_codec(str(action.get("codec") or "gzip")),
                       clamp_mtime=int(clamp) if clamp is not None else None)
    return {"empty": False, "descriptor": blob.descriptor.to_dict(), "diff_id": str(blob.diff_id),
            "size": blob.uncompressed_size}


def run_actions(actions: list[Action], root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Execute several actions in order (the sandbox's child may call this once)."""
    return [execute(a, root) for a in actions]

