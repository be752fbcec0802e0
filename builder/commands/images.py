"""`images`, `image …`, `inspect`, `history`, `tag`, `rmi`, `system df|prune`: docker's flags and
output over the local store (registry.image, registry.gc). Results on stdout, diagnostics on stderr;
exit 1 for a missing image or a conflict, 125 for bad flags. Click and the stdlib at module scope;
registry/runtime (and builder.commands.containers for `inspect`) inside the commands."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from builder.commands import (
    Globals,
    confirm,
    pass_globals,
    print_rows,
    prune_report,
    report_error,
    returns_code,
    template_flag,
)
from builder.commands._format import (
    ellipsis,
    go_time,
    human_size,
    inspect_text,
    since,
)

if TYPE_CHECKING:
    from registry.digest import Digest
    from registry.image import ImageEntry
    from registry.store import DirStore

# Upper layers that own gc roots beyond the root files under $PYBUILD_ROOT/roots/: each is
# "module:function", function(store) -> iterable of digests/descriptors; skipped if absent.
ROOT_PROVIDERS = ("builder.cache:gc_roots", "runtime.containers:gc_roots")
IN_USE_PROVIDERS = ("runtime.containers:images_in_use",)
_ROOT_KINDS_IN_USE = ("containers",)
_CACHE_KINDS = ("cache", "buildcache")   # root kinds `system df` counts as build cache


def _call_providers(names: Iterable[str], store: DirStore) -> list[Any]:
    out: list[Any] = []
    for target in names:
        module, _, attr = target.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        out += list(fn(store))
    return out


def extra_roots(store: DirStore) -> list[Any]:
    """gc roots that upper layers provide in-process (in addition to root files)."""
    return _call_providers(ROOT_PROVIDERS, store)


def images_in_use(store: DirStore) -> set[Digest]:
    """Digests (target, manifest or config) of images that containers use: root files of
    kind 'containers' plus in-process providers."""
    from registry.digest import Digest
    from registry.gc import list_roots

    used: set[Digest] = set()
    for root in list_roots(store):
        if root.kind in _ROOT_KINDS_IN_USE and root.alive():
            used.update(root.digests)
    for item in _call_providers(IN_USE_PROVIDERS, store):
        used.add(item if isinstance(item, Digest) else item.digest)
    return used


# -- images ----------------------------------------------------------------------------------
_IMAGE_HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
                  "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
                  "Containers": "CONTAINERS", "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE",
                  "VirtualSize": "VIRTUAL SIZE"}


def _image_row(entry: ImageEntry, *, no_trunc: bool, now: datetime) -> dict[str, str]:
    image = entry.image
    created = image.created
    return {
        "Containers": "N/A",
        "CreatedAt": go_time(created),
        "CreatedSince": since(created, now),
        "Digest": str(image.digest),
        "ID": str(image.id) if no_trunc else image.id.short,
        "Repository": entry.repository(),
        "SharedSize": "N/A",
        "Size": human_size(image.size),
        "Tag": entry.tag(),
        "UniqueSize": "N/A",
        "VirtualSize": human_size(image.size),
    }


def _matches_reference(entry: ImageEntry, pattern: str) -> bool:
    """docker's reference filter: glob on the familiar 'repo' or 'repo:tag' (full names too)."""
    ref = entry.reference
    if ref is None:
        return False
    repo_pat, _, tag_pat = pattern.rpartition(":") if ":" in pattern.rsplit("/", 1)[-1] else (pattern, "", "")
    if tag_pat and not fnmatch.fnmatchcase(ref.tag or "", tag_pat):
        return False
    return any(fnmatch.fnmatchcase(name, repo_pat) for name in (ref.familiar_name(), ref.name))


