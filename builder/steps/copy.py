"""COPY / ADD / WORKDIR as file actions run by runtime.sandbox.apply (runtime.fileops) in the stage's
active snapshot, so --chown names resolve in the image and ownership is real rootless; the layer is
the upper directory, diffed like a RUN's; ``--link`` copies onto an empty snapshot (key and layer
independent of the base). Keys use content digests, never mtimes. Imports builder, grammar.ast;
runtime inside functions."""

# Docker's rules: a directory source copies its contents; several sources (or a glob) need a
# destination ending in '/'; a relative destination is under WORKDIR; .dockerignore'd files are never
# copied; a symlink named as a source is followed (inside the context), symlinks inside a copied tree
# stay links; --chmod is octal or symbolic; ADD extracts local tar archives, fetches http(s) URLs
# (--checksum, mtime from Last-Modified) and git repositories.

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.cachekey import KeyDoc
from builder.dockerignore import Matcher, glob_regex, go_clean, parse_ignore
from builder.errors import BuildError, ContextError
from builder.state import StageState
from builder.steps import Prepared, StepEnv, StepOutcome, expand, expand_heredoc
from grammar import ast

_URL = re.compile(r"^https?://", re.I)
_GIT = re.compile(r"^(git@[^:]+:|git://|ssh://|(https?|file)://\S+\.git/?(#\S*)?$)", re.I)


def resolve_dest(dest: str, workdir: str) -> tuple[str, bool]:
    """(absolute cleaned destination, whether it names a directory)."""
    is_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.") or dest.endswith("/..")
    full = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
    cleaned = go_clean(full)
    return cleaned, is_dir or cleaned == "/"


@dataclass
class _Source:
    """One resolved source of a COPY/ADD."""

    origin: str                  # context | named | stage | image | url | git | inline | archive
    pattern: str                 # as written (after expansion)
    items: list[dict[str, Any]]  # copy items (see runtime.fileops "copy")
    digest: str                  # what the key hashes for it
    listing: Callable[[], dict[str, str]] | None = None  # relpath -> "kind mode digest" (explain)


def _parents_name(path: str) -> str:
    """--parents: the part of a matched path kept under the destination ('./' is a pivot)."""
    if "/./" in f"/{path}":
        return path.split("/./", 1)[1] if "/./" in path else path[2:] if path.startswith("./") else path
    return path


