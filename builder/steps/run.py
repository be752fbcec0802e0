"""RUN: the command runs in runtime.sandbox on the stage's active overlay snapshot; the layer is read
from the upper directory (O(bytes changed)) by runtime.diff, rootless inside the build's user
namespace so it holds the ids the container saw. The key hashes argv, env, user, workdir, network,
mounts and build args, never proxy args or secret values. Imports builder, grammar.ast, registry.model;
runtime inside functions."""

# Shell form honours SHELL; heredocs go to the shell (or run as a script when the whole command is one
# heredoc starting with '#!'); --mount bind (context, stage or image), cache (per id under the store,
# never in a layer; from= seeds it), tmpfs and secret; --network default|none|host (default: the host's
# network, as BuildKit without CNI).

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.cachekey import PROXY_ARGS, KeyDoc
from builder.errors import BuildError, StepFailed
from builder.state import LayerRef, StageState
from builder.steps import Prepared, StepEnv, StepOutcome, expand, expand_heredoc
from grammar import ast
from registry.model import ContainerConfig

TAIL_LINES = 20
SHEBANG_SCRIPT = "/dev/pipes"


@dataclass
class _MountPlan:
    kind: str
    target: str
    hashed: dict[str, Any]
    input_key: str | None = None
    input_digest: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)


def _abs(path: str, workdir: str) -> str:
    from builder.dockerignore import go_clean

    return go_clean(path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}")


def run_argv(ins: ast.Run, state: StageState, env: StepEnv) -> tuple[list[str], dict[str, str]]:
    """The argv of a RUN and any script files it needs (path in the container → content)."""
    files: dict[str, str] = {}
    if isinstance(ins.command, tuple):
        return list(ins.command), files
    shell = list(state.shell)
    if not ins.heredocs:
        return [*shell, ins.command], files
    values = state.expand_env()
    command = ins.command.strip()
    if len(ins.heredocs) == 1 and _only_heredoc(command, ins.heredocs[0]):
        h = ins.heredocs[0]
        body = expand_heredoc(h, values, env.escape) if h.expand else h.data
        if body.startswith("#!"):
            path = f"{SHEBANG_SCRIPT}/{secrets.token_hex(4)}"
            files[path] = body
            return [path], files
        return [*shell, body], files
    # The shell understands heredocs itself: hand it the command with the bodies.
    script = ins.command
    for h in ins.heredocs:
        script += "\n" + h.content + ("" if h.content.endswith("\n") or not h.content else "\n") + h.name
    return [*shell, script], files


def _only_heredoc(command: str, h: ast.Heredoc) -> bool:
    """True when the command is just the heredoc marker (``<<EOF``, ``<<-'EOF'``...)."""
    return re.fullmatch(r"[0-9]*<<-?[ \t]*([\"']?)" + re.escape(h.name) + r"\1", command) is not None


