"""``build_image``: one build from options to outputs. The memo first (an unchanged rebuild
costs a context walk and a few lookups), else the engine; then --push and -o outputs.
Light at import time: the engine (grammar, steps, runtime) loads only when it has to run."""

from __future__ import annotations

from builder import progress as ev
from builder.options import BuildOptions
from builder.result import BuildResult
from registry.store import DirStore


def build_image(store: DirStore, opts: BuildOptions, progress: ev.Progress) -> BuildResult:
    """Build; raises BuildError/ParseError/RegistryError/SandboxError with a location."""
    from builder.memo import save_memo, try_memo

    result = try_memo(store, opts, progress)
    if result is None:
        from builder.engine import run_engine

        result, engine = run_engine(store, opts, progress)
        save_memo(store, opts, engine, result)
    if opts.push:
        from builder.outputs import push_tags

        result.pushed = push_tags(store, result, progress)
    if opts.outputs:
        from builder.outputs import write_outputs

        write_outputs(store, result, opts.outputs, progress)
    return result
