"""Step handlers, one per instruction kind behind a small protocol: ``prepare(ins, state, env)`` expands
words and computes the typed cache-key document and local effects; ``execute`` does the work on a miss
and returns a StepOutcome (layer or none, config, history). Dispatch is keyed by AST type. Imports
builder (cachekey, errors), grammar (ast, words), registry.model; runtime for types only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from builder.cachekey import KeyDoc
from builder.errors import BuildError
from grammar import ast
from grammar import words as gw
from registry.model import ContainerConfig

if TYPE_CHECKING:
    from builder.cache import BuildCache
    from builder.context import BuildContext
    from builder.options import BuildOptions
    from builder.state import LayerRef, StageState
    from registry.compression import Codec
    from registry.store import DirStore
    from runtime.snapshots import Snapshotter


@dataclass
class StepEnv:
    """What a step may use: the engine's services, shared by every step of a build."""

    store: DirStore
    opts: BuildOptions
    cache: BuildCache
    escape: str
    build_id: str
    tmp: Path                                 # per-build scratch directory (removed at the end)
    context: Callable[[], BuildContext]       # the main context, opened lazily
    named_context: Callable[[str], BuildContext | None]
    snapshotter: Callable[[], Snapshotter]
    stage_state: Callable[[str, ast.Span], StageState]   # a finished stage, by name or index
    image_state: Callable[[str, ast.Span], StageState]   # an image used by COPY --from / mounts
    ensure_snapshot: Callable[[StageState], str | None]  # committed snapshot of a state's chain
    epoch: int | None = None
    codec: Codec = "gzip"
    output: Callable[[bytes], None] = lambda data: None   # the current step's output sink
    step_label: str = ""
    flags: dict[str, bool] = field(default_factory=dict)   # shared by the build ("volatile")


@dataclass
class StepOutcome:
    layer: LayerRef | None
    config: ContainerConfig
    created_by: str
    comment: str | None = None
    author: str | None = None
    snapshot: str | None = None               # committed snapshot of the new chain, if made
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    ins: ast.Instruction
    doc: KeyDoc | None                        # None: a metadata step (no cache vertex)
    created_by: str
    local: Callable[[StageState], None] = lambda state: None   # ARG values, cmd_set...
    config: ContainerConfig | None = None     # metadata steps: the config after the step
    author: str | None = None
    makes_layer: bool = True
    data: dict[str, Any] = field(default_factory=dict)


class StepHandler(Protocol):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared: ...
    def execute(self, prep: Prepared, state: StageState, env: StepEnv) -> StepOutcome: ...


def expand(word: str, values: Mapping[str, str], escape: str, span: ast.Span) -> str:
    from grammar.errors import ExpansionError

    try:
        return gw.expand(word, values, escape=escape)
    except ExpansionError as exc:
        raise BuildError(str(exc), span=span) from None


def expand_words(text: str, values: Mapping[str, str], escape: str, span: ast.Span) -> list[str]:
    from grammar.errors import ExpansionError

    try:
        return gw.expand_words(text, values, escape=escape)
    except ExpansionError as exc:
        raise BuildError(str(exc), span=span) from None


def expand_heredoc(h: ast.Heredoc, values: Mapping[str, str], escape: str) -> str:
    data = h.data
    if not h.expand:
        return data
    from grammar.errors import ExpansionError

    try:
        return gw.expand_heredoc(data, values, escape=escape)
    except ExpansionError as exc:
        raise BuildError(str(exc), span=h.span) from None


def handler_for(ins: ast.Instruction) -> StepHandler:
    from builder.steps import copy, metadata, run

    if isinstance(ins, ast.Run):
        return run.RunHandler()
    if isinstance(ins, ast.Copy | ast.Add):
        return copy.CopyHandler()
    if isinstance(ins, ast.Workdir):
        return copy.WorkdirHandler()
    handler: StepHandler | None = metadata.HANDLERS.get(type(ins))
    if handler is None:
        raise BuildError(f"{ins.keyword.upper()} is not supported here", span=ins.span)
    return handler
