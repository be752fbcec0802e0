"""`pybuild build` (and the short form `pybuild -t app:1.0 .`) and `pybuild context ls`.

Progress goes to stderr; stdout carries only the image ID (like `docker build -q`). Click
and the stdlib at module scope only: the engine and everything heavy load inside the command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.commands import Globals, pass_globals, returns_code

if TYPE_CHECKING:
    from builder.progress import Progress
    from registry.compression import Codec


# -- pybuild context ---------------------------------------------------------------------------
@click.group("context")
def context() -> None:
    """Inspect a build context: what is sent and which .dockerignore pattern decided."""


@context.command("ls")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("-f", "--file", "dockerfile", default=None,
              help="The Dockerfile (its <Dockerfile>.dockerignore takes precedence).")
@click.option("--why", "why", multiple=True, metavar="PATH",
              help="Explain whether PATH is sent, and which pattern decided (repeatable).")
@click.option("-l", "--long", "long_", is_flag=True, help="Show kind, mode and size.")
@pass_globals
@returns_code
def context_ls(g: Globals, directory: str, dockerfile: str | None, why: tuple[str, ...], long_: bool) -> int:
    """List the paths of DIRECTORY that a build sends (default: the current directory)."""
    from builder.context import BuildContext

    root = Path(directory)
    df = Path(dockerfile) if dockerfile else root / "Dockerfile"
    ctx = BuildContext(root, dockerfile=df)
    if why:
        for path in why:
            click.echo(_why_line(ctx, path))
        return 0
    total = count = 0
    for rel, entry in ctx.entries().items():
        if not rel:
            continue
        count += 1
        total += entry.size
        shown = rel + "/" if entry.kind == "dir" else rel
        if entry.kind == "symlink":
            shown += f" -> {entry.linkname}"
        if long_:
            click.echo(f"{entry.kind:<7} {entry.mode:04o} {entry.size:>10}  {shown}")
        else:
            click.echo(shown)
    source = ctx.ignore_file.name if ctx.ignore_file else "no .dockerignore"
    click.echo(f"{count} paths, {total} bytes ({source})", err=True)
    return 0


def _why_line(ctx: object, path: str) -> str:
    from builder.context import BuildContext

    assert isinstance(ctx, BuildContext)
    rel = ctx.clean(path)
    exists = os.path.lexists(ctx.root / rel)
    decision = ctx.decide(rel)
    if not exists:
        state = "does not exist"
    elif decision.excluded:
        state = "excluded"
    else:
        state = "sent"
    if decision.pattern is None:
        return f"{rel}: {state} (no pattern matches)"
    pat = decision.pattern
    how = "re-included by" if pat.exclusion else "matched by"
    via = f" via its parent {decision.inherited_from!r}" if decision.inherited_from else ""
    return f"{rel}: {state} ({how} {pat.where()}: {str(pat)!r}{via})"


# -- pybuild build ----------------------------------------------------------------------------
def _progress(mode: str, quiet: bool, explain: bool) -> Progress:
    from builder import progress as p

    if quiet or mode == "quiet":
        return p.Quiet()
    if mode == "auto":
        mode = "tty" if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" else "plain"
    if mode == "json":
        return p.Json(sys.stderr)
    if mode == "tty":
        import shutil

        return p.Tty(sys.stderr, explain=explain, width=shutil.get_terminal_size().columns)
    return p.Plain(sys.stderr, explain=explain)


@click.command("build", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("context_dir", default=".", metavar="CONTEXT")
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image (repeatable).")
@click.option("-f", "--file", "dockerfile", default=None,
              help="Dockerfile path (default: CONTEXT/Dockerfile; '-' reads stdin).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY[=VALUE]",
              help="Set a build arg (KEY alone takes the value from the environment).")
@click.option("--build-arg-file", "build_arg_files", multiple=True, type=click.Path(dir_okay=False),
              help="Read KEY=VALUE build args from a file (one a line, # comments).")
@click.option("--target", default=None, help="Build this stage (and what it needs) only.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Add an image label.")
@click.option("--platform", default=None, help="Target platform (only the host's is supported).")
@click.option("--secret", "secrets", multiple=True, metavar="id=ID,src=PATH|env=VAR",
              help="Expose a secret to RUN --mount=type=secret.")
@click.option("--network", default="default", type=click.Choice(["default", "none", "host"]),
              help="Networking for RUN (default: the host's, as BuildKit without CNI).")
@click.option("--iidfile", default=None, type=click.Path(dir_okay=False), help="Write the image ID here.")
@click.option("--metadata-file", default=None, type=click.Path(dir_okay=False),
              help="Write build metadata (digests, per-step cache status) as JSON.")
@click.option("-o", "--output", "outputs", multiple=True,
              help="type=oci|docker|tar|local,dest=PATH (also: a plain PATH = local).")
@click.option("--push", is_flag=True, help="Push the tags after the build.")
@click.option("--cache-to", "cache_to", multiple=True, metavar="type=registry,ref=REF[,mode=min|max]",
              help="Export the build cache to a registry.")
@click.option("--cache-from", "cache_from", multiple=True, metavar="type=registry,ref=REF",
              help="Import build cache from a registry.")
@click.option("--progress", "progress_mode", default="auto",
              type=click.Choice(["auto", "tty", "plain", "json", "quiet"]))
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--no-cache-filter", "no_cache_filter", multiple=True, metavar="STAGE",
              help="Do not use the cache for this stage (repeatable).")
@click.option("--pull", is_flag=True, help="Always look for a newer base image.")
@click.option("--explain-cache", is_flag=True, help="Say why each step's cache key missed.")
@click.option("--build-context", "build_contexts", multiple=True, metavar="NAME=PATH|docker-image://REF",
              help="An extra named context for COPY --from / FROM.")
@click.option("--compression", type=click.Choice(["gzip", "zstd", "none"]), default="gzip",
              help="Layer compression (gzip for compatibility).")
@pass_globals
@returns_code
def build(g: Globals, context_dir: str, tags: tuple[str, ...], dockerfile: str | None,
          build_args: tuple[str, ...], build_arg_files: tuple[str, ...], target: str | None,
          labels: tuple[str, ...], platform: str | None, secrets: tuple[str, ...], network: str,
          iidfile: str | None, metadata_file: str | None, outputs: tuple[str, ...], push: bool,
          cache_to: tuple[str, ...], cache_from: tuple[str, ...], progress_mode: str, quiet: bool,
          no_cache: bool, no_cache_filter: tuple[str, ...], pull: bool, explain_cache: bool,
          build_contexts: tuple[str, ...], compression: Codec) -> int:
    """Build an image from a Dockerfile and a context directory.

    Progress goes to stderr; stdout gets the image ID only.
    """
    from builder import options as o
    from builder.build import build_image

    opts = o.make_options(
        context_dir=context_dir, dockerfile=dockerfile, tags=tags, build_args=build_args,
        build_arg_files=build_arg_files, target=target, labels=labels, platform=platform,
        secrets=secrets, network=network, no_cache=no_cache, no_cache_filter=no_cache_filter,
        pull=pull, explain=explain_cache, build_contexts=build_contexts, cache_from=cache_from,
        cache_to=cache_to, outputs=outputs, push=push, compression=compression,
        stdin=sys.stdin.buffer if dockerfile == "-" and hasattr(sys.stdin, "buffer") else None)
    progress = _progress(progress_mode, quiet, explain_cache)
    try:
        result = build_image(g.store(), opts, progress)
    finally:
        progress.close()
    if iidfile:
        Path(iidfile).write_text(result.image_id)
    if metadata_file:
        import json

        Path(metadata_file).write_text(json.dumps(result.metadata(), indent=2, sort_keys=True) + "\n")
    click.echo(result.image_id)
    return 0