class RunHandler:
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Run)
        argv, files = run_argv(ins, state, env)
        network = ins.network or env.opts.network or "default"
        mounts = [self._plan_mount(m, state, env, ins) for m in ins.mounts]
        inputs = {m.input_key: m.input_digest for m in mounts if m.input_key and m.input_digest}
        op: dict[str, Any] = {
            "argv": argv, "env": [e for e in state.run_env() if e.partition("=")[0] not in PROXY_ARGS],
            "user": state.config.user, "workdir": state.workdir, "network": network,
            "mounts": [m.hashed for m in mounts], "args": state.hashed_args(),
            "files": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in files.items()},
            "epoch": env.epoch, "platform": state.platform,
        }
        if ins.security:
            op["security"] = ins.security
        doc = KeyDoc("run", str(state.key), op, inputs, {"text": ins.original})
        args = state.hashed_args()
        prefix = f"|{len(args)} " + " ".join(f"{k}={v}" for k, v in args.items()) + " " if args else ""
        created_by = "RUN " + prefix + " ".join(argv)
        return Prepared(ins, doc, created_by, data={"argv": argv, "files": files, "network": network,
                                                   "mounts": mounts})

    # -- mounts ------------------------------------------------------------------------------
    def _plan_mount(self, m: ast.Mount, state: StageState, env: StepEnv, ins: ast.Run) -> _MountPlan:
        if m.deferred:
            m = _expand_mount(m, state, env, ins)
        target = _abs(m.target or "", state.workdir) if m.target else ""
        if m.type == "ssh":
            raise BuildError("RUN --mount=type=ssh is not supported", span=ins.span,
                             hint="use --mount=type=secret to pass credentials")
        if m.type == "secret":
            sid = m.id or (Path(m.target).name if m.target else "")
            if not sid:
                raise BuildError("RUN --mount=type=secret needs id= or target=", span=ins.span)
            tgt = target or (f"/run/secrets/{sid}" if not m.env else "")
            hashed = {"type": "secret", "id": sid, "target": tgt, "env": m.env, "required": m.required,
                      "mode": m.mode, "uid": m.uid, "gid": m.gid}
            return _MountPlan("secret", tgt, hashed, spec={"id": sid, "mount": m})
        if not target:
            raise BuildError(f"RUN --mount=type={m.type}: target= is required", span=ins.span)
        if m.type == "tmpfs":
            return _MountPlan("tmpfs", target, {"type": "tmpfs", "target": target, "size": m.size},
                              spec={"mount": m})
        if m.type == "cache":
            cid = m.id or target
            hashed = {"type": "cache", "id": cid, "target": target, "sharing": m.sharing or "shared",
                      "mode": m.mode, "uid": m.uid, "gid": m.gid, "readonly": m.readonly,
                      "from": m.from_, "source": m.source}
            if not m.from_:
                return _MountPlan("cache", target, hashed, spec={"id": cid, "mount": m})
            # from=STAGE|IMAGE|CONTEXT[,source=PATH]: BuildKit starts the cache from that
            # tree (a separate cache per id and per seed content); what RUN writes persists
            from builder.dockerignore import go_clean

            rel = go_clean("/" + (m.source or "/")).lstrip("/")
            named = env.named_context(m.from_)
            if named is not None:
                crel = named.clean(m.source or "/")
                digest = named.tree_digest(crel)
                seed: dict[str, Any] = {"context": named, "rel": crel, "key": f"context:{digest}:{crel}"}
            else:
                other = _other_state(m.from_, env, ins)
                digest = str(other.key)
                seed = {"state": other, "rel": rel, "key": f"stage:{digest}:{rel}"}
            return _MountPlan("cache", target, hashed, f"mount:{target}", digest,
                              spec={"id": cid, "mount": m, "seed": seed})
        # bind
        source = m.source or "/"
        hashed = {"type": "bind", "target": target, "source": source, "from": m.from_,
                  "readonly": m.readonly}
        key = f"mount:{target}"
        if m.from_:
            named = env.named_context(m.from_)
            if named is not None:
                rel = named.clean(source)
                return _MountPlan("bind", target, hashed, key, named.tree_digest(rel),
                                  spec={"context": named, "rel": rel, "mount": m})
            other = _other_state(m.from_, env, ins)
            return _MountPlan("bind", target, hashed, key, str(other.key),
                              spec={"state": other, "rel": source, "mount": m})
        ctx = env.context()
        rel = ctx.clean(source)
        if rel not in ctx.entries():
            hint = ctx.why_missing(source)
            raise BuildError(f"RUN --mount source {source!r}: not found in the build context",
                             span=ins.span, hint=hint)
        return _MountPlan("bind", target, hashed, key, ctx.tree_digest(rel),
                          spec={"context": ctx, "rel": rel, "mount": m})

    # -- execution -----------------------------------------------------------------------------
    def execute(self, prep: Prepared, state: StageState, env: StepEnv) -> StepOutcome:
        from runtime import spec as specmod

        ins = prep.ins
        assert isinstance(ins, ast.Run)
        sn = env.snapshotter()
        parent = env.ensure_snapshot(state)
        active = f"build-{env.build_id}-{secrets.token_hex(4)}"
        rootfs_mounts = sn.prepare(active, parent, labels={"pybuild.build": env.build_id})
        keep = False
        step_dir = Path(env.tmp) / f"run-{secrets.token_hex(4)}"
        step_dir.mkdir(parents=True)
        try:
            with contextlib.ExitStack() as stack:
                extra, secret_env = self._mounts(prep, state, env, step_dir, stack)
                network = prep.data["network"]
                opts = specmod.RunOptions(
                    entrypoint=tuple(prep.data["argv"]), env=tuple(secret_env),
                    user=state.config.user or None, workdir=state.workdir,
                    network="none" if network == "none" else "host", mounts=tuple(extra),
                    devices_cgroup=False, hostname="buildkitsandbox",
                    privileged=ins.security == "insecure")
                cfg = ContainerConfig(env=tuple(state.run_env()))
                self._etc_files(step_dir, network)
                (step_dir / "rootfs").mkdir()
                idmap = _idmap()
                spec = specmod.build_spec(cfg, opts, root_path=str(step_dir / "rootfs"),
                                          state_dir=str(step_dir), idmap=idmap,
                                          rootless=os.geteuid() != 0)
                spec.setdefault("annotations", {})["io.pybuild.build-step"] = "true"
                code, tail = _run_logged(spec, rootfs_mounts, env)
            if code != 0:
                text = " ".join(ins.original.split())
                raise StepFailed(f"{env.step_label} {text}: process exited with code {code}"
                                 + ("\n" + "\n".join(tail) if tail else ""),
                                 exit_status=code, span=ins.span)
            layer, snapshot = commit_active(sn, active, state, env)
            keep = snapshot is not None
            return StepOutcome(layer, state.config, prep.created_by, "pybuild.dockerfile.v0",
                               snapshot=snapshot)
        finally:
            if not keep:
                with contextlib.suppress(Exception):  # noqa: BLE001 - best-effort cleanup
                    sn.remove(active)
            remove_tree(step_dir)

    @staticmethod
    def _etc_files(step_dir: Path, network: str) -> None:
        from runtime import spec as specmod

        host_net = network != "none"
        hosts = ""
        if host_net:
            with contextlib.suppress(OSError):
                hosts = Path("/etc/hosts").read_text()
        try:
            resolv = Path("/etc/resolv.conf").read_text()
        except OSError:
            resolv = ""
        (step_dir / "hostname").write_text("buildkitsandbox\n")
        (step_dir / "hosts").write_text(specmod.hosts_file("buildkitsandbox", host_network=host_net,
                                                           host_hosts=hosts))
        (step_dir / "resolv.conf").write_text(specmod.resolv_conf(resolv, host_network=host_net))

    def _mounts(self, prep: Prepared, state: StageState, env: StepEnv, step_dir: Path,
                stack: contextlib.ExitStack) -> tuple[list[dict[str, Any]], list[str]]:
        from runtime import spec as specmod

        out: list[dict[str, Any]] = []
        secret_env: list[str] = []
        files: dict[str, str] = prep.data["files"]
        if files:
            scripts = step_dir / "scripts"
            scripts.mkdir()
            for path, body in files.items():
                f = scripts / Path(path).name
                f.write_text(body)
                f.chmod(0o755)
            out.append(specmod.bind_mount(str(scripts), SHEBANG_SCRIPT, readonly=True))
        for plan in prep.data["mounts"]:
            m: ast.Mount = plan.spec["mount"]
            if plan.kind == "tmpfs":
                opts = [f"size={m.size}"] if m.size else []
                out.append(specmod.tmpfs_mount(plan.target, [*opts, "exec"]))
            elif plan.kind == "secret":
                src = env.opts.secrets.get(plan.spec["id"])
                if src is None:
                    if m.required:
                        raise BuildError(f"secret {plan.spec['id']!r} is required but was not given",
                                         span=prep.ins.span,
                                         hint=f"pass --secret id={plan.spec['id']},src=FILE")
                    continue
                data = src.read()
                if m.env:
                    secret_env.append(f"{m.env}={data.decode('utf-8', 'replace')}")
                if plan.target:
                    sdir = step_dir / "secrets"
                    sdir.mkdir(exist_ok=True, mode=0o700)
                    secret_file = sdir / secrets.token_hex(6)
                    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                    secret_file.chmod(m.mode if m.mode is not None else 0o400)
                    chown_host(secret_file, m.uid or 0, m.gid or 0)
                    out.append(specmod.bind_mount(str(secret_file), plan.target, readonly=True))
            elif plan.kind == "cache":
                cache_path = stack.enter_context(_cache_dir(env, plan.spec["id"], m, plan.spec.get("seed"),
                                                            prep.ins.span))
                out.append(specmod.bind_mount(str(cache_path), plan.target, readonly=m.readonly))
            elif plan.kind == "bind":
                out.append(self._bind(plan, m, env, step_dir))
        return out, secret_env

    def _bind(self, plan: _MountPlan, m: ast.Mount, env: StepEnv, step_dir: Path) -> dict[str, Any]:
        from runtime import spec as specmod

        if "context" in plan.spec:
            ctx = plan.spec["context"]
            rel = plan.spec["rel"]
            src = _context_view(ctx, rel, step_dir, writable=not m.readonly)
            return specmod.bind_mount(str(src), plan.target, readonly=m.readonly)
        other: StageState = plan.spec["state"]
        src = _stage_path(other, plan.spec["rel"], env, step_dir)
        return specmod.bind_mount(str(src), plan.target, readonly=m.readonly)