def _filter(entries: list[ImageEntry], filters: tuple[str, ...]) -> list[ImageEntry]:
    from builder.errors import UsageError

    for spec in filters:
        key, sep, value = spec.partition("=")
        if not sep:
            raise UsageError(f"bad filter {spec!r}: want key=value")
        if key == "dangling":
            want = value.lower() in ("true", "1")
            entries = [e for e in entries if (e.name is None) == want]
        elif key == "reference":
            entries = [e for e in entries if _matches_reference(e, value)]
        elif key == "label":
            lk, has_value, lv = value.partition("=")
            entries = [e for e in entries if lk in e.image.config.config.labels
                       and (not has_value or e.image.config.config.labels[lk] == lv)]
        else:
            raise UsageError(f"unsupported filter {key!r} (supported: dangling, reference, label)")
    return entries


@click.command("images")
@click.argument("reference", required=False)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all images (there are no hidden "
              "intermediate images in this store; accepted for compatibility).")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--digests", is_flag=True, help="Show digests.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-f", "--filter", "filters", multiple=True,
              help="Filter output (dangling=true|false, reference=PATTERN, label=KEY[=VALUE]).")
@click.option("--format", "fmt", help="'table', 'json', or a Go-template subset ({{.Repository}}:{{.Tag}}).")
@pass_globals
@returns_code
def images(g: Globals, reference: str | None, all_: bool, quiet: bool, digests: bool, no_trunc: bool,
           filters: tuple[str, ...], fmt: str | None) -> int:
    """List images."""
    from registry.image import list_images

    del all_
    store = g.store()
    listing = list_images(store)
    for name, why in listing.problems:
        report_error(f"skipping {name}: {why}")
    entries = listing.entries
    if reference:
        entries = [e for e in entries if _matches_reference(e, reference)]
    entries = _filter(entries, filters)
    now = datetime.now(tz=UTC)
    rows = [_image_row(e, no_trunc=no_trunc, now=now) for e in entries]
    if quiet:
        click.echo("".join(r["ID"] + "\n" for r in rows), nl=False)
        return 0
    print_rows(rows, fmt, _IMAGE_HEADERS,
               ["Repository", "Tag"] + (["Digest"] if digests else []) + ["ID", "CreatedSince", "Size"])
    return 0


# -- inspect ----------------------------------------------------------------------------------
@click.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", help="'json' (default) or a Go-template subset ({{.Id}}).")
@click.option("--type", "type_", type=click.Choice(["container", "image"]), default=None,
              help="Only this kind of object (default: containers first, then images, as docker).")
@pass_globals
@returns_code
def inspect(g: Globals, names: tuple[str, ...], fmt: str | None, type_: str | None) -> int:
    """Display detailed information on one or more containers or images."""
    from registry.errors import RegistryError
    from registry.image import inspect_view, resolve_image

    store = g.store()
    views: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in names:
        if type_ != "image":    # containers first (the lifecycle verbs' docker-shaped view)
            from builder.commands.containers import inspect_containers

            found, _ = inspect_containers(g, (name,), fmt)
            if found or type_ == "container":
                views += found
                missing += [] if found else [f"no such container: {name}"]
                continue
        try:
            views.append(inspect_view(resolve_image(store, name)))
        except RegistryError as exc:
            missing.append(f"no such object: {name}" if "no such image" in str(exc) else str(exc))
    with template_flag():
        click.echo(inspect_text(views, fmt), nl=False)
    for message in missing:
        report_error(message)
    return 1 if missing else 0