class CopyHandler:
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Copy | ast.Add)
        is_add = isinstance(ins, ast.Add)
        values = state.expand_env()
        sp = ins.span

        def x(word: str) -> str:
            return expand(word, values, env.escape, sp)

        raw_sources = [x(s) for s in ins.sources]
        dest_raw = x(ins.dest)
        if not dest_raw:
            raise BuildError(f"{ins.KIND}: the destination is empty", span=sp)
        dest, dest_dir = resolve_dest(dest_raw, state.workdir)
        chown = x(ins.chown) if ins.chown else None
        chmod = x(ins.chmod) if ins.chmod else None
        _check_chmod(chmod, sp)
        if ins.link and chown and not _numeric_owner(chown):
            # as BuildKit (moby/buildkit#7134): a --link copy happens on an empty tree with no
            # /etc/passwd, and must not depend on the base image anyway
            raise BuildError(f"{ins.KIND} --link --chown={chown}: user and group names cannot be "
                             "resolved in a --link copy", span=sp,
                             hint="use numeric ids (--chown=1000:1000), or drop --link")
        excludes = [x(e) for e in ins.exclude]
        exclude = _exclude_matcher(excludes)
        from_ = x(ins.from_) if isinstance(ins, ast.Copy) and ins.from_ else None
        parents = isinstance(ins, ast.Copy) and ins.parents
        checksum = x(ins.checksum) if isinstance(ins, ast.Add) and ins.checksum else None
        keep_git = isinstance(ins, ast.Add) and ins.keep_git_dir

        sources: list[_Source] = []
        for h in ins.inline_sources:
            body = expand_heredoc(h, values, env.escape)
            folder = Path(env.tmp) / f"inline-{secrets.token_hex(6)}"
            folder.mkdir()
            (folder / h.name).write_text(body)
            (folder / h.name).chmod(0o644)          # BuildKit's Mkfile mode for inline files
            digest = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
            sources.append(_Source("inline", h.name, [{"root": str(folder), "rel": h.name, "kind": "file",
                                                      "name": ""}], digest))
        for pattern in raw_sources:
            if from_ is not None:
                sources.append(self._from_source(from_, pattern, parents, exclude, env, sp))
            elif is_add and _GIT.match(pattern):
                sources.append(_git_source(pattern, keep_git, env, sp))
            elif is_add and _URL.match(pattern):
                sources.append(_url_source(pattern, checksum, env, sp))
            else:
                sources.append(_context_source(env.context(), pattern, parents, exclude, is_add, sp))
        if not dest_dir and sum(len(s.items) for s in sources) > 1:
            raise BuildError(f"{ins.KIND}: when copying several sources (or a glob) the destination "
                             f"must be a directory ending in '/': {dest_raw!r}", span=sp,
                             hint=f"write {dest_raw.rstrip('/')}/")
        op: dict[str, Any] = {
            "add": is_add, "sources": [s.pattern for s in sources], "dest": dest, "dest_dir": dest_dir,
            "chown": chown, "chmod": chmod, "link": ins.link, "parents": parents, "exclude": excludes,
            "from": from_, "checksum": checksum, "keep_git_dir": keep_git, "epoch": env.epoch,
            "platform": state.platform,
        }
        inputs = {f"{i}:{s.origin}:{s.pattern}": s.digest for i, s in enumerate(sources)}
        # --link: the layer is made on an empty tree, so its key leaves the parent out (the
        # engine chains the stage key through cachekey.link_key)
        parent = "" if ins.link else str(state.key)
        doc = KeyDoc("copy", parent, op, inputs, {"text": ins.original})

        def detail() -> dict[str, Any]:
            # per-file listings, computed only when the key misses (they explain the miss)
            files = {f"{i}:{s.origin}:{s.pattern}": s.listing() for i, s in enumerate(sources) if s.listing}
            return {"text": ins.original, "files": files}

        created_by = f"{ins.KIND} " + " ".join(
            [*(f"--{f.name}={f.value}" if f.value is not None else f"--{f.name}" for f in ins.flags),
             *[s.pattern for s in sources], dest_raw])
        what = ins.KIND + (f" --from={from_}" if from_ else "")
        return Prepared(ins, doc, created_by, data={"detail": detail, "sources": sources, "dest": dest,
                                                   "dest_dir": dest_dir,
                                                   "chown": chown, "chmod": chmod, "from": from_,
                                                   "link": ins.link, "preserve": from_ is not None,
                                                   "what": what})

    def _from_source(self, from_: str, pattern: str, parents: bool, exclude: Matcher | None,
                     env: StepEnv, span: ast.Span) -> _Source:
        named = env.named_context(from_)
        if named is not None:
            src = _context_source(named, pattern, parents, exclude, False, span)
            src.origin = "named"
            return src
        try:
            other = env.stage_state(from_, span)
            origin = "stage"
        except KeyError:
            other = env.image_state(from_, span)
            origin = "image"
        base = None
        full = pattern
        if parents:
            # BuildKit: an optional '/./' pivot; the path after it is kept under the destination
            head, sep, tail = pattern.partition("/./")
            base, full = (go_clean("/" + head), f"{head}/{tail}") if sep else ("/", pattern)
        path = go_clean("/" + full)
        glob = _has_glob(path)
        if glob:
            glob_regex(path)                       # a bad pattern fails here, with its location
        item = {"state": other, "src": path, "glob": glob, "name": None,
                "parents": base.lstrip("/") if base is not None else None,
                "exclude": exclude_rules(exclude)}
        return _Source(origin, pattern, [item], str(other.key))

    def execute(self, prep: Prepared, state: StageState, env: StepEnv) -> StepOutcome:
        # --chown names and --chmod (octal or symbolic) are resolved by runtime.fileops inside
        # the sandbox, per file, against the mounted image
        owner: str | None = prep.data["chown"]
        mode: str | None = prep.data["chmod"]
        dest, dest_dir = prep.data["dest"], prep.data["dest_dir"]
        actions: list[dict[str, Any]] = []
        extra: list[tuple[str, Any]] = []
        sn = env.snapshotter()
        views: list[str] = []
        try:
            for s in prep.data["sources"]:
                groups: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
                for item in s.items:
                    if "state" in item:
                        root = self._stage_root(item["state"], env, extra, views, prep.ins.span)
                        target = _as_dir(dest) if dest_dir or item["parents"] is not None else dest
                        actions.append({
                            "op": "copy", "sources": [item["src"].lstrip("/") or "."], "dest": target,
                            "source_root": root, "workdir": "/", "owner": owner, "preserve_owner": True,
                            "mode": mode, "mtime": None, "skip": [], "glob": item["glob"],
                            "parents": item["parents"], "exclude": item["exclude"]})
                    elif item["kind"] == "archive":
                        actions.append({"op": "extract", "archive": item["src"], "dest": _as_dir(dest),
                                        "workdir": "/", "owner": owner})
                    else:
                        groups.setdefault((item["root"], item.get("name") or ""), []).append(item)
                for (group_root, name), items in groups.items():
                    target = dest
                    if name:   # --parents: the kept directories go under the destination
                        target = _as_dir(go_clean(f"{dest}/{name}"))
                    elif dest_dir or len(items) > 1:
                        target = _as_dir(dest)
                    actions.append({
                        "op": "copy", "sources": [i["rel"] for i in items], "dest": target,
                        "source_root": group_root, "workdir": "/", "owner": owner,
                        "preserve_owner": bool(prep.data["preserve"]), "mode": mode, "mtime": None,
                        "skip": [p for i in items for p in i.get("skip") or ()]})
            return apply_actions(actions, state, env, link=bool(prep.data["link"]), extra_mounts=extra,
                                 created_by=prep.created_by, span=prep.ins.span, what=prep.data["what"])
        finally:
            for vkey in views:
                with contextlib.suppress(Exception):  # noqa: BLE001 - cleanup
                    sn.remove(vkey)

    @staticmethod
    def _stage_root(other: StageState, env: StepEnv, extra: list[tuple[str, Any]], views: list[str],
                    span: ast.Span) -> str:
        """A host directory holding another stage's rootfs (a view of its snapshot)."""
        sn = env.snapshotter()
        chain = env.ensure_snapshot(other)
        mountpoint = Path(env.tmp) / f"from-{secrets.token_hex(4)}"
        mountpoint.mkdir()
        if chain is None:
            return str(mountpoint)
        mounts = sn.mounts(chain)
        if len(mounts) == 1 and mounts[0].type == "bind":
            return str(mounts[0].source)
        vkey = f"view-{env.build_id}-{secrets.token_hex(4)}"
        extra.append((str(mountpoint), sn.view(vkey, chain)))
        views.append(vkey)
        return str(mountpoint)