def _other_state(name: str, env: StepEnv, ins: ast.Instruction) -> StageState:
    try:
        return env.stage_state(name, ins.span)
    except KeyError:
        return env.image_state(name, ins.span)


def _expand_mount(m: ast.Mount, state: StageState, env: StepEnv, ins: ast.Run) -> ast.Mount:
    try:
        from grammar import parse_mount
    except ImportError:
        raise BuildError("RUN --mount with variables needs grammar.parse_mount", span=ins.span) from None
    values = state.expand_env()
    result = parse_mount(m.raw, expand=lambda text: expand(text, values, env.escape, ins.span))
    assert isinstance(result, ast.Mount)
    return result


def _idmap() -> Any:
    if os.geteuid() == 0:
        return None
    from runtime.idmap import rootless_mapping

    return rootless_mapping()


@contextlib.contextmanager
def _cache_dir(env: StepEnv, cid: str, m: ast.Mount, seed: dict[str, Any] | None = None,
               span: ast.Span | None = None) -> Iterator[Path]:
    """A persistent directory per cache id (sharing: shared, locked = one user at a time,
    private = a fresh directory when another build holds it). With ``seed`` (from=...) the
    directory is another cache per seed content, created as a copy of the seed's tree; the
    uid/gid/mode options then do not apply (BuildKit uses them for an empty cache only)."""
    base = env.store.subdir("cache") / "mounts"
    base.mkdir(exist_ok=True)
    name = hashlib.sha256(cid.encode() + (b"\0" + seed["key"].encode() if seed else b"")).hexdigest()[:32]
    path = base / name
    if not path.exists():
        if seed is None:
            # made beside its final name: renaming a directory within one parent needs no
            # write access to it (rootless, it may belong to a subordinate id by then)
            tmp = base / f".new-{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o700)
            try:
                tmp.chmod(m.mode if m.mode is not None else 0o755)
                chown_host(tmp, m.uid or 0, m.gid or 0)
                tmp.rename(path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.rmdir()
                if not path.exists():
                    raise
        else:
            work = base / f".new-{secrets.token_hex(4)}"
            work.mkdir(mode=0o700)
            try:
                with contextlib.suppress(OSError):      # another build made it meanwhile
                    _seed_cache(seed, work, env, span).rename(path)
            finally:
                remove_tree(work)
    sharing = m.sharing or "shared"
    if sharing == "shared":
        yield path
        return
    lock = os.open(base / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if sharing == "locked":
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield path
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield path
        except BlockingIOError:
            private = Path(env.tmp) / f"cache-{name}-{secrets.token_hex(4)}"
            private.mkdir(mode=m.mode if m.mode is not None else 0o755)
            yield private
    finally:
        os.close(lock)


def _seed_cache(seed: dict[str, Any], work: Path, env: StepEnv, span: ast.Span | None) -> Path:
    """The initial content of a cache mount with from=: a copy of that stage's, image's or
    named context's directory ``source`` (owners and modes kept)."""
    if "context" in seed:
        ctx = seed["context"]
        if ctx.entries()[seed["rel"]].kind != "dir":
            raise BuildError(f"RUN --mount=type=cache,from={ctx.name}: source {seed['rel']!r} is not "
                             "a directory", span=span)
        return _context_view(ctx, seed["rel"], work, writable=True)
    from builder.steps.copy import export_paths

    out = export_paths(seed["state"], seed["rel"], work, env)
    if not out.is_dir() or out.name != "out":
        raise BuildError(f"RUN --mount=type=cache,from=...: source {'/' + seed['rel']!r} is not a "
                         "directory", span=span)
    return out


def _context_view(ctx: Any, rel: str, step_dir: Path, *, writable: bool) -> Path:
    """The context subtree as sent (ignored files absent). Read-only binds of an unfiltered tree
    use it in place; otherwise a hardlink (or copy) farm of the sent entries is made."""
    root = ctx.root / rel if rel else ctx.root
    entry = ctx.entries()[rel]
    if not writable and not ctx.matcher and entry.kind != "symlink":
        return Path(root)
    view = step_dir / f"ctx-{secrets.token_hex(4)}"
    if entry.kind != "dir":
        view.mkdir()
        target = view / Path(rel).name
        _link_or_copy(Path(root), target, entry.kind, writable)
        return target
    view.mkdir()
    cut = len(rel) + 1 if rel else 0
    for child in ctx.under(rel):
        dst = view / child.path[cut:]
        src = ctx.root / child.path
        if child.kind == "dir":
            dst.mkdir(mode=child.mode | 0o700, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, dst, child.kind, writable)
    return view


def _link_or_copy(src: Path, dst: Path, kind: str, writable: bool) -> None:
    if kind == "symlink":
        dst.symlink_to(src.readlink())
        return
    if not writable:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst, follow_symlinks=False)


def _stage_path(other: StageState, rel: str, env: StepEnv, step_dir: Path) -> Path:
    """A directory holding another stage's (or image's) file tree at ``rel``."""
    from builder.steps.copy import export_paths

    dest = step_dir / f"from-{secrets.token_hex(4)}"
    dest.mkdir()
    return export_paths(other, rel, dest, env)


def _run_logged(spec: dict[str, Any], rootfs_mounts: list[Any], env: StepEnv) -> tuple[int, list[str]]:
    """Run the step, streaming stdout+stderr to the step log; returns (exit code, last lines)."""
    from runtime import sandbox

    r, w = os.pipe()
    tail: list[bytes] = []
    partial = [b""]

    def pump() -> None:
        while True:
            data = os.read(r, 65536)
            if not data:
                break
            env.output(data)
            lines = (partial[0] + data).split(b"\n")
            partial[0] = lines.pop()
            tail.extend(lines)
            del tail[:-TAIL_LINES]

    t = threading.Thread(target=pump, name="run-output", daemon=True)
    t.start()
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        status = sandbox.run(spec, rootfs_mounts=rootfs_mounts, stdio=(devnull, w, w),
                             forward_signals=False, cgroup=False)
    finally:
        os.close(w)
        os.close(devnull)
        t.join()
        os.close(r)
    if partial[0]:
        tail.append(partial[0])
    return status.exit_code, [x.decode("utf-8", "replace") for x in tail[-TAIL_LINES:]]


def remove_tree(path: Path) -> None:
    """Remove a scratch tree of the step. Rootless, trees copied from other stages hold
    directories of other container users (subordinate ids) this user may not empty: what is
    left is removed from inside the user namespace. Best effort."""
    shutil.rmtree(path, ignore_errors=True)
    if os.geteuid() == 0 or not os.path.lexists(path):
        return
    from runtime import sandbox
    from runtime.fileops import remove_action

    with contextlib.suppress(Exception):  # noqa: BLE001 - cleanup; the build tmp dir goes later
        sandbox.apply(remove_action("/" + path.name), root=str(path.parent), idmap=_idmap())


def chown_host(path: Path, uid: int, gid: int) -> None:
    """Give a file the builder made on the host the owner the container should see (cache
    mount dirs, secret files). Rootless, ids are container ids: 0 is this user already, and
    others are set from inside a user namespace with the rootless mapping."""
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
        return
    if (uid, gid) == (0, 0):
        return
    from runtime import sandbox
    from runtime.fileops import chown_action

    sandbox.apply(chown_action("/" + path.name, (uid, gid)), root=str(path.parent), idmap=_idmap())


def _layer(sn: Any, active: str, env: StepEnv) -> LayerRef | None:
    from registry.layertar import write_layer
    from runtime.diff import layer_entries

    entries = list(layer_entries(sn, active))
    if not entries:
        return None
    blob = write_layer(entries, env.store, env.codec, clamp_mtime=env.epoch)
    return LayerRef(blob.descriptor, blob.diff_id, blob.uncompressed_size)


def _rootless_layer(sn: Any, active: str, env: StepEnv) -> LayerRef | None:
    """Rootless, the upper dir holds host ids (this user, its subordinate range) and files
    private to other container users that this user cannot read. The diff therefore runs
    inside a user namespace with the build's mapping (runtime.fileops "layer"), where the
    files show the ids the container saw and its root may read them all."""
    from registry.digest import Digest
    from registry.model import Descriptor
    from runtime import sandbox
    from runtime.fileops import layer_action

    empty = Path(env.tmp) / f"layer-{secrets.token_hex(4)}"
    empty.mkdir()
    try:
        action = layer_action(str(env.store.root), str(sn.root), sn.driver, active, codec=env.codec,
                              clamp_mtime=env.epoch)
        out = sandbox.apply(action, root=str(empty), idmap=_idmap())
    finally:
        empty.rmdir()
    if out.get("empty"):
        return None
    return LayerRef(Descriptor.from_dict(out["descriptor"]), Digest.parse(out["diff_id"]), int(out["size"]))


def commit_active(sn: Any, active: str, state: StageState, env: StepEnv, *,
                  commit: bool = True) -> tuple[LayerRef | None, str | None]:
    """Diff active snapshot ``active`` into a layer (None when nothing changed) and commit it
    under the new chain's ChainID. Returns (layer, committed snapshot name or None)."""
    from registry.model import chain_ids

    t0 = time.perf_counter()
    layer = _rootless_layer(sn, active, env) if os.geteuid() != 0 else _layer(sn, active, env)
    if layer is None:
        return None, None
    chain = str(chain_ids([*state.diff_ids, layer.diff_id])[-1])
    state.extra["commit_seconds"] = time.perf_counter() - t0
    if not commit or sn.exists(chain):
        return layer, None
    try:
        sn.commit(chain, active)
    except Exception:  # noqa: BLE001 - someone else committed the same chain meanwhile
        return layer, None
    return layer, chain
