"""`pybuild builds ls | show [ID|--last] | logs ID [--step N]`: the build records.

Click and the stdlib at module scope only; builder.records is imported inside the commands.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from builder.commands import Globals, pass_globals, returns_code
from builder.commands._format import short_size

if TYPE_CHECKING:
    from builder.records import BuildRecord, Records


def _ago(ts: float) -> str:
    delta = max(time.time() - ts, 0)
    for unit, secs in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= secs:
            n = int(delta // secs)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return f"{int(delta)} seconds ago"


def _records(g: Globals) -> Records:
    from builder.records import Records

    return Records(g.store())


def _pick(records: Records, build_id: str | None, last: bool) -> BuildRecord:
    from builder.errors import BuildError

    if last or not build_id:
        rec = records.last()
        if rec is None:
            raise BuildError("no build records yet", hint="run `pybuild build` first")
        return rec
    found = records.find(build_id)
    if not found:
        raise BuildError(f"build {build_id!r}: no such build record", hint="see `pybuild builds ls`")
    if len(found) > 1:
        raise BuildError(f"build {build_id!r}: ambiguous prefix ({len(found)} records match)")
    return found[0]


@click.group("builds")
def builds() -> None:
    """Build records: what each build ran, what was cached, why, and the full logs."""


@builds.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print build IDs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@pass_globals
@returns_code
def ls(g: Globals, quiet: bool, fmt: str) -> int:
    """List builds, oldest first."""
    import json

    records = _records(g).all()
    if quiet:
        for r in records:
            click.echo(r.id)
        return 0
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True))
        return 0
    rows = [("BUILD ID", "STARTED", "DURATION", "STATUS", "STEPS", "IMAGE")]
    for r in records:
        ran, cached = r.counts()
        image = r.tags[0] if r.tags else (r.image_id or "")[7:19] or "-"
        rows.append((r.id, _ago(r.started), f"{r.duration:.2f}s", r.status,
                     f"{ran} ran, {cached} cached", image))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


@builds.command("show")
@click.argument("build_id", required=False)
@click.option("--last", is_flag=True, help="The most recent build (the default).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@pass_globals
@returns_code
def show(g: Globals, build_id: str | None, last: bool, fmt: str) -> int:
    """Each step of a build: CACHED or RAN, key, duration, layer, and why a key missed."""
    import json

    rec = _pick(_records(g), build_id, last)
    if fmt == "json":
        click.echo(json.dumps(rec.to_dict(), indent=2, sort_keys=True))
        return 0
    ran, cached = rec.counts()
    click.echo(f"build {rec.id}: {rec.status} in {rec.duration:.2f}s ({ran} ran, {cached} cached), "
               f"{_ago(rec.started)}")
    click.echo(f"  context:    {rec.context}")
    click.echo(f"  dockerfile: {rec.dockerfile}" + (f" (target {rec.target})" if rec.target else ""))
    if rec.tags:
        click.echo(f"  tags:       {', '.join(rec.tags)}")
    if rec.image:
        click.echo(f"  image:      {rec.image_id} (manifest {rec.image})")
    if rec.args:
        click.echo("  build args: " + " ".join(f"{k}={v}" for k, v in sorted(rec.args.items())))
    if rec.error:
        click.echo(f"  error:      {rec.error}")
    for w in rec.warnings:
        click.echo(f"  warning:    {w}")
    click.echo("")
    for s in rec.steps:
        key = s.key[7:19] if s.key else "-"
        size = short_size(s.layer_size) if s.layer_size is not None else ""
        layer = f"{s.layer[7:19]} {size}" if s.layer else "-"
        stage = f"{s.stage} " if s.stage else ""
        click.echo(f"#{s.index:<3} {s.status:<7} {s.duration:6.2f}s  key {key:<12}  layer {layer:<20} "
                   f"[{stage}{s.stage_step}] {s.instruction}")
        for reason in s.reasons:
            click.echo(f"       why: {reason}")
        if s.status == "FAILED" and s.exit_code is not None:
            click.echo(f"       exit code {s.exit_code}; full output: pybuild builds logs {rec.id} "
                       f"--step {s.index}")
    return 0


@builds.command("logs")
@click.argument("build_id", required=False)
@click.option("--step", "step", type=int, default=None, help="Only this step's output (raw).")
@click.option("--last", is_flag=True, help="The most recent build (the default).")
@pass_globals
@returns_code
def logs(g: Globals, build_id: str | None, step: int | None, last: bool) -> int:
    """The full output of a build's steps (never clipped)."""
    from builder.errors import BuildError

    records = _records(g)
    rec = _pick(records, build_id, last)
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    steps = [s for s in rec.steps if step is None or s.index == step]
    if step is not None and not steps:
        raise BuildError(f"build {rec.id} has no step {step}", hint=f"steps are 1..{len(rec.steps)}")
    for s in steps:
        if step is None:
            click.echo(f"#{s.index} {s.instruction} ({s.status})")
        if not s.log:
            continue
        for chunk in records.read_log(rec.id, s.log):
            if out is not None:
                out.write(chunk)
            else:
                click.echo(chunk.decode("utf-8", "replace"), nl=False)
        if out is not None:
            out.flush()
    return 0