def _as_dir(path: str) -> str:
    return path if path.endswith("/") else path + "/"


class WorkdirHandler:
    """WORKDIR sets the config's working dir and creates the directory (owned by USER)."""

    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        from dataclasses import replace

        assert isinstance(ins, ast.Workdir)
        raw = expand(ins.path, state.expand_env(), env.escape, ins.span)
        if not raw:
            raise BuildError("WORKDIR: the path is empty", span=ins.span)
        path = go_clean(raw if raw.startswith("/") else f"{state.workdir.rstrip('/')}/{raw}")
        config = replace(state.config, working_dir=path)
        op = {"mkdir": path, "user": state.config.user, "epoch": env.epoch, "platform": state.platform}
        doc = KeyDoc("workdir", str(state.key), op, {}, {"text": ins.original})
        return Prepared(ins, doc, f"WORKDIR {path}", config=config,
                        data={"path": path, "user": state.config.user or None})

    def execute(self, prep: Prepared, state: StageState, env: StepEnv) -> StepOutcome:
        # WORKDIR under USER: the directories it creates belong to that user and its primary
        # group, resolved in the image's /etc/passwd inside the sandbox; a user the image does
        # not define means root, as BuildKit does
        user = prep.data["user"]
        action = {"op": "mkdir", "path": prep.data["path"], "workdir": "/", "owner": user or None,
                  "owner_missing": "root", "mode": 0o755}
        outcome = apply_actions([action], state, env, link=False, extra_mounts=[],
                                created_by=prep.created_by, span=prep.ins.span, what="WORKDIR")
        assert prep.config is not None
        outcome.config = prep.config
        return outcome


