"""Resolve paths *inside* a root: symlinks resolved relative to the root, '..' stops there
(chroot semantics without chroot), via openat2(RESOLVE_IN_ROOT) or a component-by-component
walk with O_NOFOLLOW dir fds where openat2 is missing. Callers act on (parent_fd, name) with
*at() calls that never follow the final component. Imports: stdlib, runtime._syscalls/errors.
"""

from __future__ import annotations

import errno
import functools
import os
import stat

from runtime import _syscalls
from runtime.errors import UnsafePath

MAX_SYMLINKS = 40        # what the kernel allows (ELOOP beyond)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def clean_name(name: str, *, what: str = "path") -> str:
    """Normalize an archive or container path to a relative POSIX path ('' is the root).

    A leading '/' and '.' components are dropped (docker treats absolute member names as
    relative to the root); '..' anywhere is refused, as is a NUL byte.
    """
    if "\0" in name:
        raise UnsafePath(name, f"{what} contains a NUL byte")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafePath(name, f"{what} contains '..'")
        parts.append(part)
    return "/".join(parts)


def open_root(root: str | os.PathLike[str]) -> int:
    """An O_PATH fd of a root directory (the caller closes it)."""
    return os.open(root, _DIR_FLAGS)


@functools.cache
def have_openat2() -> bool:
    """Whether openat2(RESOLVE_IN_ROOT) works here (kernel >= 5.6 and no seccomp veto)."""
    try:
        fd = _syscalls.openat2(-100, "/", _DIR_FLAGS)  # AT_FDCWD
    except OSError:
        return False
    os.close(fd)
    return True


class _Resolve:
    """Portable component walk with physical '..' semantics, clamped at the root."""

    def __init__(self, root_fd: int, entry: str, *, follow: bool) -> None:
        self.root_fd = root_fd
        self.entry = entry
        self.follow = follow
        self.links = 0

    def walk(self, parts: list[str], *, create_mode: int | None = None,
             created: list[str] | None = None) -> int:
        """Return a new O_PATH fd for the directory named by ``parts``; with ``create_mode``
        missing directories are made, and their paths (from the root) added to ``created``."""
        stack: list[int] = []   # fds of the physical path below the root
        names: list[str] = []   # ...and their names
        todo = list(reversed(parts))

        def cur() -> int:
            return stack[-1] if stack else self.root_fd

        try:
            while todo:
                part = todo.pop()
                if part in ("", "."):
                    continue
                if part == "..":
                    if stack:
                        os.close(stack.pop())
                        names.pop()
                    continue
                try:
                    fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=cur())
                except OSError as exc:
                    if exc.errno == errno.ENOENT and create_mode is not None:
                        try:
                            os.mkdir(part, create_mode, dir_fd=cur())
                            if created is not None:
                                created.append("/".join([*names, part]))
                        except FileExistsError:
                            pass
                        todo.append(part)
                        continue
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(part, dir_fd=cur(), follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise
                    if not self.follow:
                        raise UnsafePath(self.entry, "path goes through a symlink") from None
                    self.links += 1
                    if self.links > MAX_SYMLINKS:
                        raise UnsafePath(self.entry, "too many levels of symbolic links "
                                         "(a symlink loop?)") from None
                    target = os.readlink(part, dir_fd=cur())
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop())
                        names.clear()
                    todo.extend(reversed(target.split("/")))
                    continue
                stack.append(fd)
                names.append(part)
            return os.dup(cur()) if not stack else stack.pop()
        finally:
            for fd in stack:
                os.close(fd)


def _translate(exc: OSError, entry: str) -> Exception:
    if exc.errno == errno.ELOOP:
        return UnsafePath(entry, "too many levels of symbolic links (a symlink loop?)")
    if exc.errno == errno.EXDEV:
        return UnsafePath(entry, "path crosses a mount point")
    return exc


def open_dir(root_fd: int, relpath: str, *, follow: bool = True, entry: str | None = None) -> int:
    """A new O_PATH fd of directory ``relpath`` resolved inside the root.

    ``follow=False`` refuses any symlink on the way (UnsafePath) instead of resolving it.
    Raises FileNotFoundError / NotADirectoryError like open(2) would.
    """
    entry = relpath if entry is None else entry
    if not relpath:
        return os.dup(root_fd)
    if have_openat2():
        resolve = _syscalls.RESOLVE_IN_ROOT | _syscalls.RESOLVE_NO_MAGICLINKS
        if not follow:
            resolve |= _syscalls.RESOLVE_NO_SYMLINKS
        for _ in range(8):
            try:
                return _syscalls.openat2(root_fd, relpath, _DIR_FLAGS, resolve=resolve)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:      # a concurrent rename; the kernel asks to retry
                    continue
                if exc.errno == errno.ELOOP and not follow:
                    raise UnsafePath(entry, "path goes through a symlink") from None
                raise _translate(exc, entry) from None
    return _Resolve(root_fd, entry, follow=follow).walk(relpath.split("/"))