# -- history ----------------------------------------------------------------------------------
class _HistoryCommand(click.Command):
    """docker's `-H` is a bool flag that also takes `-H=false`; click cannot parse that form
    itself, so it is rewritten to a hidden option first."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        for arg in args:
            if arg.startswith(("-H=", "--human=")):
                out += ["--human-value", arg.split("=", 1)[1]]
            else:
                out.append(arg)
        return super().parse_args(ctx, out)


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    from builder.errors import UsageError

    raise UsageError(f"invalid boolean value {text!r} for -H/--human")


_HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                    "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}


@click.command("history", cls=_HistoryCommand)
@click.argument("image")
@click.option("-H", "--human", is_flag=True, default=True,
              help="Print sizes and dates in human readable format (default; -H=false for raw).")
@click.option("--human-value", hidden=True)
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--format", "fmt", help="'table', 'json', or a Go-template subset.")
@pass_globals
@returns_code
def history(g: Globals, image: str, human: bool, human_value: str | None, no_trunc: bool, quiet: bool,
            fmt: str | None) -> int:
    """Show the history of an image."""
    from registry.image import history_rows, resolve_image

    if human_value is not None:
        human = _parse_bool(human_value)

    img = resolve_image(g.store(), image)
    now = datetime.now(tz=UTC)
    rows = []
    for h in history_rows(img):
        ident = "<missing>"
        if h.image_id is not None:
            ident = str(h.image_id) if no_trunc else h.image_id.short
        created_by = h.created_by.replace("\t", " ")
        rows.append({
            "ID": ident,
            "CreatedSince": since(h.created, now) if human else h.created_raw,
            "CreatedAt": h.created_raw,
            "CreatedBy": created_by if no_trunc else ellipsis(created_by, 45),
            "Size": human_size(h.size) if human else str(h.size),
            "Comment": h.comment,
        })
    if quiet:
        click.echo("".join(r["ID"] + "\n" for r in rows), nl=False)
    else:
        print_rows(rows, fmt, _HISTORY_HEADERS, ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"])
    return 0


# -- tag ----------------------------------------------------------------------------------------
@click.command("tag")
@click.argument("source")
@click.argument("target")
@pass_globals
@returns_code
def tag(g: Globals, source: str, target: str) -> int:
    """Create a tag TARGET that refers to SOURCE."""
    from registry.errors import InvalidReference
    from registry.image import resolve_image
    from registry.reference import parse_reference

    store = g.store()
    ref = parse_reference(target)
    if ref.digest is not None:
        raise InvalidReference(target, "refusing to create a tag with a digest reference")
    image = resolve_image(store, source)
    store.tag(str(ref), image.target)
    return 0


# -- rmi ----------------------------------------------------------------------------------------
@click.command("rmi")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Force removal of the image.")
@click.option("--no-prune", is_flag=True, help="Do not delete the image's blobs now (gc does later).")
@pass_globals
@returns_code
def rmi(g: Globals, names: tuple[str, ...], force: bool, no_prune: bool) -> int:
    """Remove one or more images."""
    from registry.errors import RegistryError
    from registry.image import remove_image

    store = g.store()
    in_use = images_in_use(store)
    code = 0
    candidates: list[Digest] = []
    for name in names:
        try:
            gone = remove_image(store, name, force=force, in_use=in_use)
        except RegistryError as exc:
            report_error(str(exc))
            code = 1
            continue
        for ref in gone.untagged:
            click.echo(f"Untagged: {_familiar(ref)}")
        if gone.deleted is not None:
            for repo in dict.fromkeys(_familiar(n, repo_only=True) for n in gone.untagged):
                click.echo(f"Untagged: {repo}@{gone.digest}")
            click.echo(f"Deleted: {gone.deleted}")
        candidates += gone.blobs
    if candidates and not no_prune:
        _collect(store, candidates)
    return code


def _familiar(name: str, *, repo_only: bool = False) -> str:
    """docker's short form of a stored name; a ref name another tool wrote is shown as is."""
    from registry.errors import InvalidReference
    from registry.reference import parse_reference

    try:
        ref = parse_reference(name)
    except InvalidReference:
        return name
    return ref.familiar_name() if repo_only else ref.familiar()


def _collect(store: DirStore, candidates: list[Digest]) -> None:
    """Delete the blobs rmi unreferenced, unless something else still reaches them. Skipped
    (left to `image prune`) when another pybuild holds the store lock."""
    from registry.errors import StoreBusy
    from registry.gc import gc

    try:
        gc(store, extra_roots(store), only=candidates, blocking=False)
    except StoreBusy:
        click.echo("note: store busy; unreferenced blobs are left for `pybuild image prune`", err=True)


# -- prune / system -----------------------------------------------------------------------------
def _print_prune(result: Any) -> None:
    prune_report("Deleted Images:", [f"untagged: {_familiar(name)}" for name in result.untagged]
                 + [f"deleted: {image_id}" for image_id in result.deleted],
                 human_size(result.gc.bytes_freed))


