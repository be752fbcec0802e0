"""`network create|ls|inspect|rm|prune` over runtime.network (bridge networks, as root).

Only click and the stdlib at module scope. Docker's output: the full network ID after
`create`, a NETWORK ID/NAME/DRIVER/SCOPE table for `ls` (the predefined bridge, host and none
included), a JSON array for `inspect`; exit 1 for a missing or in-use network.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import click

from builder.commands import (
    Globals,
    confirm,
    each_name,
    inspect_each,
    pass_globals,
    print_rows,
    returns_code,
)

if TYPE_CHECKING:
    from runtime.network import NetworkStore

_PSEUDO = {"host": "host", "none": "null"}


def _store(g: Globals) -> NetworkStore:
    from runtime.network import NetworkStore

    return NetworkStore(g.store().root / "networks")


@click.group("network")
def network() -> None:
    """Manage networks."""


@network.command("create")
@click.argument("name")
@click.option("-d", "--driver", default="bridge", help="Driver (only 'bridge').")
@click.option("--subnet", help="Subnet in CIDR format (default: a free private /16).")
@click.option("--gateway", help="Gateway address of the subnet.")
@click.option("--internal", is_flag=True, help="Restrict external access to the network (no NAT).")
@click.option("--label", "labels", multiple=True, help="Set metadata on a network (KEY=VALUE).")
@click.option("-o", "--opt", "opts", multiple=True,
              help="com.docker.network.bridge.name=NAME sets the bridge.")
@pass_globals
@returns_code
def create(g: Globals, name: str, driver: str, subnet: str | None, gateway: str | None, internal: bool,
           labels: tuple[str, ...], opts: tuple[str, ...]) -> int:
    """Create a bridge network; containers on it reach each other by name and alias."""
    from builder.errors import UsageError

    if driver != "bridge":
        raise UsageError(f"network driver {driver!r} is not supported: only 'bridge'")
    bridge = None
    for o in opts:
        k, _, v = o.partition("=")
        if k == "com.docker.network.bridge.name":
            bridge = v
    lab = dict(x.partition("=")[::2] for x in labels)
    net = _store(g).create(name, subnet=subnet, gateway=gateway, internal=internal, labels=lab, bridge=bridge)
    click.echo(net.id)
    return 0


_LS_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
               "Subnet": "SUBNET", "Bridge": "BRIDGE", "Internal": "INTERNAL", "Labels": "LABELS",
               "CreatedAt": "CREATED AT"}


def _rows(g: Globals, no_trunc: bool) -> list[dict[str, Any]]:
    nets = _store(g).list_all()
    rows = []
    have_bridge = any(n.name == "bridge" for n in nets)
    for n in nets:
        rows.append({"ID": n.id if no_trunc else n.short_id, "Name": n.name, "Driver": n.driver,
                     "Scope": "local", "Subnet": n.subnet, "Bridge": n.bridge,
                     "Internal": str(n.internal).lower(), "CreatedAt": n.created,
                     "Labels": ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))})
    pseudo = [("host", "host"), ("none", "null")] + ([] if have_bridge else [("bridge", "bridge")])
    for name, drv in pseudo:
        rows.append({"ID": name if not no_trunc else name, "Name": name, "Driver": drv, "Scope": "local",
                     "Subnet": "", "Bridge": "", "Internal": "false", "Labels": "", "CreatedAt": ""})
    rows.sort(key=lambda r: r["Name"])
    return rows


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display network IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output.")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter: name=, driver=, label=.")
@click.option("--format", "fmt", help="'table', 'json', or a Go-template subset ({{.Name}}).")
@pass_globals
@returns_code
def ls(g: Globals, quiet: bool, no_trunc: bool, filters: tuple[str, ...], fmt: str | None) -> int:
    """List networks."""
    from builder.errors import UsageError

    rows = _rows(g, no_trunc)
    for f in filters:
        key, _, value = f.partition("=")
        if key == "name":
            rows = [r for r in rows if value in r["Name"]]
        elif key == "driver":
            rows = [r for r in rows if r["Driver"] == value]
        elif key == "label":
            rows = [r for r in rows if value in r["Labels"].split(",")
                    or any(x.split("=")[0] == value for x in r["Labels"].split(","))]
        else:
            raise UsageError(f"invalid filter {key!r}")
    if quiet:
        for r in rows:
            click.echo(r["ID"])
        return 0
    print_rows(rows, fmt, _LS_HEADERS, ("ID", "Name", "Driver", "Scope"))
    return 0


network.add_command(ls, "list")


def _view(g: Globals, ref: str) -> dict[str, Any]:
    from runtime.errors import SandboxError
    from runtime.lifecycle import container_store

    st = _store(g)
    net = st.get(ref)
    cs = container_store(g.store().root)
    containers = {}
    for ep in st.endpoints(net):
        name = ep.name
        with contextlib.suppress(SandboxError):  # a removed container: keep the endpoint's name
            name = cs.get(ep.container_id).name
        containers[ep.container_id] = {"Name": name, "EndpointID": ep.host_veth, "MacAddress": ep.mac,
                                       "IPv4Address": f"{ep.ip}/{net.prefix_len}", "IPv6Address": "",
                                       "Aliases": list(ep.aliases)}
    return {"Name": net.name, "Id": net.id, "Created": net.created, "Scope": "local", "Driver": net.driver,
            "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": {},
                     "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]},
            "Internal": net.internal, "Attachable": False, "Ingress": False, "Containers": containers,
            "Options": {"com.docker.network.bridge.name": net.bridge, "pybuild.firewall": net.firewall,
                        "pybuild.dns": str(net.dns).lower()},
            "Labels": dict(net.labels)}


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", help="'json' (default) or a Go-template subset ({{.Id}}).")
@pass_globals
@returns_code
def inspect(g: Globals, names: tuple[str, ...], fmt: str | None) -> int:
    """Display detailed information on one or more networks."""
    from runtime.errors import SandboxError

    def view(name: str) -> dict[str, Any]:
        if name in _PSEUDO:
            return {"Name": name, "Id": name, "Scope": "local", "Driver": _PSEUDO[name], "Containers": {}}
        return _view(g, name)

    return inspect_each(names, view, SandboxError, fmt)


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Do not error if the network does not exist.")
@pass_globals
@returns_code
def rm(g: Globals, names: tuple[str, ...], force: bool) -> int:
    """Remove one or more networks (refused while containers are attached)."""
    from runtime.errors import SandboxError
    from runtime.network import NetworkNotFound

    st = _store(g)

    def one(n: str) -> str | None:
        if n in ("bridge", "host", "none"):
            raise SandboxError(f"{n} is a pre-defined network and cannot be removed")
        try:
            st.remove(n)
        except NetworkNotFound:
            if force:
                return None       # -f: a missing network is not an error
            raise
        return n

    return each_name(names, one, SandboxError)


network.add_command(rm, "remove")


@network.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@pass_globals
@returns_code
def prune(g: Globals, force: bool) -> int:
    """Remove all user-defined networks no container uses."""
    if not force and not confirm("WARNING! This will remove all custom networks not used by at least "
                                 "one container."):
        return 0
    removed = _store(g).prune()
    if removed:
        click.echo("Deleted Networks:")
        for n in removed:
            click.echo(n.name)
    return 0
