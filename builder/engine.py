"""The build engine: Dockerfile -> plan -> stages (independent ones in parallel) -> per step a cache
key: HIT reuses the result (snapshots materialize only when a later miss needs them), MISS runs in
the sandbox, diffs the upper dir, commits by ChainID and records. Every build leaves a record with
why each key missed. Imports builder, grammar, registry and runtime; lark/requests only on demand."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from builder import progress as ev
from builder.cache import BuildCache, StepResult
from builder.cachekey import PROXY_ARGS, KeyDoc, Reason, base_doc, explain, link_key
from builder.errors import BuildError, ContextError, StageNotFound, StepFailed
from builder.options import BuildOptions
from builder.plan import BuildPlan, PlanStage, make_plan, resolve_stage_name
from builder.records import BuildRecord, Records, StepRecord
from builder.result import BuildResult
from builder.state import LayerRef, StageState
from builder.steps import StepEnv, handler_for
from grammar import ast
from registry.digest import Digest
from registry.imagebuild import now_rfc3339, rfc3339, source_date_epoch
from registry.model import ContainerConfig, Descriptor, History, ImageConfig, Manifest
from registry.store import DirStore

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _StagePrep:
    stage: PlanStage
    triggers: list[ast.Instruction]
    initial: Callable[[], StageState]
    base_desc: str
    pulled: bool = False


class Engine:
    def __init__(self, store: DirStore, opts: BuildOptions, progress: ev.Progress) -> None:
        self.store = store
        self.opts = opts
        self.progress = progress
        self.cache = BuildCache(store)
        self.records = Records(store)
        self.epoch = source_date_epoch()
        self._lock = threading.Lock()
        self._context: Any = None
        self._named: dict[str, Any] = {}
        self._snapshotter: Any = None
        self._results: dict[int, StageState] = {}
        self._images: dict[str, StageState] = {}
        self._events: dict[int, threading.Event] = {}
        self._tmp: Path | None = None
        self._prev: dict[tuple[str, int], str] = {}
        self._remote: Any = None
        self._stage_labels: dict[int, str] = {}
        self.resolved_images: dict[str, str] = {}   # image text as written -> manifest digest
        self.flags: dict[str, bool] = {}              # "volatile": an input the memo cannot check
        self.plan: BuildPlan | None = None
        self.record: BuildRecord | None = None

    # -- services ------------------------------------------------------------------------------
    def context(self) -> Any:
        with self._lock:
            if self._context is None:
                from builder.context import BuildContext

                self._context = BuildContext(self.opts.context_dir, dockerfile=self._dockerfile_path(),
                                             stat_cache_dir=self.store.subdir("cache") / "stat")
            return self._context

    def named_context(self, name: str) -> Any:
        value = self.opts.build_contexts.get(name)
        if value is None or value.startswith("docker-image://"):
            return None
        with self._lock:
            if name not in self._named:
                from builder.context import BuildContext

                self._named[name] = BuildContext(Path(value), name=name,
                                                 stat_cache_dir=self.store.subdir("cache") / "stat")
            return self._named[name]

    def snapshotter(self) -> Any:
        with self._lock:
            if self._snapshotter is None:
                from runtime.snapshots import default_snapshotter

                self._snapshotter = default_snapshotter(self.store.subdir("snapshots"))
            return self._snapshotter

    def ensure_snapshot(self, state: StageState) -> str | None:
        """The committed snapshot of ``state``'s layer chain (unpacked from blobs if needed)."""
        chain = state.chain_id()
        if chain is None:
            return None
        sn = self.snapshotter()
        if sn.exists(chain):
            return str(chain)
        from runtime.rootfs import ensure_chain_report

        config_desc = Descriptor("application/vnd.oci.image.config.v1+json", Digest.of(b"{}"), 2)
        manifest = Manifest("application/vnd.oci.image.manifest.v1+json", config_desc,
                            tuple(layer.descriptor for layer in state.layers))
        cfg = ImageConfig(architecture="", os="linux", diff_ids=tuple(state.diff_ids))
        report = ensure_chain_report(self.store, sn, manifest, config=cfg)
        return report.top

    def stage_state(self, name: str, span: ast.Span) -> StageState:
        """A stage that must have finished (COPY --from / --mount from=)."""
        assert self.plan is not None
        idx = resolve_stage_name(name, self.plan.dockerfile.stages, len(self.plan.dockerfile.stages))
        if idx is None:
            raise KeyError(name)
        event = self._events.get(idx)
        if event is None:
            raise BuildError(f"stage {name!r} is not part of this build", span=span)
        event.wait()
        if idx not in self._results:
            raise BuildError(f"stage {name!r} failed", span=span)
        return self._results[idx]

    def image_state(self, name: str, span: ast.Span) -> StageState:
        """An image used by COPY --from=IMAGE or --mount from=IMAGE (pulled when missing)."""
        ref = name
        ctx = self.opts.build_contexts.get(name)
        if ctx is not None and ctx.startswith("docker-image://"):
            ref = ctx[len("docker-image://"):]
        with self._lock:
            cached = self._images.get(ref)
        if cached is not None:
            return cached
        image, _ = self._resolve_image(ref, span)
        state = self._image_state(image, -1, ref)
        with self._lock:
            self._images[ref] = state
        return state

    # -- the build -----------------------------------------------------------------------------
    def _dockerfile_path(self) -> Path:
        return self.opts.dockerfile_path

    def _read_dockerfile(self) -> tuple[str, str]:
        if self.opts.dockerfile_text is not None:
            return self.opts.dockerfile_text, "Dockerfile"
        path = self._dockerfile_path()
        try:
            return path.read_text(encoding="utf-8", errors="surrogateescape"), path.name
        except FileNotFoundError:
            raise ContextError(f"Dockerfile not found: {path}",
                               hint="pass -f PATH, or run in the directory that has the Dockerfile") from None
        except OSError as exc:
            raise ContextError(f"cannot read {path}: {exc.strerror}") from None

    def build(self) -> BuildResult:
        from builder.astcache import parse_cached
        from builder.plan import host_platforms

        text, filename = self._read_dockerfile()
        df = parse_cached(text, filename, self.store.subdir("cache") / "ast")
        plat = host_platforms()
        plan = make_plan(df, build_args=self.opts.build_args, target=self.opts.target,
                         platforms=plat, build_contexts=self.opts.build_contexts)
        self.plan = plan
        dockerfile = "-" if self.opts.dockerfile_text is not None else str(self._dockerfile_path().resolve())
        rec = BuildRecord(id=Records.new_id(), started=time.time(),
                          context=str(Path(self.opts.context_dir).resolve()), dockerfile=dockerfile,
                          target=self.opts.target or "", tags=list(self.opts.tags),
                          args={k: v for k, v in self.opts.build_args.items() if k not in PROXY_ARGS},
                          platform=plat.platform)
        self.record = rec
        for message in [str(w) for w in df.warnings] + list(plan.warnings):
            rec.warnings.append(message)
            self.progress.emit(ev.Note(message, "warning"))
        prev = self.records.closest_before(rec)
        if prev is not None:
            self._prev = {(s.stage, s.stage_step): s.key for s in prev.steps if s.key}
        self.records.save(rec, durable=False)
        self._tmp = Path(tempfile.mkdtemp(prefix=f"build-{rec.id}-", dir=self.store.subdir("tmp")))
        try:
            if self.opts.cache_from:
                from builder.remotecache import RemoteCache

                self._remote = RemoteCache(self.store, self.opts.cache_from)
            result = self._build(plan, rec)
            rec.status = "ok"
            return result
        except BaseException as exc:
            rec.status = "failed"
            rec.error = str(exc).split("\n")[0] if str(exc) else type(exc).__name__
            raise
        finally:
            rec.finished = time.time()
            with contextlib.suppress(OSError):
                self.records.save(rec)
            if self._context is not None:
                self._context.close()
            for named in self._named.values():
                named.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _build(self, plan: BuildPlan, rec: BuildRecord) -> BuildResult:
        from builder.commit import finalize

        preps = [self._prepare_stage(s) for s in plan.stages]
        total = sum(1 + len(p.triggers) + len(p.stage.instructions) for p in preps)
        number = 1
        numbering: dict[int, int] = {}
        for p in preps:
            numbering[p.stage.index] = number
            number += 1 + len(p.triggers) + len(p.stage.instructions)
        for p in preps:
            self._events[p.stage.index] = threading.Event()
        env = self._step_env(rec)
        by_index = {p.stage.index: p for p in preps}

        def run(idx: int) -> None:
            try:
                state = self._run_stage(by_index[idx], numbering[idx], total, env)
                self._results[idx] = state
            finally:
                self._events[idx].set()

        levels = plan.levels()
        if all(len(level) == 1 for level in levels):
            for level in levels:
                run(level[0])
        else:
            from concurrent.futures import ThreadPoolExecutor

            # Independent stages run in parallel; a stage that reads another waits for it.
            with ThreadPoolExecutor(max_workers=min(4, len(plan.stages))) as pool:
                futures = [pool.submit(run, p.stage.index) for p in preps]
                errors = []
                for f in futures:
                    try:
                        f.result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised below (first one)
                        errors.append(exc)
                if errors:
                    raise errors[0]
        final = self._results[plan.target]
        committed = finalize(self.store, final, tags=self.opts.tags, labels=self.opts.labels,
                             epoch=self.epoch)
        rec.image = str(committed.manifest.digest)
        rec.image_id = committed.image_id
        result = BuildResult(committed.image_id, committed.manifest, rec, tuple(self.opts.tags),
                             committed.config)
        if self.opts.cache_to:
            from builder.remotecache import export_cache

            for spec in self.opts.cache_to:
                self.progress.emit(ev.Note(f"exporting cache to {spec.ref} (mode={spec.mode})"))
                export_cache(self.store, spec, self._exported_results(spec.mode))
        return result

    def _exported_results(self, mode: str) -> list[StepResult]:
        """Cache records for --cache-to: the final stage's steps (min) or every stage's (max)."""
        assert self.plan is not None and self.record is not None
        keys: list[str] = []
        final_label = self._stage_labels.get(self.plan.target, "")
        for s in self.record.steps:
            if not s.key or s.status not in ("CACHED", "RAN"):
                continue
            if mode == "min" and s.stage != final_label:
                continue
            keys.append(s.key)
        out = []
        for k in keys:
            r = self.cache.lookup(Digest.parse(k))
            if r is not None:
                out.append(r)
        return out

    def _step_env(self, rec: BuildRecord) -> StepEnv:
        assert self._tmp is not None and self.plan is not None
        return StepEnv(store=self.store, opts=self.opts, cache=self.cache, escape=self.plan.dockerfile.escape,
                       build_id=rec.id, tmp=self._tmp, context=self.context,
                       named_context=self.named_context, snapshotter=self.snapshotter,
                       stage_state=self.stage_state, image_state=self.image_state,
                       ensure_snapshot=self.ensure_snapshot, epoch=self.epoch,
                       codec=self.opts.compression, flags=self.flags)

    # -- stages ----------------------------------------------------------------------------------
    def _resolve_image(self, text: str, span: ast.Span | None) -> tuple[Any, bool]:
        """A base image from the store, pulled when missing (or always with --pull)."""
        from registry.errors import ImageNotFound, InvalidReference
        from registry.image import resolve_image
        from registry.model import Platform
        from registry.reference import parse_reference

        assert self.plan is not None
        platform = Platform.parse(self.plan.platforms.platform)
        try:
            ref = parse_reference(text)
        except InvalidReference as exc:
            raise BuildError(f"invalid image reference {text!r}: {exc}", span=span) from None
        if not self.opts.pull:
            try:
                image = resolve_image(self.store, str(ref), platform=platform)
                self.resolved_images[str(ref)] = str(image.digest)
                return image, False
            except ImageNotFound:
                pass
        self.progress.emit(ev.Note(f"pulling {ref.familiar()}"))
        try:
            from registry.remote.pull import pull
        except ImportError:
            raise BuildError(f"image {ref.familiar()!r} is not in the local store and pulling is not "
                             "available", span=span) from None
        pull(self.store, ref, platform=platform)
        image = resolve_image(self.store, str(ref), platform=platform)
        self.resolved_images[str(ref)] = str(image.digest)
        return image, True

    def _image_state(self, image: Any, index: int, name: str) -> StageState:
        cfg: ImageConfig = image.config
        assert self.plan is not None
        doc = base_doc(str(image.digest), self.plan.platforms.platform)
        key = doc.digest()
        self.cache.save_doc(key, doc)
        layers = [LayerRef(d, diff) for d, diff in zip(image.manifest.layers, cfg.diff_ids, strict=True)]
        config = cfg.config
        return StageState(name=name, index=index, platform=self.plan.platforms.platform, key=key,
                          config=config, layers=layers, history=list(cfg.history),
                          author=cfg.author, base_name=name, base_digest=str(image.digest),
                          extra={"created": cfg.created, "base_history": len(cfg.history)})

    def _prepare_stage(self, stage: PlanStage) -> _StagePrep:
        """Resolve the base (pull if needed) and read its ONBUILD triggers."""
        assert self.plan is not None
        base = stage.base
        label = stage.label
        plat = self.plan.platforms.platform
        if base.kind == "scratch":
            doc = base_doc("scratch", plat)
            key = doc.digest()
            self.cache.save_doc(key, doc)

            def scratch() -> StageState:
                return StageState(label, stage.index, plat, key,
                                  config=ContainerConfig(env=(DEFAULT_PATH,)), base_name="scratch",
                                  base_digest="scratch")

            return _StagePrep(stage, [], scratch, "scratch")
        if base.kind == "stage":
            parent_idx = base.stage
            assert parent_idx is not None
            parent_stage = self.plan.stage(parent_idx)
            triggers = _parse_triggers(self._static_onbuild(parent_stage), stage.from_.span)

            def from_stage() -> StageState:
                src = self._results[parent_idx].copy()
                src.name, src.index = label, stage.index
                src.extra["base_history"] = len(src.history)
                src.args, src.proxy, src.cmd_set = {}, {}, False
                return src

            return _StagePrep(stage, triggers, from_stage, f"stage {parent_stage.label}")
        ref = base.value
        if base.kind == "context":
            value = self.opts.build_contexts[base.value]
            if not value.startswith("docker-image://"):
                raise BuildError(f"FROM {base.value}: a local build context cannot be a base image",
                                 span=stage.from_.span, hint="use docker-image://REF for FROM contexts")
            ref = value[len("docker-image://"):]
        image, pulled = self._resolve_image(ref, stage.from_.span)
        state0 = self._image_state(image, stage.index, label)
        triggers = _parse_triggers(state0.config.onbuild, stage.from_.span)

        def from_image() -> StageState:
            return state0.copy()

        return _StagePrep(stage, triggers, from_image, f"{ref}@{image.digest}", pulled)

    def _static_onbuild(self, stage: PlanStage) -> tuple[str, ...]:
        """ONBUILD triggers a stage's result will carry (known before it runs)."""
        out: list[str] = []
        for ins in stage.instructions:
            if isinstance(ins, ast.Onbuild):
                out.append(ins.expression)
        return tuple(out)

    def _run_stage(self, prep: _StagePrep, first: int, total: int, env: StepEnv) -> StageState:
        assert self.plan is not None and self.record is not None
        stage = prep.stage
        if stage.base.kind == "stage":
            assert stage.base.stage is not None
            self._events[stage.base.stage].wait()
            if stage.base.stage not in self._results:
                raise BuildError(f"stage {stage.base.value} failed", span=stage.from_.span)
        t0 = time.perf_counter()
        state = prep.initial()
        state.extra["meta_args"] = dict(self.plan.meta_args)
        state.extra["predefined"] = self.plan.platforms.args()
        state.proxy = {k: v for k, v in self.opts.build_args.items() if k in PROXY_ARGS}
        if state.config.onbuild:
            # Triggers run once, in the direct child; they are not inherited further.
            state.config = replace(state.config, onbuild=())
        srec = StepRecord(first, stage.label if stage.name or len(self.plan.stages) > 1 else "",
                          1, stage.from_.original, stage.from_.span.line, key=str(state.key))
        self._add_step(srec)
        self.progress.emit(ev.StepStart(first, total, srec.stage, stage.from_.original, srec.line))
        srec.status = "PULLED" if prep.pulled else "CACHED"
        self._stage_labels[stage.index] = srec.stage
        srec.duration = time.perf_counter() - t0
        if prep.pulled:
            self.progress.emit(ev.StepDone(first, srec.duration))
        else:
            self.progress.emit(ev.StepCached(first))
        number = first
        for i, ins in enumerate([*prep.triggers, *stage.instructions], start=2):
            number += 1
            self._step(stage, ins, state, env, number, total, i, srec.stage)
        return state

    def _add_step(self, srec: StepRecord) -> None:
        assert self.record is not None
        with self._lock:
            self.record.steps.append(srec)
            self.record.steps.sort(key=lambda s: s.index)

    # -- steps -----------------------------------------------------------------------------------
    def _step(self, stage: PlanStage, ins: ast.Instruction, state: StageState, env: StepEnv,
              number: int, total: int, stage_step: int, stage_label: str) -> None:
        assert self.record is not None
        text = " ".join(ins.original.split()) if "\n" not in ins.original else ins.original.split("\n")[0]
        srec = StepRecord(number, stage_label, stage_step, text, ins.span.line)
        self._add_step(srec)
        self.progress.emit(ev.StepStart(number, total, stage_label, text, ins.span.line))
        t0 = time.perf_counter()
        handler = handler_for(ins)
        step_env = replace(env, step_label=f"step {number}/{total}")
        try:
            prep = handler.prepare(ins, state, step_env)
            if prep.doc is None:
                self._metadata(prep, state)
                srec.status = "META"
                srec.duration = time.perf_counter() - t0
                self.progress.emit(ev.StepDone(number, srec.duration))
                return
            key = prep.doc.digest()
            srec.key = str(key)
            use_cache = not self.opts.no_cache and not self._no_cache_stage(stage)
            result = self.cache.lookup(key) if use_cache else None
            if result is None and use_cache and self._remote is not None:
                result = self._remote.lookup(key)
            if result is not None:
                self._apply(result, prep, state)
                srec.status = "CACHED"
                self._layer_fields(srec, result)
                srec.duration = time.perf_counter() - t0
                self.progress.emit(ev.StepCached(number))
                return
            detail = prep.data.get("detail")
            doc = replace(prep.doc, detail=detail()) if callable(detail) else prep.doc
            self.cache.save_doc(key, doc)
            reasons = self._reasons(stage_label, stage_step, doc, state)
            srec.reasons = [str(r) for r in reasons]
            if self.opts.no_cache or self._no_cache_stage(stage):
                srec.reasons.insert(0, "cache disabled (--no-cache)" if self.opts.no_cache
                                    else "cache disabled for this stage (--no-cache-filter)")
            self.progress.emit(ev.Explain(number, tuple(srec.reasons)))
            log_name = f"{number}.log"
            log_path = self.records.log_dir(self.record.id) / log_name
            srec.log = log_name
            with log_path.open("wb") as log:
                step_env.output = _tee(log, lambda data: self.progress.emit(ev.StepOutput(number, data)))
                outcome = handler.execute(prep, state, step_env)
            commit = state.extra.pop("commit_seconds", None)
            srec.commit_seconds = round(commit, 4) if commit is not None else None
            result = self._result(key, outcome)
            self.cache.record(result)
            if result.layer is not None:
                self._gc_root(key, result.layer)
            self._apply(result, prep, state)
            state.extra["last_miss"] = number
            srec.status = "RAN"
            self._layer_fields(srec, result)
            srec.duration = time.perf_counter() - t0
            self.progress.emit(ev.StepDone(number, srec.duration,
                                           str(result.layer.digest) if result.layer else None,
                                           result.layer.size if result.layer else None,
                                           tuple(srec.reasons)))
        except StepFailed as exc:
            srec.status = "FAILED"
            srec.exit_code = exc.exit_status
            srec.duration = time.perf_counter() - t0
            self.progress.emit(ev.StepFailed(number, srec.duration, str(exc).split("\n")[0]))
            raise
        except BaseException as exc:
            srec.status = "FAILED"
            srec.duration = time.perf_counter() - t0
            self.progress.emit(ev.StepFailed(number, srec.duration, str(exc).split("\n")[0]))
            raise

    def _no_cache_stage(self, stage: PlanStage) -> bool:
        f = self.opts.no_cache_filter
        return bool(f) and (stage.label in f or (stage.name or "") in f or str(stage.index) in f)

    @staticmethod
    def _layer_fields(srec: StepRecord, result: StepResult) -> None:
        if result.layer is not None:
            srec.layer = str(result.layer.digest)
            srec.layer_size = result.layer.size
            srec.diff_size = result.uncompressed_size

    def _metadata(self, prep: Any, state: StageState) -> None:
        prep.local(state)
        if prep.config is not None:
            state.config = prep.config
        if prep.author is not None:
            state.author = prep.author
        if prep.data.get("no_history"):
            return
        created = rfc3339(self.epoch) if self.epoch is not None else state.extra.get("created")
        state.history.append(History(created=created, created_by=prep.created_by,
                                     comment="pybuild.dockerfile.v0", empty_layer=True))

    def _result(self, key: Digest, outcome: Any) -> StepResult:
        created = rfc3339(self.epoch) if self.epoch is not None else now_rfc3339()
        history = History(created=created, created_by=outcome.created_by, comment=outcome.comment,
                          empty_layer=outcome.layer is None).to_dict()
        layer = outcome.layer
        return StepResult(key, layer.descriptor if layer else None, layer.diff_id if layer else None,
                          layer.size if layer else 0, outcome.config.to_dict(), history,
                          {"snapshot": outcome.snapshot} if outcome.snapshot else {})

    def _apply(self, result: StepResult, prep: Any, state: StageState) -> None:
        parent_key = state.key
        prep.local(state)
        if prep.config is not None:
            state.config = prep.config
        if result.layer is not None and result.diff_id is not None:
            state.layers.append(LayerRef(result.layer, result.diff_id, result.uncompressed_size))
        h = History.from_dict(result.history)
        if self.epoch is not None:
            h = History(rfc3339(self.epoch), h.created_by, h.author, h.comment, h.empty_layer)
        state.history.append(h)
        state.extra["created"] = h.created
        state.key = result.key
        if prep.data.get("link") and prep.doc is not None and not prep.doc.parent:
            state.key = link_key(parent_key, result.key)   # COPY --link: key without its parent

    def _gc_root(self, key: Digest, layer: Descriptor) -> None:
        from registry.gc import write_root

        with contextlib.suppress(OSError, ValueError):
            write_root(self.store, "buildcache", key.hex, [layer.digest])

    def _reasons(self, stage_label: str, stage_step: int, doc: KeyDoc, state: StageState) -> list[Reason]:
        old_key = self._prev.get((stage_label, stage_step))
        old = self.cache.load_doc(old_key) if old_key else None
        if old is None and old_key is None and not self._prev:
            return [Reason("op", "history", "", "first build of this Dockerfile")]
        reasons = explain(old, doc)
        if len(reasons) == 1 and reasons[0].what == "parent":
            last = state.extra.get("last_miss")
            if last:
                return [Reason("parent", f"step {last} ran")]
            base_old_key = self._prev.get((stage_label, 1))
            base_old = self.cache.load_doc(base_old_key) if base_old_key else None
            base_new = self.cache.load_doc(doc.parent) if doc.parent else None
            if base_old is not None and base_new is not None and base_old.op != base_new.op:
                return [Reason("base", "image", str(base_old.op.get("image", ""))[7:19],
                               str(base_new.op.get("image", ""))[7:19])]
        return reasons


def _tee(log: IO[bytes], emit: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        log.write(data)
        log.flush()
        emit(data)

    return write


def _parse_triggers(triggers: tuple[str, ...] | list[str], span: ast.Span) -> list[ast.Instruction]:
    """ONBUILD expressions of the base image, parsed as instructions of the child."""
    if not triggers:
        return []
    import grammar

    out: list[ast.Instruction] = []
    for text in triggers:
        # parsed as the body of a stage (a trigger is never FROM)
        df = grammar.parse("FROM scratch\n" + text + "\n", filename=f"ONBUILD({span.filename}:{span.line})")
        for ins in df.instructions[1:]:
            if isinstance(ins, ast.From | ast.Onbuild) or ins.KIND == "MAINTAINER":
                raise BuildError(f"ONBUILD trigger {text!r} is not allowed", span=span)
            out.append(ins)
    return out


def run_engine(store: DirStore, opts: BuildOptions, progress: ev.Progress) -> tuple[BuildResult, Engine]:
    """Run a build through the engine (no memo, no outputs); holds the store lock shared."""
    with store.lock(shared=True):
        engine = Engine(store, opts, progress)
        return engine.build(), engine


__all__ = ["BuildResult", "Engine", "StageNotFound", "run_engine"]
