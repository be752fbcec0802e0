"""`volume create|ls|inspect|rm|prune` over runtime.volumes (named and anonymous volumes).

Only click and the stdlib at module scope. Docker's output: names on stdout, one per line;
`ls` as a DRIVER/VOLUME NAME table; `inspect` as a JSON array; exit 1 for a missing or in-use
volume (the other names are still processed).
"""

from __future__ import annotations

import click

from builder.commands import (
    Globals,
    confirm,
    each_name,
    inspect_each,
    pass_globals,
    print_rows,
    prune_report,
    returns_code,
)


def _kv(items: tuple[str, ...], what: str) -> dict[str, str]:
    from builder.errors import UsageError

    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not k:
            raise UsageError(f"invalid {what} {item!r}: want KEY=VALUE")
        out[k] = v if sep else ""
    return out


@click.group("volume")
def volume() -> None:
    """Manage volumes."""


@volume.command("create")
@click.argument("name", required=False)
@click.option("-d", "--driver", default="local", help="Volume driver (only 'local').")
@click.option("--label", "labels", multiple=True, help="Set metadata for a volume (KEY=VALUE).")
@click.option("-o", "--opt", "opts", multiple=True, help="Driver options (kept as metadata).")
@pass_globals
@returns_code
def create(g: Globals, name: str | None, driver: str, labels: tuple[str, ...], opts: tuple[str, ...]) -> int:
    """Create a volume (a random name when none is given)."""
    from builder.errors import UsageError
    from runtime.volumes import VolumeStore

    if driver != "local":
        raise UsageError(f"volume driver {driver!r} is not supported: only 'local'")
    vol = VolumeStore(g.store().root / "volumes").create(name, labels=_kv(labels, "label"),
                                                   options=_kv(opts, "option"))
    click.echo(vol.name)
    return 0


_LS_HEADERS = {"Driver": "DRIVER", "Name": "VOLUME NAME", "Mountpoint": "MOUNTPOINT", "Labels": "LABELS",
               "Scope": "SCOPE"}


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display volume names.")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter: dangling=true|false, name=, label=.")
@click.option("--format", "fmt", help="'table', 'json', or a Go-template subset ({{.Name}}).")
@pass_globals
@returns_code
def ls(g: Globals, quiet: bool, filters: tuple[str, ...], fmt: str | None) -> int:
    """List volumes."""
    from builder.errors import UsageError
    from runtime.lifecycle import container_store
    from runtime.volumes import VolumeStore, volumes_in_use

    root = g.store().root
    vols = VolumeStore(root / "volumes").list_all()
    used = volumes_in_use(container_store(root)) if any(f.startswith("dangling=") for f in filters) else {}
    for f in filters:
        key, _, value = f.partition("=")
        if key == "dangling":
            want = value.lower() in ("1", "true")
            vols = [v for v in vols if (not used.get(v.name)) == want]
        elif key == "name":
            vols = [v for v in vols if value in v.name]
        elif key == "label":
            k, _, val = value.partition("=")
            vols = [v for v in vols if k in v.labels and (not val or v.labels[k] == val)]
        else:
            raise UsageError(f"invalid filter {key!r}")
    if quiet:
        for v in vols:
            click.echo(v.name)
        return 0
    rows = [{"Driver": v.driver, "Name": v.name, "Mountpoint": v.mountpoint, "Scope": "local",
             "Labels": ",".join(f"{k}={x}" for k, x in sorted(v.labels.items()))} for v in vols]
    print_rows(rows, fmt, _LS_HEADERS, ("Driver", "Name"))
    return 0


volume.add_command(ls, "list")


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", help="'json' (default) or a Go-template subset ({{.Mountpoint}}).")
@pass_globals
@returns_code
def inspect(g: Globals, names: tuple[str, ...], fmt: str | None) -> int:
    """Display detailed information on one or more volumes."""
    from runtime.volumes import VolumeError, VolumeStore

    vs = VolumeStore(g.store().root / "volumes")
    return inspect_each(names, lambda name: vs.get(name).inspect(), VolumeError, fmt)


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove even when a container uses the volume.")
@pass_globals
@returns_code
def rm(g: Globals, names: tuple[str, ...], force: bool) -> int:
    """Remove one or more volumes (refused while a container uses them)."""
    from runtime.lifecycle import container_store
    from runtime.volumes import VolumeError, VolumeStore, volumes_in_use

    root = g.store().root
    vs = VolumeStore(root / "volumes")
    used = volumes_in_use(container_store(root))

    def one(n: str) -> str:
        vs.remove(n, users=used.get(n, ()), force=force)
        return n

    return each_name(names, one, VolumeError)


volume.add_command(rm, "remove")


@volume.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused volumes, not just anonymous ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@pass_globals
@returns_code
def prune(g: Globals, all_: bool, force: bool) -> int:
    """Remove unused volumes (anonymous ones; with -a every unused one)."""
    from runtime.lifecycle import container_store
    from runtime.volumes import VolumeStore, volumes_in_use

    what = "all volumes not used by at least one container" if all_ else \
        "all anonymous volumes not used by at least one container"
    if not force and not confirm(f"WARNING! This will remove {what}."):
        return 0
    root = g.store().root
    removed = VolumeStore(root / "volumes").prune(volumes_in_use(container_store(root)), all_volumes=all_)
    prune_report("Deleted Volumes:", removed, "0B")
    return 0