def makedirs(root_fd: int, relpath: str, *, mode: int = 0o755, entry: str | None = None,
             created: list[str] | None = None) -> int:
    """Like open_dir, creating missing directories (mode ``mode``, current owner) on the way.

    Returns a new O_PATH fd of the directory. Symlinks are followed inside the root (a
    dangling one gets its target created, inside the root). The paths of the directories
    made are appended to ``created``.
    """
    entry = relpath if entry is None else entry
    try:
        return open_dir(root_fd, relpath, entry=entry)
    except FileNotFoundError:
        pass
    return _Resolve(root_fd, entry, follow=True).walk(relpath.split("/"), create_mode=mode,
                                                      created=created)


def resolve_in_root(root_fd: int, relpath: str, *, follow_last: bool = False,
                    entry: str | None = None) -> tuple[int, str]:
    """Return (parent_dir_fd, final_name) for ``relpath`` inside the root (DESIGN C12).

    The parent is resolved following symlinks inside the root; the final component is
    followed too when ``follow_last`` (then the returned name is not a symlink, or does not
    exist). The caller owns (closes) the fd. ``final_name`` is '' for the root itself.
    """
    entry = relpath if entry is None else entry
    path = clean_name(relpath, what="path")   # '..' in a *name* is refused; in targets it is fine
    links = 0
    while True:
        head, _, name = path.rpartition("/")
        parent = open_dir(root_fd, head, entry=entry)
        if not follow_last or not name:
            return parent, name
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return parent, name
        except BaseException:
            os.close(parent)
            raise
        if not stat.S_ISLNK(st.st_mode):
            return parent, name
        try:
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafePath(entry, "too many levels of symbolic links (a symlink loop?)")
            target = os.readlink(name, dir_fd=parent)
        finally:
            os.close(parent)
        # A relative target is relative to the symlink's directory: append it to the
        # (unresolved) directory path; '..' is then resolved physically and clamped at the
        # root by open_dir. An absolute target starts again at the root.
        joined = target if target.startswith("/") else f"{head}/{target}"
        parts = [p for p in joined.split("/") if p not in ("", ".")]
        if not parts or parts[-1] == "..":
            return open_dir(root_fd, "/".join(parts), entry=entry), ""
        path = "/".join(parts)


def open_file(root_fd: int, relpath: str, *, follow: bool = True, max_links: int = MAX_SYMLINKS) -> int:
    """Open an existing regular file inside the root for reading (symlinks resolved in the root).

    Raises FileNotFoundError, IsADirectoryError or UnsafePath.
    """
    del max_links
    rel = clean_name(relpath)
    parent, name = resolve_in_root(root_fd, rel, follow_last=follow, entry=relpath)
    try:
        if not name:
            raise IsADirectoryError(errno.EISDIR, "is a directory", relpath)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", relpath)
        raise UnsafePath(relpath, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_file(root: str | os.PathLike[str] | int, relpath: str, *, limit: int = 4 << 20) -> bytes | None:
    """The content of a small regular file inside ``root`` (None when it does not exist).

    Refuses files larger than ``limit`` (a hostile image could point /etc/passwd at a huge
    file or a FIFO; FIFOs and devices are refused as not regular files).
    """
    root_fd = root if isinstance(root, int) else open_root(root)
    try:
        try:
            fd = open_file(root_fd, relpath)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise UnsafePath(relpath, f"file is {size} bytes, limit {limit}")
            chunks = []
            total = 0
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise UnsafePath(relpath, f"file grew beyond {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        if not isinstance(root, int):
            os.close(root_fd)


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` (file, symlink or whole directory tree) under ``dir_fd`` without ever
    following a symlink. Missing is fine. Iterative: a hostile layer may nest very deep."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:
        # unlink(2) of a directory gives EISDIR on Linux, but some filesystems say EPERM.
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        clear_dir(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def clear_dir(fd: int, keep: frozenset[str] | set[str] = frozenset()) -> None:
    """Remove every entry of the open directory ``fd`` except the names in ``keep``."""
    # stack of (dir fd, names still to remove there, the child dir being emptied or None)
    stack: list[tuple[int, list[str]]] = [(os.dup(fd), _names(fd, keep))]
    try:
        while stack:
            dfd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(dfd)
                if stack:
                    parent_fd, parent_names = stack[-1]
                    with_name = parent_names.pop()
                    try:
                        os.rmdir(with_name, dir_fd=parent_fd)
                    except FileNotFoundError:
                        pass
                continue
            child = names[-1]
            try:
                os.unlink(child, dir_fd=dfd)
                names.pop()
                continue
            except FileNotFoundError:
                names.pop()
                continue
            except (IsADirectoryError, PermissionError):
                st = os.stat(child, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise
            sub = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            stack.append((sub, _names(sub, frozenset())))
    finally:
        for dfd, _ in stack:
            os.close(dfd)


def _names(fd: int, keep: frozenset[str] | set[str]) -> list[str]:
    with os.scandir(fd) as it:
        return [e.name for e in it if e.name not in keep]