def _numeric_owner(spec: str) -> bool:
    """A --chown that needs no /etc/passwd: numeric ids (or BuildKit's special 'root')."""
    user, _, group = spec.partition(":")
    ok = {"root"}
    return (user.isdigit() or user in ok) and (not group or group.isdigit() or group in ok)


def apply_actions(actions: list[dict[str, Any]], state: StageState, env: StepEnv, *, link: bool,
                  extra_mounts: list[tuple[str, Any]], created_by: str, span: ast.Span | None = None,
                  what: str = "COPY") -> StepOutcome:
    """Run file actions on a fresh active snapshot of the stage, then diff and commit it.
    A failed action (a source glob that matched nothing, an unknown --chown name...) is a
    BuildError at the instruction's location."""
    from builder.steps.run import commit_active
    from runtime import sandbox
    from runtime.errors import SandboxError

    sn = env.snapshotter()
    parent = None if link else env.ensure_snapshot(state)
    active = f"build-{env.build_id}-{secrets.token_hex(4)}"
    mounts = sn.prepare(active, parent, labels={"pybuild.build": env.build_id})
    root = Path(env.tmp) / f"root-{secrets.token_hex(4)}"
    root.mkdir()
    keep = False
    try:
        kwargs: dict[str, Any] = {}
        if extra_mounts:
            kwargs["extra_mounts"] = extra_mounts
        idmap = None
        if os.geteuid() != 0:
            from runtime.idmap import rootless_mapping

            idmap = rootless_mapping()
        if actions:
            batch = actions[0] if len(actions) == 1 else {"op": "batch", "actions": actions}
            try:
                sandbox.apply(batch, root=str(root), rootfs_mounts=mounts, idmap=idmap, **kwargs)
            except SandboxError as exc:
                raise action_error(exc, what, span) from None
        if link:
            layer, snapshot = commit_active(sn, active, _empty_like(state), env, commit=False)
        else:
            layer, snapshot = commit_active(sn, active, state, env)
            keep = snapshot is not None
        return StepOutcome(layer, state.config, created_by, "pybuild.dockerfile.v0", snapshot=snapshot)
    finally:
        if not keep:
            with contextlib.suppress(Exception):  # noqa: BLE001 - best-effort cleanup
                sn.remove(active)
        shutil.rmtree(root, ignore_errors=True)


def _empty_like(state: StageState) -> StageState:
    s = state.copy()
    s.layers = []
    return s


def export_paths(other: StageState, rel: str, dest: Path, env: StepEnv) -> Path:
    """Copy ``rel`` out of another stage's (or image's) rootfs into host directory ``dest`` (for
    RUN --mount=type=bind,from=STAGE); returns the host path to bind (a file or a directory).

    The file action runs with ``dest`` itself as the root and the other stage's read-only view
    mounted beside it, so owners and modes are kept and nothing is mounted on the host."""
    from runtime import sandbox

    sn = env.snapshotter()
    chain = env.ensure_snapshot(other)
    src = go_clean("/" + rel).lstrip("/") or "."
    out = dest / "out"
    if chain is None:
        out.mkdir()
        return out
    vkey = f"view-{env.build_id}-{secrets.token_hex(4)}"
    mountpoint = Path(env.tmp) / f"from-{secrets.token_hex(4)}"
    mountpoint.mkdir()
    try:
        view = sn.view(vkey, chain)
        action = {"op": "copy", "sources": [src], "dest": "/out/", "source_root": str(mountpoint),
                  "workdir": "/", "owner": None, "preserve_owner": True, "mode": None, "mtime": None,
                  "skip": []}
        idmap = None
        if os.geteuid() != 0:
            from runtime.idmap import rootless_mapping

            idmap = rootless_mapping()
        sandbox.apply(action, root=str(dest), rootfs_mounts=(), idmap=idmap,
                      extra_mounts=[(str(mountpoint), view)])
    finally:
        with contextlib.suppress(Exception):  # noqa: BLE001
            sn.remove(vkey)
    name = posixpath.basename(src)
    single = out / name
    if src != "." and single.exists() and not single.is_dir() and len(list(out.iterdir())) == 1:
        return single
    return out


# -- sources ------------------------------------------------------------------------------------
def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _exclude_matcher(patterns: list[str]) -> Matcher | None:
    if not patterns:
        return None
    return Matcher(parse_ignore("\n".join(patterns), source="--exclude"))


