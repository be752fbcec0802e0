"""Dockerfile AST → BuildPlan: global ARGs (before the first FROM) vs stage ARGs, the predefined
platform and proxy args, FROM resolved to a stage, a named build context, scratch or an image,
the stage DAG (FROM stage, COPY --from, RUN --mount from=), --target pruning, parallel levels.

Pure: no I/O. Imports grammar (AST, word expansion) and registry (platform helpers) only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field

from builder.cachekey import PROXY_ARGS
from builder.errors import BuildError, StageNotFound
from grammar import ast
from grammar import words as gw


@dataclass(frozen=True, slots=True)
class Platforms:
    """The predefined platform args (BuildKit's names and values)."""

    os: str = "linux"
    arch: str = "amd64"
    variant: str = ""

    @property
    def platform(self) -> str:
        return "/".join(p for p in (self.os, self.arch, self.variant) if p)

    def args(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for prefix in ("TARGET", "BUILD"):
            out[f"{prefix}PLATFORM"] = self.platform
            out[f"{prefix}OS"] = self.os
            out[f"{prefix}ARCH"] = self.arch
            out[f"{prefix}VARIANT"] = self.variant
        return out


def host_platforms() -> Platforms:
    from registry.imagebuild import host_arch

    return Platforms("linux", host_arch(), "")


@dataclass(frozen=True, slots=True)
class BaseRef:
    """What a stage starts from."""

    kind: str          # image | stage | scratch | context
    value: str = ""    # the image reference, the stage index (as text) or the context name
    stage: int | None = None


@dataclass(frozen=True, slots=True)
class PlanStage:
    index: int
    name: str | None
    from_: ast.From
    base: BaseRef
    instructions: tuple[ast.Instruction, ...]
    deps: frozenset[int]
    first_step: int = 0         # global step number of the FROM line (1-based)

    @property
    def label(self) -> str:
        return self.name or f"stage-{self.index}"

    @property
    def steps(self) -> int:
        return 1 + len(self.instructions)


@dataclass(frozen=True, slots=True)
class BuildPlan:
    dockerfile: ast.Dockerfile
    stages: tuple[PlanStage, ...]        # the stages to build, in file order
    all_stages: tuple[PlanStage, ...]    # every stage of the file
    target: int                           # index of the stage whose result is the image
    meta_args: Mapping[str, str | None]   # global ARGs (name → resolved value, None if unset)
    build_args: Mapping[str, str]
    platforms: Platforms
    total_steps: int
    unused_args: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def stage(self, index: int) -> PlanStage:
        for s in self.all_stages:
            if s.index == index:
                return s
        raise KeyError(index)

    def levels(self) -> list[list[int]]:
        """Needed stages grouped so every stage's dependencies are in an earlier group."""
        needed = {s.index: s for s in self.stages}
        done: set[int] = set()
        out: list[list[int]] = []
        while len(done) < len(needed):
            ready = [i for i, s in needed.items() if i not in done and s.deps <= done]
            if not ready:
                raise BuildError("stage dependencies form a cycle")
            out.append(sorted(ready))
            done.update(ready)
        return out


def resolve_stage_name(name: str, stages: tuple[ast.Stage, ...], before: int) -> int | None:
    """The index of the stage called ``name`` (or numbered ``name``) defined before ``before``."""
    lowered = name.lower()
    for st in stages[:before]:
        if st.name == lowered:
            return st.index
    if name.isdigit():
        idx = int(name)
        if idx < before:
            return idx
    return None


def _expand(text: str, env: Mapping[str, str], escape: str, span: ast.Span) -> str:
    from grammar.errors import ExpansionError

    try:
        return gw.expand(text, env, escape=escape)
    except ExpansionError as exc:
        raise BuildError(f"{exc}", span=span) from None


def make_plan(dockerfile: ast.Dockerfile, *, build_args: Mapping[str, str] | None = None,
              target: str | None = None, platforms: Platforms | None = None,
              build_contexts: Mapping[str, str] | None = None) -> BuildPlan:
    """Resolve stages, their bases and dependencies, and prune to ``target``.

    Raises StageNotFound (unknown --target or COPY --from stage), BuildError (no FROM, a
    stage that uses itself, an undefined FROM variable that leaves the image empty).
    """
    args = dict(build_args or {})
    plat = platforms or host_platforms()
    contexts = dict(build_contexts or {})
    escape = dockerfile.escape
    stages = dockerfile.stages
    if not stages:
        raise BuildError("no FROM instruction: a Dockerfile must start a stage with FROM",
                         hint="add e.g. `FROM busybox` before the first build instruction")
    used: set[str] = set()

    # Global scope: predefined platform args + ARGs before the first FROM.
    meta: dict[str, str | None] = {}
    env: dict[str, str] = plat.args()
    for arg in dockerfile.meta_args:
        for name, default in arg.args:
            if name in args:
                value: str | None = args[name]
                used.add(name)
            elif default is not None:
                value = _expand(default, env, escape, arg.span)
            else:
                value = None
            meta[name] = value
            if value is not None:
                env[name] = value

    plan_stages: list[PlanStage] = []
    for st in stages:
        image = _expand(st.from_.image, env, escape, st.from_.span)
        if not image:
            raise BuildError(f"FROM {st.from_.image!r}: the image name is empty after expansion",
                             span=st.from_.span, hint="set the ARG it uses with --build-arg")
        deps: set[int] = set()
        ref = resolve_stage_name(image, stages, st.index) if not image.isdigit() else None
        if image.lower() == (st.name or "\0") and ref is None:
            raise BuildError(f"stage {st.name!r} cannot use itself as its base", span=st.from_.span)
        if ref is not None:
            base = BaseRef("stage", str(ref), ref)
            deps.add(ref)
        elif image in contexts:
            base = BaseRef("context", image)
        elif image == "scratch":
            base = BaseRef("scratch")
        else:
            base = BaseRef("image", image)
        deps |= _stage_deps(st, stages, args, env, escape)
        plan_stages.append(PlanStage(st.index, st.name, st.from_, base, st.instructions, frozenset(deps)))

    # Target and pruning.
    if target:
        tidx = resolve_stage_name(target, stages, len(stages))
        if tidx is None or target.isdigit():
            names = [s.name for s in stages if s.name]
            guess = difflib.get_close_matches(target.lower(), names, n=1)
            raise StageNotFound(f"target stage {target!r} could not be found",
                                hint=f"did you mean {guess[0]!r}?" if guess else
                                f"stages: {', '.join(names) or '(none named)'}")
    else:
        tidx = len(stages) - 1
    needed: set[int] = set()
    todo = [tidx]
    while todo:
        i = todo.pop()
        if i in needed:
            continue
        needed.add(i)
        todo.extend(plan_stages[i].deps)
    numbered: list[PlanStage] = []
    step = 1
    for s in plan_stages:
        if s.index in needed:
            s = PlanStage(s.index, s.name, s.from_, s.base, s.instructions, s.deps, step)
            step += s.steps
        numbered.append(s)
    kept = tuple(s for s in numbered if s.index in needed)

    # ARGs declared anywhere that a --build-arg sets count as used (docker warns otherwise).
    for st in stages:
        for ins in st.instructions:
            if isinstance(ins, ast.Arg):
                used.update(name for name, _ in ins.args if name in args)
    unused = frozenset(k for k in args if k not in used and k not in PROXY_ARGS
                       and k not in plat.args())
    warnings: tuple[str, ...] = ()
    if unused:
        warnings = (f"one or more build args were not consumed: {', '.join(sorted(unused))}",)
    return BuildPlan(dockerfile, kept, tuple(numbered), tidx, meta, args, plat, step - 1, unused, warnings)


def _stage_deps(st: ast.Stage, stages: tuple[ast.Stage, ...], args: Mapping[str, str],
                meta_env: Mapping[str, str], escape: str) -> set[int]:
    """Stages this stage reads through COPY --from / RUN --mount from= (names expanded with
    the ARG and ENV values known at that point, as BuildKit's dispatcher does)."""
    deps: set[int] = set()
    env: dict[str, str] = {}
    for ins in st.instructions:
        if isinstance(ins, ast.Arg):
            for name, default in ins.args:
                if name in args:
                    env[name] = args[name]
                elif default is not None:
                    env[name] = gw.expand(default, env, escape=escape)
                elif meta_env.get(name) is not None:
                    env[name] = str(meta_env[name])
        elif isinstance(ins, ast.Env):
            for k, v in ins.pairs:
                env[gw.expand(k, env, escape=escape)] = gw.expand(v, env, escape=escape)
        names: list[str] = []
        if isinstance(ins, ast.Copy) and ins.from_:
            names.append(ins.from_)
        elif isinstance(ins, ast.Run):
            names += [m.from_ for m in ins.mounts if m.from_]
        for raw in names:
            name = _expand(raw, env, escape, ins.span)
            ref = resolve_stage_name(name, stages, st.index)
            if ref is not None:
                deps.add(ref)
            elif name.lower() in {s.name for s in stages if s.name}:
                raise BuildError(f"stage {name!r} is used before it is defined", span=ins.span)
            elif name.isdigit():
                raise StageNotFound(f"--from={name}: there is no stage {name} before this one",
                                    span=ins.span)
    return deps
