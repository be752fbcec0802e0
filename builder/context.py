"""The build context: a read-only walk filtered by .dockerignore, COPY/ADD source resolution (globs,
top-level symlinks followed, as docker) and content digests. Never modifies the context; links are
sent as links; a digest is sha256 of the bytes, behind a stat cache (path, inode, size, mtime, ctime)
under ``cache/stat/``, never of mtimes or owners. Imports builder.dockerignore/errors, registry.store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from builder.dockerignore import Decision, Matcher, MatchState, glob_regex, go_clean, load_matcher
from builder.errors import ContextError

STAT_CACHE_VERSION = 1
# A file modified this close to the moment it was hashed may change again within the same
# timestamp tick ("racy git"): its digest is used but not remembered. Filesystems with
# whole-second timestamps get a wider window.
_RACY_NS = 100_000_000
_RACY_COARSE_NS = 2_000_000_000
_GLOB_CHARS = frozenset("*?[\\")


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the context as sent: ``path`` is relative POSIX ('' is the root)."""

    path: str
    kind: str            # file | dir | symlink | other
    mode: int            # permission bits incl. setuid/setgid/sticky
    size: int = 0
    linkname: str = ""
    ino: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    uid: int = 0
    gid: int = 0


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def has_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


@dataclass
class StatCache:
    """Persistent map relpath → (inode, size, mtime_ns, ctime_ns, sha256 hex) for one context."""

    path: Path | None
    entries: dict[str, list[int | str]] = field(default_factory=dict)
    dirty: bool = False
    hits: int = 0
    misses: int = 0

    @classmethod
    def load(cls, cache_dir: Path | None, context_root: Path) -> StatCache:
        if cache_dir is None:
            return cls(None)
        name = hashlib.sha256(str(context_root).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        path = cache_dir / f"{name}.json"
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("version") == STAT_CACHE_VERSION and doc.get("root") == str(context_root):
                return cls(path, dict(doc.get("entries") or {}))
        except (OSError, ValueError, AttributeError):
            pass
        return cls(path)

    def lookup(self, entry: Entry) -> str | None:
        rec = self.entries.get(entry.path)
        if rec is not None and rec[:4] == [entry.ino, entry.size, entry.mtime_ns, entry.ctime_ns]:
            self.hits += 1
            return str(rec[4])
        self.misses += 1
        return None

    def remember(self, entry: Entry, hexdigest: str) -> None:
        newest = max(entry.mtime_ns, entry.ctime_ns)
        coarse = entry.mtime_ns % 1_000_000_000 == 0 and entry.ctime_ns % 1_000_000_000 == 0
        if time.time_ns() - newest < (_RACY_COARSE_NS if coarse else _RACY_NS):
            return
        self.entries[entry.path] = [entry.ino, entry.size, entry.mtime_ns, entry.ctime_ns, hexdigest]
        self.dirty = True

    def prune(self, keep: Iterable[str]) -> None:
        keep_set = set(keep)
        stale = [p for p in self.entries if p not in keep_set]
        for p in stale:
            del self.entries[p]
        self.dirty = self.dirty or bool(stale)

    def save(self, root: Path) -> None:
        if self.path is None or not self.dirty:
            return
        from registry.store import atomic_write

        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": STAT_CACHE_VERSION, "root": str(root), "entries": self.entries},
                          separators=(",", ":")).encode("utf-8", "surrogateescape")
        with contextlib.suppress(OSError):
            atomic_write(self.path, data, mode=0o600)
        self.dirty = False


@dataclass(frozen=True, slots=True)
class Source:
    """A resolved COPY/ADD source: the context path that matched and what it really is."""

    path: str            # as matched (a symlink at the top is followed: see ``target``)
    target: str          # the context path whose content is copied
    entry: Entry


