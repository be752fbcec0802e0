"""`save`, `load`, `import`: image tarballs in and out of the local store (registry.archive).

Only click and the stdlib at module scope. `save` streams to stdout when no -o is given and
stdout is not a terminal; `load` reads stdin when no -i is given; `import` prints the new
image's ID on stdout, like docker.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import click

from builder.commands import Globals, pass_globals, report_error, returns_code

if TYPE_CHECKING:
    from registry.archive import Format, SaveItem
    from registry.store import DirStore


def _binary(stream: object) -> BinaryIO:
    """The binary side of sys.stdin/sys.stdout (click.get_binary_stream is deprecated)."""
    return cast(BinaryIO, getattr(stream, "buffer", stream))


def _save_items(store: DirStore, args: tuple[str, ...]) -> list[SaveItem]:
    """docker save's argument rules: NAME:TAG saves that tag; a bare repository NAME saves all
    its tags; an ID or digest saves the image without names."""
    from registry.archive import SaveItem
    from registry.errors import InvalidReference
    from registry.image import StoreImage, resolve
    from registry.reference import parse_reference
    from registry.store import REF_NAME

    order: list[str] = []
    images: dict[str, StoreImage] = {}
    names: dict[str, list[str]] = {}

    def add(image: StoreImage, name: str | None) -> None:
        key = str(image.target.digest)
        if key not in images:
            order.append(key)
            images[key] = image
            names[key] = []
        if name and name not in names[key]:
            names[key].append(name)

    for arg in args:
        repo_only = None
        try:
            bare = parse_reference(arg, default_tag=False)
            if bare.tag is None and bare.digest is None:
                repo_only = bare.name
        except InvalidReference:
            pass
        if repo_only is not None:
            tagged = [d for d in store.entries() if REF_NAME in d.annotations
                      and _repo_of(d.annotations[REF_NAME]) == repo_only]
            if tagged:
                for desc in tagged:
                    add(StoreImage(store, desc), desc.annotations[REF_NAME])
                continue
        res = resolve(store, arg)
        add(res.image, res.name if res.kind == "name" else None)
    return [SaveItem(images[k], tuple(names[k])) for k in order]


def _repo_of(name: str) -> str | None:
    from registry.errors import InvalidReference
    from registry.reference import parse_reference

    try:
        return parse_reference(name).name
    except InvalidReference:
        return None


@click.command("save")
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file, instead of STDOUT.")
@click.option("--format", "fmt", type=click.Choice(["docker-archive", "oci-archive"]),
              default="docker-archive", show_default=True, help="Archive format.")
@pass_globals
@returns_code
def save(g: Globals, images: tuple[str, ...], output: str | None, fmt: Format) -> int:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    from registry.archive import save as save_archive
    from registry.archive import save_to_path

    store = g.store()
    items = _save_items(store, images)
    if output and output != "-":
        try:
            save_to_path(store, items, Path(output), fmt=fmt)
        except OSError as exc:
            report_error(f"save {output}: {exc.strerror or exc}")
            return 1
        return 0
    out = _binary(sys.stdout)
    if out.isatty():
        report_error("cowardly refusing to save to a terminal; use the -o flag or redirect")
        return 1
    save_archive(store, items, out, fmt=fmt)
    out.flush()
    return 0


@click.command("load")
@click.option("-i", "--input", "input_", type=click.Path(dir_okay=False),
              help="Read from a tar archive file (gzip, zstd, xz, bzip2 or plain), instead of STDIN.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output.")
@pass_globals
@returns_code
def load(g: Globals, input_: str | None, quiet: bool) -> int:
    """Load images from a docker-archive or oci-archive tarball."""
    from registry.archive import load as load_archive
    from registry.reference import parse_reference

    store = g.store()
    if input_ and input_ != "-":
        try:
            f = open(input_, "rb")  # noqa: SIM115 - closed below; open errors are reported plainly
        except OSError as exc:
            report_error(f"load {input_}: {exc.strerror or exc}")
            return 1
        with f:
            loaded = load_archive(store, f, source=input_)
    else:
        stream = _binary(sys.stdin)
        if stream.isatty():
            report_error("requested load from stdin, but stdin is a terminal; use -i FILE")
            return 1
        loaded = load_archive(store, stream, source="stdin")
    if not quiet:
        for item in loaded:
            if item.name:
                click.echo(f"Loaded image: {parse_reference(item.name).familiar()}")
            else:
                click.echo(f"Loaded image ID: {item.image_id}")
    return 0


@click.command("import")
@click.argument("source")
@click.argument("reference", required=False)
@click.option("-c", "--change", "changes", multiple=True,
              help="Apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
                   "ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR).")
@click.option("-m", "--message", help="Set the commit message (history comment) for the image.")
@click.option("--platform", help="Set the platform (os/arch[/variant]); default: this host's.")
@pass_globals
@returns_code
def import_(g: Globals, source: str, reference: str | None, changes: tuple[str, ...],
            message: str | None, platform: str | None) -> int:
    """Import the contents of a root filesystem tarball (file or - for STDIN) to create an image."""
    from builder.errors import UsageError
    from registry.archive import import_rootfs
    from registry.model import Platform

    plat = None
    if platform:
        try:
            plat = Platform.parse(platform)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if source.startswith(("http://", "https://")):
        raise UsageError(f"import {source}: importing from a URL is not supported",
                         hint="download it first, then `pybuild import FILE`")
    tags = [reference] if reference else []
    store = g.store()
    if source == "-":
        result = import_rootfs(store, _binary(sys.stdin), tags=tags, changes=changes,
                               message=message, platform=plat, source="-")
    else:
        # docker streams the file as the request body, so the history says "Imported from -"
        # for files too; doing the same keeps the digest independent of the file's path.
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed below; open errors are reported plainly
        except OSError as exc:
            report_error(f"import {source}: {exc.strerror or exc}")
            return 1
        with f:
            result = import_rootfs(store, f, tags=tags, changes=changes, message=message,
                                   platform=plat, source="-")
    click.echo(str(result.image_id))
    if g.debug:
        print(f"imported {result.members} entries; manifest {result.descriptor.digest}", file=sys.stderr)
    return 0