def _check_chmod(chmod: str | None, span: ast.Span) -> None:
    """--chmod as BuildKit accepts it: octal up to 07777, or chmod(1) symbolic (u+x,g-w)."""
    if chmod is None:
        return
    from runtime.fileops import FileActionError, parse_mode

    try:
        parse_mode(chmod)
    except FileActionError as exc:
        raise BuildError(f"--chmod: {exc}", span=span,
                         hint="use an octal mode (0755) or chmod(1) symbolic clauses (u+x,go=rX)") from None


def exclude_rules(matcher: Matcher | None) -> list[dict[str, Any]]:
    """--exclude patterns as JSON for runtime.fileops: each .dockerignore pattern with an
    anchored regex that matches exactly what builder.dockerignore's Pattern.match does."""
    if matcher is None:
        return []
    out = []
    for p in matcher.patterns:
        if p.kind == "exact":
            rx = "^" + re.escape(p.text) + "$"
        elif p.kind == "prefix":
            rx = "^" + re.escape(p.text[:-2])
        elif p.kind == "suffix":
            suffix = p.text[2:]
            alt = "|" + re.escape(suffix[1:]) if suffix.startswith("/") else ""
            rx = "^(?:.*" + re.escape(suffix) + alt + ")$"
        else:
            assert p.regex is not None
            rx = p.regex.pattern
        out.append({"pattern": p.text, "regex": rx, "exclusion": p.exclusion})
    return out


def action_error(exc: Exception, what: str, span: ast.Span | None) -> BuildError:
    """A file action's failure as a Dockerfile error (the sandbox's prefix dropped)."""
    text = str(exc)
    for prefix in ("file action failed (action): ", "copy: ", "mkdir: ", "extract: "):
        text = text.removeprefix(prefix)
    hint = getattr(exc, "hint", None)
    if "unable to find" in text:
        hint = hint or "use a numeric id, or create the account in an earlier step"
    return BuildError(f"{what}: {text}", span=span, hint=hint)


def _context_source(ctx: Any, pattern: str, parents: bool, exclude: Matcher | None, is_add: bool,
                    span: ast.Span) -> _Source:
    matches = ctx.sources(pattern)
    if not matches:
        hint = ctx.why_missing(pattern)
        what = "matched no files" if _has_glob(pattern) else "not found"
        raise ContextError(f"{'ADD' if is_add else 'COPY'} source {pattern!r}: {what} in the build "
                           f"context{' ' + repr(ctx.name) if ctx.name != 'context' else ''}",
                           span=span, hint=hint or "check the path; it is relative to the context directory")
    items: list[dict[str, Any]] = []
    listed: list[Any] = []      # the matches, for the lazy listing
    h = hashlib.sha256()
    root = str(ctx.root)
    for m in matches:
        entry = m.entry
        if exclude is not None and m.path and exclude.excluded(m.path):
            continue
        kept = _parents_name(m.path) if parents else ""
        if entry.kind == "dir":
            skip = [f"{m.path}/{p}" if m.path else p for p in _skips(ctx, m.target, exclude)]
            items.append({"root": root, "rel": m.path or ".", "kind": "dir", "name": kept, "skip": skip})
            listed.append(m)
        elif entry.kind in ("file", "symlink"):
            if is_add and entry.kind == "file" and _is_archive(ctx.root / m.target):
                items.append({"src": str(ctx.root / m.target), "kind": "archive"})
            else:
                items.append({"root": root, "rel": m.path, "kind": entry.kind, "src_mode": entry.mode,
                              "name": posixpath.dirname(kept) if kept else ""})
            listed.append(m)
        else:
            continue
        h.update(f"{m.path}\0{ctx.tree_digest(m.target, exclude)}\n".encode("utf-8", "surrogateescape"))
    if not items:
        raise ContextError(f"source {pattern!r}: every match is excluded by --exclude", span=span)
    origin = "context"
    if is_add and all(i["kind"] == "archive" for i in items):
        origin = "archive"

    def listing() -> dict[str, str]:
        out: dict[str, str] = {}
        for m in listed:
            out[m.path or "."] = _listing(ctx, m.entry)
            if m.entry.kind != "dir":
                continue
            cut = len(m.target) + 1 if m.target else 0
            for child in ctx.under(m.target):
                name = child.path[cut:]
                if exclude is None or not exclude.excluded(name):
                    out[f"{m.path}/{name}".lstrip("/")] = _listing(ctx, child)
        return out

    return _Source(origin, pattern, items, "sha256:" + h.hexdigest(), listing)