@click.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images, not just dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@pass_globals
@returns_code
def image_prune(g: Globals, all_: bool, force: bool) -> int:
    """Remove unused images."""

    what = ("all images without at least one container associated to them" if all_
            else "all dangling images")
    if not force and not confirm(f"WARNING! This will remove {what}."):
        return 0
    _print_prune(_prune(g.store(), all_))
    return 0


def _prune(store: DirStore, all_images: bool) -> Any:
    """prune_images, telling the user when it has to wait for a running build, pull or load."""
    from registry.errors import StoreBusy
    from registry.gc import prune_images

    in_use, extra = images_in_use(store), extra_roots(store)
    try:
        return prune_images(store, all_images=all_images, in_use=in_use, extra_roots=extra,
                            blocking=False)
    except StoreBusy:
        click.echo("waiting for the store lock (a build, pull or load is writing)…", err=True)
        return prune_images(store, all_images=all_images, in_use=in_use, extra_roots=extra)


@click.group("system")
def system() -> None:
    """Manage the local store."""


_DF_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE",
               "Reclaimable": "RECLAIMABLE"}


@system.command("df")
@click.option("--format", "fmt", help="'table', 'json', or a Go-template subset.")
@pass_globals
@returns_code
def system_df(g: Globals, fmt: str | None) -> int:
    """Show the store's disk usage."""
    from registry.gc import disk_usage, list_roots

    store = g.store()
    du = disk_usage(store, in_use=images_in_use(store), cache_kinds=_CACHE_KINDS)
    n_containers, n_running = _containers(store, [r for r in list_roots(store) if r.alive()])
    total, reclaim = du.image_bytes, du.image_reclaimable
    pct = f" ({round(100 * reclaim / total)}%)" if total else ""
    cache_size = du.cache_bytes
    rows = [
        {"Type": "Images", "TotalCount": str(du.images), "Active": str(du.active_images),
         "Size": human_size(total),
         "Reclaimable": f"{human_size(reclaim)}{pct}"},
        {"Type": "Containers", "TotalCount": str(n_containers), "Active": str(n_running),
         "Size": "0B", "Reclaimable": "0B (0%)"},
        {"Type": "Build Cache", "TotalCount": str(du.cache_records), "Active": "0",
         "Size": human_size(cache_size), "Reclaimable": human_size(cache_size)},
    ]
    print_rows(rows, fmt, _DF_HEADERS, list(_DF_HEADERS))
    return 0


def _containers(store: DirStore, roots: list[Any]) -> tuple[int, int]:
    """(containers, running ones): from runtime.containers when it is there, else the
    containers' gc root files."""
    try:
        from runtime.containers import ContainerStore
    except ImportError:
        n = sum(1 for r in roots if r.kind == "containers")
        return n, n
    every = ContainerStore(store.subdir("containers")).list_all()
    return len(every), sum(1 for c in every if c.state().running)


@system.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images, not just dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@pass_globals
@returns_code
def system_prune(g: Globals, all_: bool, force: bool) -> int:
    """Remove dangling (or with -a all unused) images, unreferenced blobs and abandoned
    partial writes."""

    images_line = "all images without at least one container" if all_ else "all dangling images"
    if not force and not confirm("WARNING! This will remove:\n"
                                  f"  - {images_line}\n"
                                  "  - all blobs no image, container or cache record uses\n"
                                  "  - abandoned partial downloads and writes"):
        return 0
    _print_prune(_prune(g.store(), all_))
    return 0


# -- the `image` group (docker's management commands) -----------------------------------------
@click.group("image")
def image() -> None:
    """Manage images."""


def _register_image_group() -> None:
    from builder.commands import archive

    for name, cmd in (("ls", images), ("list", images), ("inspect", inspect), ("history", history),
                      ("tag", tag), ("rm", rmi), ("remove", rmi), ("prune", image_prune),
                      ("save", archive.save), ("load", archive.load), ("import", archive.import_)):
        image.add_command(cmd, name)


_register_image_group()