class BuildContext:
    """A directory used as build context. Walk once, lazily; digests on demand."""

    def __init__(self, root: str | os.PathLike[str], *, dockerfile: Path | None = None,
                 stat_cache_dir: Path | None = None, name: str = "context") -> None:
        self.root = Path(root).resolve()
        self.name = name
        if not self.root.is_dir():
            raise ContextError(f"build context {str(root)!r}: not a directory",
                               hint="pass the directory that holds the files COPY uses, e.g. `.`")
        self.matcher, self.ignore_file = load_matcher(self.root, dockerfile)
        self._entries: dict[str, Entry] | None = None
        self._decisions: dict[str, Decision] = {}
        self._digests: dict[str, str] = {}
        self._trees: dict[tuple[str, tuple[str, ...]], str] = {}
        self.stat_cache = StatCache.load(stat_cache_dir, self.root)
        self.bytes_hashed = 0

    # -- walk -----------------------------------------------------------------------------
    def entries(self) -> dict[str, Entry]:
        """Every path sent (sorted component-wise), parents of re-included paths included."""
        if self._entries is None:
            found: dict[str, Entry] = {}
            st = os.lstat(self.root)
            found[""] = self._entry("", st)
            self._walk("", None, found, [])
            # depth-first over name-sorted directories: already in component-wise order
            self._entries = found
        return self._entries

    def _entry(self, rel: str, st: os.stat_result) -> Entry:
        kind = _kind(st.st_mode)
        link = ""
        if kind == "symlink":
            link = str((self.root / rel).readlink())
        return Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "file" else 0, link,
                     st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_uid, st.st_gid)

    def _walk(self, rel: str, state: MatchState | None, out: dict[str, Entry],
              pending: list[tuple[str, os.stat_result]]) -> None:
        """Depth-first; ``pending`` holds excluded ancestors, emitted once a descendant is kept."""
        base = self.root / rel if rel else self.root
        try:
            with os.scandir(base) as it:
                items = sorted(it, key=lambda e: e.name)
        except PermissionError as exc:
            raise ContextError(f"cannot read context directory {rel or '.'!r}: {exc.strerror}") from None
        for item in items:
            path = f"{rel}/{item.name}" if rel else item.name
            st = item.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if self.matcher:
                decision, child_state = self.matcher.decide(path, state)
                self._decisions[path] = decision
            else:
                decision, child_state = Decision(False), None
            if decision.excluded:
                if is_dir and not self.matcher.may_skip_dir(path):
                    self._walk(path, child_state, out, [*pending, (path, st)])
                continue
            for ppath, pst in pending:
                if ppath not in out:
                    out[ppath] = self._entry(ppath, pst)
            pending = [p for p in pending if p[0] not in out]
            out[path] = self._entry(path, st)
            if is_dir:
                self._walk(path, child_state, out, [])

    def stat_fingerprint(self) -> str:
        """A digest of what is sent, by metadata only (path, type, mode, size, inode, mtime,
        ctime, link target): equal fingerprints mean an unchanged context. Never a cache key
        (a touched file changes it); used to skip a build whose inputs did not move."""
        h = hashlib.sha256()
        for path, e in self.entries().items():
            h.update(f"{path}\0{e.kind}\0{e.mode}\0{e.size}\0{e.ino}\0{e.mtime_ns}\0{e.ctime_ns}"
                     f"\0{e.linkname}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def decide(self, rel: str) -> Decision:
        """Why ``rel`` is sent or not (the deciding .dockerignore pattern, if any)."""
        rel = self.clean(rel)
        if not rel or not self.matcher:
            return Decision(False)
        if rel in self._decisions:
            return self._decisions[rel]
        state: MatchState | None = None
        parts = rel.split("/")
        decision = Decision(False)
        for i in range(len(parts)):
            decision, state = self.matcher.decide("/".join(parts[: i + 1]), state)
        return decision

    @staticmethod
    def clean(rel: str) -> str:
        """A user path as a context-relative path: '/a/../b/' → 'b'; nothing escapes the root."""
        return go_clean("/" + rel).lstrip("/")

    # -- digests --------------------------------------------------------------------------
    def file_digest(self, entry: Entry) -> str:
        """sha256 hex of a regular file's bytes (stat cache first)."""
        cached = self._digests.get(entry.path)
        if cached is not None:
            return cached
        hexdigest = self.stat_cache.lookup(entry)
        if hexdigest is None:
            try:
                fd = os.open(self.root / entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise ContextError(f"cannot read context file {entry.path!r}: {exc.strerror}") from None
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                hexdigest = hashlib.file_digest(f, "sha256").hexdigest()
            self.bytes_hashed += st.st_size
            if (st.st_ino, st.st_size, st.st_mtime_ns) == (entry.ino, entry.size, entry.mtime_ns):
                self.stat_cache.remember(entry, hexdigest)
        self._digests[entry.path] = hexdigest
        return hexdigest

    def under(self, rel: str) -> Iterator[Entry]:
        """The entries strictly below directory ``rel`` ('' = all), in walk order."""
        entries = self.entries()
        if not rel:
            yield from (e for p, e in entries.items() if p)
            return
        prefix = rel + "/"
        for p, e in entries.items():
            if p.startswith(prefix):
                yield e

    def excluded_under(self, rel: str) -> list[str]:
        """Paths below directory ``rel`` (relative to it) that exist but are not sent; a path
        whose ancestor is listed is left out (the ancestor covers it)."""
        if not self.matcher:
            return []
        entries = self.entries()
        prefix = rel + "/" if rel else ""
        cut = len(prefix)
        out: list[str] = []
        for path in sorted(self._decisions, key=_sort_key):
            if not path.startswith(prefix) or path in entries or not self._decisions[path].excluded:
                continue
            if out and (path[cut:] + "/").startswith(out[-1] + "/"):
                continue
            out.append(path[cut:])
        return out

    def record(self, entry: Entry, name: str) -> str:
        """One line of a tree listing: what a COPY of this entry depends on (no mtime, no owner)."""
        if entry.kind == "file":
            return f"{name}\0file\0{entry.mode:o}\0{self.file_digest(entry)}\n"
        if entry.kind == "symlink":
            return f"{name}\0symlink\0{entry.mode:o}\0{entry.linkname}\n"
        return f"{name}\0{entry.kind}\0{entry.mode:o}\0\n"

    def tree_digest(self, rel: str, exclude: Matcher | None = None) -> str:
        """sha256 over the listing of a file or directory as COPY would see it."""
        key = (rel, tuple(str(p) for p in exclude.patterns) if exclude else ())
        cached = self._trees.get(key)
        if cached is not None:
            return cached
        entry = self.entries().get(rel)
        if entry is None:
            raise ContextError(f"{rel!r}: not found in the build context")
        h = hashlib.sha256()
        h.update(self.record(entry, ".").encode("utf-8", "surrogateescape"))
        if entry.kind == "dir":
            cut = len(rel) + 1 if rel else 0
            for child in self.under(rel):
                name = child.path[cut:]
                if exclude and exclude.excluded(name):
                    continue
                h.update(self.record(child, name).encode("utf-8", "surrogateescape"))
        digest = "sha256:" + h.hexdigest()
        self._trees[key] = digest
        return digest

    # -- sources --------------------------------------------------------------------------
    def resolve_link(self, rel: str, *, depth: int = 0) -> str:
        """Follow a symlink at ``rel`` inside the context (as docker does for a COPY source)."""
        entries = self.entries()
        entry = entries.get(rel)
        if entry is None or entry.kind != "symlink":
            return rel
        if depth > 40:
            raise ContextError(f"{rel!r}: too many levels of symbolic links")
        target = entry.linkname
        base = rel.rpartition("/")[0]
        joined = target if target.startswith("/") else f"{base}/{target}"
        # Resolve every component, since an intermediate one may be a link too.
        parts = self.clean(joined).split("/")
        cur = ""
        for part in parts:
            cur = f"{cur}/{part}" if cur else part
            cur = self.resolve_link(cur, depth=depth + 1)
        return cur

    def sources(self, pattern: str) -> list[Source]:
        """Context paths matching a COPY/ADD source (glob or plain). Empty if nothing matches."""
        rel = self.clean(pattern)
        entries = self.entries()
        if has_glob(rel):
            regex = glob_regex(rel)
            depth = rel.count("/")
            names = [p for p in entries if p and p.count("/") == depth and regex.match(p)]
        else:
            names = [rel] if rel in entries else []
        out = []
        for name in names:
            target = self.resolve_link(name)
            entry = entries.get(target)
            if entry is None:
                continue
            out.append(Source(name, target, entry))
        return out

    def why_missing(self, pattern: str) -> str | None:
        """A hint for a source that matched nothing: the ignore pattern that excluded it."""
        rel = self.clean(pattern)
        if has_glob(rel) or not (self.root / rel).exists():
            return None
        decision = self.decide(rel)
        if decision.excluded and decision.pattern is not None:
            return (f"{rel!r} is excluded by {decision.pattern.where()} "
                    f"({str(decision.pattern)!r})")
        return None

    def close(self) -> None:
        """Persist the stat cache (only entries still present)."""
        if self._entries is not None:
            self.stat_cache.prune(p for p, e in self._entries.items() if e.kind == "file")
        self.stat_cache.save(self.root)