def _listing(ctx: Any, entry: Any) -> str:
    if entry.kind == "dir":
        return f"dir {entry.mode:o} -"
    if entry.kind == "file":
        return f"file {entry.mode:o} sha256:{ctx.file_digest(entry)}"
    if entry.kind == "symlink":
        return f"symlink {entry.mode:o} {entry.linkname}"
    return f"{entry.kind} {entry.mode:o} -"


def _skips(ctx: Any, rel: str, exclude: Matcher | None) -> list[str]:
    """Paths under directory ``rel`` (relative to it) that must not be copied: excluded by
    .dockerignore (whole subtrees where possible) or by --exclude."""
    out = [p for p in ctx.excluded_under(rel)]
    if exclude is not None:
        cut = len(rel) + 1 if rel else 0
        for child in ctx.under(rel):
            name = child.path[cut:]
            if exclude.excluded(name):
                out.append(name)
    return out


_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def _is_archive(path: Path) -> bool:
    """ADD extracts local tar archives (plain, gzip, bzip2, xz, zstd), detected by content."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if any(head.startswith(m) for m in _ARCHIVE_MAGIC):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def _url_source(url: str, checksum: str | None, env: StepEnv, span: ast.Span) -> _Source:
    """Download an ADD URL (to compute its digest; the copy uses the downloaded file)."""
    env.flags["volatile"] = True
    import email.utils
    import urllib.request

    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "index.html"
    dest = Path(env.tmp) / f"url-{secrets.token_hex(6)}"
    dest.mkdir()
    target = dest / name
    h = hashlib.sha256()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "pybuild"})  # noqa: S310 - http(s) only (_URL)
        with urllib.request.urlopen(req, timeout=60) as resp, target.open("wb") as out:  # noqa: S310
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            modified = resp.headers.get("Last-Modified")
    except OSError as exc:
        raise BuildError(f"ADD {url}: download failed: {exc}", span=span) from None
    digest = "sha256:" + h.hexdigest()
    if checksum and checksum != digest:
        raise BuildError(f"ADD {url}: checksum mismatch: expected {checksum}, got {digest}", span=span)
    mtime = None
    if modified:
        with contextlib.suppress(TypeError, ValueError):
            mtime = int(email.utils.parsedate_to_datetime(modified).timestamp())
    target.chmod(0o600)                     # BuildKit's mode for downloaded files
    if mtime is not None:
        os.utime(target, (mtime, mtime))
    item = {"root": str(dest), "rel": name, "kind": "file", "name": ""}
    return _Source("url", url, [item], f"{digest}:{mtime}")


def _git_source(url: str, keep_git: bool, env: StepEnv, span: ast.Span) -> _Source:
    """Clone a git URL (``#ref[:subdir]`` fragment) at its resolved commit."""
    env.flags["volatile"] = True
    base, _, frag = url.partition("#")
    ref, _, subdir = frag.partition(":")
    dest = Path(env.tmp) / f"git-{secrets.token_hex(6)}"
    cmd = ["git", "clone", "--quiet", "--recurse-submodules"]
    if ref:
        cmd += ["--branch", ref] if not re.fullmatch(r"[0-9a-f]{40}", ref) else []
    cmd += ["--", base, str(dest)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=600,
                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        if ref and re.fullmatch(r"[0-9a-f]{40}", ref):
            subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", ref], check=True,
                           capture_output=True, timeout=120)
        commit = subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=60).stdout.strip()
    except FileNotFoundError:
        raise BuildError(f"ADD {url}: git is not installed", span=span) from None
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise BuildError(f"ADD {url}: git clone failed: {err[-1] if err else exc}", span=span) from None
    if not keep_git:
        shutil.rmtree(dest / ".git", ignore_errors=True)
    item = {"root": str(dest), "rel": go_clean(subdir).lstrip("/") or "." if subdir else ".",
            "kind": "dir", "name": ""}
    return _Source("git", url, [item], f"git:{commit}:{subdir}:{int(keep_git)}")
