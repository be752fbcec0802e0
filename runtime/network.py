"""Container networking from the host side: bridges, veth pairs, IPAM, NAT, published ports,
name resolution between containers, and slirp4netns for rootless runs.

State: ``$PYBUILD_ROOT/networks/<id>/{network.json,endpoints.json}``, changed under
``networks/<id>/lock`` (flock); host-global choices (bridge names, subnets) under
``/run/pybuild/network.lock``. Every kernel object is named after its network or container
(bridge alias ``pybuild:<id>``, nft tables ``pybuild_n_<id12>``/``pybuild_c_<id12>``, iptables
comments ``pybuild:...``), so teardown removes exactly what was added. As with netavark, a
bridge and its NAT exist only while the network has endpoints (a deleted store never leaves
one behind). Links/addresses/routes by rtnetlink (runtime.netlink), rules by one ``nft -f -``
(or iptables). A detach may leave its kernel side (~15-70 ms) to a detached child that holds
the network's lock, after recording it in ``teardown.json``: the next user of the network waits
for it, or finishes it if the child died. Stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from registry.store import atomic_write, flocked
from runtime import netlink
from runtime.containers import PortMapping, rfc3339_nano, write_atomic
from runtime.errors import SandboxError

DEFAULT_NETWORK = "bridge"
PREDEFINED = ("bridge", "host", "none")
HOSTS_BEGIN = "# pybuild network: managed entries below"
HOSTS_END = "# pybuild network: end"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
IFNAME_MAX = 15


class NetworkError(SandboxError):
    """A network operation failed (exit 125 as a run failure; 1 from the network verbs)."""


class NetworkNotFound(NetworkError):
    exit_code: ClassVar[int] = 1

    def __init__(self, ref: str) -> None:
        super().__init__(f"network {ref} not found", hint="list networks with `pybuild network ls`")
        self.ref = ref


class NetworkInUse(NetworkError):
    exit_code: ClassVar[int] = 1

    def __init__(self, name: str, users: Sequence[str]) -> None:
        super().__init__(f"network {name} has active endpoints: "
                         + ", ".join(u[:12] for u in users),
                         hint="remove or stop those containers first")
        self.name, self.users = name, list(users)


class PortInUse(NetworkError):
    def __init__(self, port: PortMapping, why: str) -> None:
        where = f"{port.host_ip or '0.0.0.0'}:{port.host_port}/{port.proto}"  # noqa: S104
        super().__init__(f"cannot publish {where}: {why}",
                         hint="choose another host port")
        self.port = port


# -- small helpers --------------------------------------------------------------------------------

def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
         what: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False,
                              timeout=30)
    except FileNotFoundError:
        raise NetworkError(f"{what or argv[0]}: {argv[0]} is not installed",
                           hint="install iproute2, util-linux and nftables (or iptables)") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetworkError(f"{what or ' '.join(argv[:3])}: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc


def _sysctl(path: str, value: str) -> None:
    p = Path("/proc/sys") / path
    try:
        if p.read_text().strip() != value:
            p.write_text(value + "\n")
    except OSError as exc:
        raise NetworkError(f"sysctl {path.replace('/', '.')}={value}: {exc.strerror}") from None


_WHICH: dict[str, str | None] = {}


def _which(tool: str) -> str | None:
    """shutil.which, asked once per process."""
    if tool not in _WHICH:
        import shutil

        _WHICH[tool] = shutil.which(tool)
    return _WHICH[tool]


def netns_path(netns: str | int | os.PathLike[str]) -> str:
    """A network namespace given as a pid (the namespace of that process) or a path."""
    if isinstance(netns, int):
        return f"/proc/{netns}/ns/net"
    return os.fspath(netns)


@contextlib.contextmanager
def _kernel(what: str, hint: str | None = None) -> Iterator[None]:
    """Netlink failures as NetworkError("<what>: <why>")."""
    try:
        yield
    except netlink.NetlinkError as exc:
        raise NetworkError(f"{what}: {exc}", hint=hint) from None
    except OSError as exc:
        raise NetworkError(f"{what}: {exc.strerror or exc}", hint=hint) from None


@contextlib.contextmanager
def _rtnl(netns: str | None = None) -> Iterator[netlink.Netlink]:
    """A rtnetlink socket of this process's network namespace, or of the one at path ``netns``."""
    if netns is None:
        with netlink.Netlink() as nl:
            yield nl
        return
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netlink.Netlink(fd) as nl:
            yield nl
    finally:
        os.close(fd)


def link_exists(name: str, *, netns: str | None = None) -> bool:
    with _kernel(f"look up interface {name}"), _rtnl(netns) as nl:
        return nl.link(name) is not None


def link_alias(name: str) -> str | None:
    """The alias of interface ``name`` ("" if it has none), None if there is no such interface."""
    with _kernel(f"look up interface {name}"), _rtnl() as nl:
        link = nl.link(name)
    return None if link is None else link.alias


def host_links(prefix: str = "") -> list[str]:
    """Interface names in the host namespace (optionally only those starting with ``prefix``)."""
    with _kernel("list interfaces"), _rtnl() as nl:
        return sorted(link.name for link in nl.links() if link.name.startswith(prefix))


def _host_prefixes(ignore_dev: str | None = None,
                   nl: netlink.Netlink | None = None) -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix the host routes (main table, as ``ip -4 route`` lists it) or owns
    (every address, as ``ip -4 addr``), the default route and ``ignore_dev``'s own excepted."""
    if nl is None:
        with _kernel("list routes"), _rtnl() as own:
            return _host_prefixes(ignore_dev, own)
    with _kernel("list routes"):
        dev = nl.link(ignore_dev) if ignore_dev else None
        skip = dev.index if dev is not None else -1
        nets = [r.network for r in nl.routes() if r.network is not None and r.oif != skip]
        nets += [a.network for a in nl.addresses() if a.local and a.index != skip]
    return nets


def _candidate_subnets() -> Iterator[ipaddress.IPv4Network]:
    for second in range(88, 128):
        yield ipaddress.IPv4Network(f"10.{second}.0.0/16")
    for second in range(17, 32):
        yield ipaddress.IPv4Network(f"172.{second}.0.0/16")
    for third in range(0, 256):
        yield ipaddress.IPv4Network(f"192.168.{third}.0/24")


def _mac_for(ip: str) -> str:
    """A locally administered MAC derived from the IPv4 address (docker's 02:42:... habit)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    base = Path(os.environ.get("PYBUILD_RUN_DIR") or "/run/pybuild")
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    with flocked(base / "network.lock"):
        yield


# -- data -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Network:
    """A bridge network's record (network.json)."""

    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    firewall: str                        # "nft" | "iptables"
    created: str
    driver: str = "bridge"
    internal: bool = False               # no NAT to the outside
    dns: bool = True                     # containers resolve each other by name (user networks)
    labels: Mapping[str, str] = field(default_factory=dict)
    fixed_subnet: bool = False           # --subnet given: never moved to another subnet
    fixed_bridge: bool = False           # bridge name given: never renamed

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = dict(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Network:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Endpoint:
    """A container's attachment to a network."""

    container_id: str
    name: str
    ip: str
    mac: str
    host_veth: str
    netns: str = ""
    aliases: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    hosts_file: str = ""
    hostname: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Endpoint:
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        kw["aliases"] = tuple(kw.get("aliases", ()))
        kw["ports"] = tuple(PortMapping(**p) for p in kw.get("ports", ()))
        return cls(**kw)

    def settings(self, net: Network) -> dict[str, Any]:
        """Docker-shaped ``NetworkSettings.Networks[<name>]`` entry."""
        return {"NetworkID": net.id, "EndpointID": self.host_veth, "Gateway": net.gateway,
                "IPAddress": self.ip, "IPPrefixLen": net.prefix_len, "MacAddress": self.mac,
                "Aliases": list(self.aliases) or None}


# -- -p parsing -----------------------------------------------------------------------------------

def _port_range(text: str, what: str) -> list[int]:
    lo, _, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise NetworkError(f"invalid {what} {text!r} in --publish") from None
    if not (0 <= a <= 65535 and 0 <= b <= 65535 and a <= b):
        raise NetworkError(f"invalid {what} {text!r} in --publish: want 1-65535")
    return list(range(a, b + 1))


def parse_publish(spec: str) -> list[PortMapping]:
    """``[IP:][HOST[-HOST]:]CTR[-CTR][/tcp|udp]`` -> mappings (host port 0 = pick a free one)."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise NetworkError(f"invalid protocol {proto!r} in --publish {spec!r}: want tcp or udp")
    host_ip = ""
    if body.startswith("["):
        raise NetworkError(f"--publish {spec!r}: IPv6 host addresses are not supported")
    parts = body.split(":")
    if len(parts) == 3:
        host_ip, host, ctr = parts
    elif len(parts) == 2:
        host, ctr = parts
    elif len(parts) == 1:
        host, ctr = "", parts[0]
    else:
        raise NetworkError(f"invalid --publish {spec!r}: want [IP:]HOST:CTR[/udp]")
    if host_ip:
        try:
            ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise NetworkError(f"invalid host address {host_ip!r} in --publish {spec!r}") from None
    cports = _port_range(ctr, "container port")
    hports = _port_range(host, "host port") if host else [0] * len(cports)
    if len(hports) != len(cports):
        raise NetworkError(f"invalid --publish {spec!r}: host and container ranges differ in size")
    return [PortMapping(container_port=c, host_port=h, proto=proto, host_ip=host_ip)
            for h, c in zip(hports, cports, strict=True)]


def _probe_bind(p: PortMapping) -> None:
    """Refuse a host port a real listener already has; pick one when host_port is 0."""
    import socket

    kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((p.host_ip or "0.0.0.0", p.host_port))  # noqa: S104 - probing, not serving
        except OSError as exc:
            raise PortInUse(p, exc.strerror or "address in use") from None


def _free_port(p: PortMapping) -> PortMapping:
    import socket

    kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((p.host_ip or "0.0.0.0", 0))  # noqa: S104
        return replace(p, host_port=int(s.getsockname()[1]))


# -- firewall backends ----------------------------------------------------------------------------

class Firewall(Protocol):
    name: str

    def add_network(self, net: Network) -> None: ...
    def remove_network(self, net: Network) -> None: ...
    def add_ports(self, net: Network, ep: Endpoint) -> None: ...
    def remove_ports(self, container_id: str) -> None: ...
    def add(self, net: Network, *, network: bool, endpoint: Endpoint | None) -> None: ...
    def remove(self, net: Network | None, container_ids: Sequence[str]) -> None: ...
    def owned(self) -> list[str]: ...


_FORWARD_POLICY: tuple[float, bool] | None = None      # (when asked, FORWARD policy is DROP)
FORWARD_POLICY_TTL = 60.0


def _forward_probe() -> Callable[[], bool]:
    """Start asking iptables whether its FORWARD policy is DROP (docker sets that); the returned
    function waits for the answer. Runs alongside the nft exec; answers are kept for a minute
    per process (attach and detach both ask)."""
    global _FORWARD_POLICY
    now = time.monotonic()
    cached = _FORWARD_POLICY
    if cached is not None and now - cached[0] < FORWARD_POLICY_TTL:
        return lambda: cached[1]
    exe = _which("iptables")
    if exe is None:
        return lambda: False
    try:
        proc = subprocess.Popen([exe, "-w", "5", "-t", "filter", "-S", "FORWARD"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return lambda: False

    def answer() -> bool:
        global _FORWARD_POLICY
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
        drops = out.startswith("-P FORWARD DROP")
        _FORWARD_POLICY = (now, drops)
        return drops

    return answer


def _drop_tables(tables: Sequence[str]) -> None:
    """Delete nft tables (family ip) in one transaction; a missing table is not an error."""
    if tables:
        _run(["nft", "-f", "-"], input="".join(f"add table ip {t}\ndelete table ip {t}\n" for t in tables),
             check=False)


class NftFirewall:
    """One nft table per network (masquerade) and one per container with published ports
    (DNAT + hairpin); teardown deletes the table, so nothing of ours survives it."""

    name = "nft"

    @staticmethod
    def _apply(script: str, what: str) -> None:
        """Run a script of table definitions, each made idempotent by a preamble: ``add table``
        + ``flush table`` (a new table costs ~3 ms; ``delete table`` in the same transaction
        would cost ~12 ms more: a deletion waits for an RCU grace period in the kernel). If
        that fails (a leftover table whose chains do not match), each table is deleted and
        defined again, as one transaction too."""
        tables = re.findall(r"^table ip (\S+) \{", script, flags=re.M)
        flush = "".join(f"add table ip {t}\nflush table ip {t}\n" for t in tables)
        proc = _run(["nft", "-f", "-"], input=flush + script, check=False, what=what)
        if proc.returncode != 0:
            recreate = "".join(f"add table ip {t}\ndelete table ip {t}\n" for t in tables)
            _run(["nft", "-f", "-"], input=recreate + script, what=what)

    @staticmethod
    def _network_script(net: Network) -> str:
        t = f"pybuild_n_{net.short_id}"
        rules = [f'oifname "{net.bridge}" ip saddr 127.0.0.0/8 masquerade']
        if not net.internal:
            rules.append(f'ip saddr {net.subnet} oifname != "{net.bridge}" masquerade')
        body = "\n    ".join(rules)
        return (f"table ip {t} {{\n  chain postrouting {{\n"
                f"    type nat hook postrouting priority srcnat; policy accept;\n    {body}\n  }}\n}}\n")

    def add_network(self, net: Network) -> None:
        self.add(net, network=True, endpoint=None)

    def add(self, net: Network, *, network: bool, endpoint: Endpoint | None) -> None:
        """The network's table (``network``) and ``endpoint``'s published ports, in one nft
        transaction (one exec)."""
        ports = endpoint is not None and bool(endpoint.ports)
        if not network and not ports:
            return
        forward_drops = _forward_probe() if network else None      # asked while nft runs
        script = self._network_script(net) if network else ""
        if endpoint is not None and ports:
            script += self._ports_script(endpoint)
        what = f"nft: add rules for network {net.name}" if network else \
            f"nft: publish ports of {endpoint.name if endpoint else ''}"
        self._apply(script, what)
        # an accept in our own table cannot undo a drop in another one: on hosts whose iptables
        # FORWARD policy is DROP (docker installed), the bridge's traffic is accepted there too
        if forward_drops is not None and forward_drops():
            IptablesFirewall().accept_forward(net)

    def remove_network(self, net: Network) -> None:
        self.remove(net, ())

    def remove(self, net: Network | None, container_ids: Sequence[str]) -> None:
        """The port tables of ``container_ids`` and (with ``net``) the network's table, in one
        nft transaction; then the FORWARD accepts an iptables DROP policy needed, if any."""
        tables = [f"pybuild_c_{cid[:12]}" for cid in container_ids]
        if net is not None:
            tables.append(f"pybuild_n_{net.short_id}")
        _drop_tables(tables)
        if net is not None and _which("iptables"):
            IptablesFirewall().remove_forward(net)

    def add_ports(self, net: Network, ep: Endpoint) -> None:
        self.add(net, network=False, endpoint=ep)

    @staticmethod
    def _ports_script(ep: Endpoint) -> str:
        t = f"pybuild_c_{ep.container_id[:12]}"
        dnat, hair = [], []
        for p in ep.ports:
            match = f"ip daddr {p.host_ip}" if p.host_ip else "fib daddr type local"
            dnat.append(f"{match} {p.proto} dport {p.host_port} dnat to {ep.ip}:{p.container_port}")
            hair.append(f"ip saddr {ep.ip} ip daddr {ep.ip} {p.proto} dport {p.container_port} masquerade")
        d = "\n    ".join(dnat)
        h = "\n    ".join(hair)
        return (f"table ip {t} {{\n"
                f"  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n"
                f"    {d}\n  }}\n"
                f"  chain output {{\n    type nat hook output priority -100; policy accept;\n"
                f"    {d}\n  }}\n"
                f"  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n"
                f"    {h}\n  }}\n}}\n")

    def remove_ports(self, container_id: str) -> None:
        _drop_tables([f"pybuild_c_{container_id[:12]}"])

    def owned(self) -> list[str]:
        out = _run(["nft", "list", "tables"], check=False).stdout
        return sorted(line.strip() for line in out.splitlines() if " pybuild_" in line)


class IptablesFirewall:
    """Rules tagged with an ``-m comment`` owner; teardown deletes every rule with that tag
    (found by listing), so rules added by an interrupted run are removed too."""

    name = "iptables"

    def __init__(self, binary: str = "iptables") -> None:
        self.bin = binary

    def _ipt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([self.bin, "-w", "5", *args], check=check, what=f"{self.bin} {' '.join(args[:4])}")

    def _append_once(self, table: str, chain: str, rule: list[str], *, insert: bool = False) -> None:
        if self._ipt("-t", table, "-C", chain, *rule, check=False).returncode != 0:
            self._ipt("-t", table, "-I" if insert else "-A", chain, *rule)

    def _remove_tagged(self, *tags: str) -> None:
        import shlex

        for table in ("nat", "filter"):
            listing = self._ipt("-t", table, "-S", check=False).stdout
            for line in listing.splitlines():
                args = shlex.split(line)
                if len(args) > 2 and args[0] == "-A" and any(tag in args for tag in tags):
                    self._ipt("-t", table, "-D", *args[1:], check=False)

    def accept_forward(self, net: Network) -> None:
        tag = ["-m", "comment", "--comment", f"pybuild:n:{net.short_id}"]
        self._append_once("filter", "FORWARD", ["-i", net.bridge, *tag, "-j", "ACCEPT"], insert=True)
        self._append_once("filter", "FORWARD", ["-o", net.bridge, *tag, "-j", "ACCEPT"], insert=True)

    def remove_forward(self, net: Network) -> None:
        import shlex

        tag = f"pybuild:n:{net.short_id}"
        listing = self._ipt("-t", "filter", "-S", "FORWARD", check=False).stdout
        for line in listing.splitlines():
            args = shlex.split(line)
            if len(args) > 2 and args[0] == "-A" and tag in args:
                self._ipt("-t", "filter", "-D", *args[1:], check=False)

    def add_network(self, net: Network) -> None:
        tag = ["-m", "comment", "--comment", f"pybuild:n:{net.short_id}"]
        self._append_once("nat", "POSTROUTING",
                          ["-s", "127.0.0.0/8", "-o", net.bridge, *tag, "-j", "MASQUERADE"])
        if not net.internal:
            self._append_once("nat", "POSTROUTING",
                              ["-s", net.subnet, "!", "-o", net.bridge, *tag, "-j", "MASQUERADE"])
        self._append_once("filter", "FORWARD", ["-i", net.bridge, *tag, "-j", "ACCEPT"], insert=True)
        self._append_once("filter", "FORWARD", ["-o", net.bridge, *tag, "-j", "ACCEPT"], insert=True)

    def remove_network(self, net: Network) -> None:
        self._remove_tagged(f"pybuild:n:{net.short_id}")

    def add(self, net: Network, *, network: bool, endpoint: Endpoint | None) -> None:
        if network:
            self.add_network(net)
        if endpoint is not None:
            self.add_ports(net, endpoint)

    def add_ports(self, net: Network, ep: Endpoint) -> None:
        if not ep.ports:
            return
        cid = ep.container_id[:12]
        chain = f"PYBUILD-{cid}"
        tag = ["-m", "comment", "--comment", f"pybuild:c:{cid}"]
        if self._ipt("-t", "nat", "-N", chain, check=False).returncode != 0:
            self._ipt("-t", "nat", "-F", chain)
        for p in ep.ports:
            dst = ["-d", p.host_ip] if p.host_ip else []
            self._ipt("-t", "nat", "-A", chain, *dst, "-p", p.proto, "--dport", str(p.host_port), *tag,
                      "-j", "DNAT", "--to-destination", f"{ep.ip}:{p.container_port}")
            self._append_once("nat", "POSTROUTING", ["-s", ep.ip, "-d", ep.ip, "-p", p.proto, "--dport",
                                                     str(p.container_port), *tag, "-j", "MASQUERADE"])
        for hook in ("PREROUTING", "OUTPUT"):
            self._append_once("nat", hook, ["-m", "addrtype", "--dst-type", "LOCAL", *tag, "-j", chain])

    def remove_ports(self, container_id: str) -> None:
        self.remove(None, (container_id,))

    def remove(self, net: Network | None, container_ids: Sequence[str]) -> None:
        tags = [f"pybuild:c:{cid[:12]}" for cid in container_ids]
        if net is not None:
            tags.append(f"pybuild:n:{net.short_id}")
        if tags:
            self._remove_tagged(*tags)
        for cid in container_ids:
            chain = f"PYBUILD-{cid[:12]}"
            if self._ipt("-t", "nat", "-F", chain, check=False).returncode == 0:
                self._ipt("-t", "nat", "-X", chain, check=False)

    def owned(self) -> list[str]:
        out: list[str] = []
        for table in ("nat", "filter"):
            listing = self._ipt("-t", table, "-S", check=False).stdout
            out += [f"{table}: {line}" for line in listing.splitlines() if "pybuild" in line.lower()]
        return out


_PROBED: list[str] = []          # the backend that works here, once probed (per process)


def firewall_backend(name: str | None = None) -> Firewall:
    """The firewall to use: ``name`` or $PYBUILD_FIREWALL if given, else nft when it works here,
    else iptables (probed once per process)."""
    name = name or os.environ.get("PYBUILD_FIREWALL") or ""
    if name == "nft":
        return NftFirewall()
    if name in ("iptables", "iptables-legacy", "iptables-nft"):
        return IptablesFirewall(name)
    if name:
        raise NetworkError(f"unknown firewall backend {name!r}: want nft or iptables")
    if not _PROBED:
        if _which("nft") and _run(["nft", "list", "tables"], check=False).returncode == 0:
            _PROBED.append("nft")
        elif _which("iptables") and _run(["iptables", "-w", "5", "-t", "nat", "-S"],
                                         check=False).returncode == 0:
            _PROBED.append("iptables")
        else:
            raise NetworkError("bridge networking: neither nft nor iptables works here",
                               hint="install nftables or iptables, or use --network host|none")
    return firewall_backend(_PROBED[0])


# -- /etc/hosts for name resolution ---------------------------------------------------------------

def _rewrite_hosts(path: Path, lines: Sequence[str], *, own_name: str = "") -> None:
    """Replace pybuild's block in a container's hosts file *in place* (the file is bind-mounted
    at /etc/hosts, so its inode must not change); the rest of the file is kept, except a
    loopback line for ``own_name`` (the block then maps it to the container's address)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # the container is gone; nothing to update
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        text = f.read()
        kept: list[str] = []
        skipping = False
        for line in text.splitlines():
            if line == HOSTS_BEGIN:
                skipping = True
            elif line == HOSTS_END:
                skipping = False
            elif not skipping:
                words = line.split()
                if own_name and len(words) == 2 and words[1] == own_name and words[0].startswith("127."):
                    continue
                kept.append(line)
        block = [HOSTS_BEGIN, *lines, HOSTS_END] if lines else []
        if not lines and own_name:
            kept.append(f"127.0.0.1\t{own_name}")   # what a container without a network has
        new = "\n".join(kept + block) + "\n"
        if new != text:
            f.seek(0)
            f.write(new)
            f.truncate()


# -- the network store ----------------------------------------------------------------------------

class NetworkStore:
    """Networks of one pybuild root and the endpoints of its containers on them."""

    def __init__(self, root: Path, *, firewall: str | None = None,
                 default_bridge: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._firewall_name = firewall
        self.default_bridge = default_bridge or os.environ.get("PYBUILD_BRIDGE") or "pybuild0"

    # -- lookup
    def _dir(self, net: Network) -> Path:
        return self.root / net.id

    def list_all(self) -> list[Network]:
        out = []
        for d in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            f = d / "network.json"
            if f.is_file():
                out.append(Network.from_dict(json.loads(f.read_bytes())))
        out.sort(key=lambda n: n.created)
        return out

    def find(self, ref: str) -> Network | None:
        nets = self.list_all()
        for n in nets:
            if ref in (n.name, n.id):
                return n
        matches = [n for n in nets if re.fullmatch(r"[0-9a-f]+", ref) and n.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def get(self, ref: str) -> Network:
        net = self.find(ref)
        if net is None:
            if ref == DEFAULT_NETWORK:
                return self.ensure_default()
            raise NetworkNotFound(ref)
        return net

    # -- create / remove
    def create(self, name: str, *, subnet: str | None = None, gateway: str | None = None,
               internal: bool = False, labels: Mapping[str, str] | None = None,
               bridge: str | None = None, dns: bool = True, exist_ok: bool = False) -> Network:
        """Create a user-defined bridge network (state only: the bridge, its address and its
        NAT rules come up with the first container and go with the last)."""
        if not NAME_RE.match(name) or len(name) > 64:
            raise NetworkError(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] allowed")
        if name in PREDEFINED:
            raise NetworkError(f"network name {name!r} is reserved for the predefined network")
        if os.geteuid() != 0:
            raise NetworkError("network create: bridge networks need root",
                               hint="rootless containers use slirp4netns (the default network), "
                                    "or --network host|none")
        if bridge is not None and (len(bridge) > IFNAME_MAX or not re.fullmatch(r"[a-zA-Z0-9_.-]+", bridge)):
            raise NetworkError(f"invalid bridge name {bridge!r}: at most {IFNAME_MAX} of [a-zA-Z0-9_.-]")
        with _host_lock():
            return self._create(name, subnet=subnet, gateway=gateway, internal=internal,
                                labels=labels, bridge=bridge, dns=dns, exist_ok=exist_ok)

    def _create(self, name: str, *, subnet: str | None = None, gateway: str | None = None,
                internal: bool = False, labels: Mapping[str, str] | None = None,
                bridge: str | None = None, dns: bool = True, exist_ok: bool = False,
                fixed_bridge: bool | None = None) -> Network:
        with flocked(self.root / "lock"):
            existing = self.find(name)
            if existing is not None:
                if exist_ok:
                    return existing
                raise NetworkError(f"network with name {name} already exists")
            nid = os.urandom(32).hex()
            fw = firewall_backend(self._firewall_name)
            net_subnet, gw = self._pick_subnet(subnet, gateway)
            net = Network(id=nid, name=name, bridge=bridge or f"pb-{nid[:12]}", subnet=str(net_subnet),
                          gateway=gw, firewall=fw.name, created=rfc3339_nano(), internal=internal,
                          dns=dns, labels=dict(labels or {}), fixed_subnet=subnet is not None,
                          fixed_bridge=bridge is not None if fixed_bridge is None else fixed_bridge)
            d = self.root / nid
            d.mkdir()
            atomic_write(d / "endpoints.json", b"{}")
            self._save(net)
            return net

    def _save(self, net: Network) -> None:
        atomic_write(self._dir(net) / "network.json", json.dumps(net.to_dict(), indent=1).encode())

    def ensure_default(self) -> Network:
        """The predefined ``bridge`` network (no name resolution, as docker). Its bridge is
        $PYBUILD_BRIDGE or ``pybuild0`` (``pybuild1``... when another store holds that name)."""
        net = self.find(DEFAULT_NETWORK)
        if net is not None:
            return net
        with _host_lock():
            return self._create(DEFAULT_NETWORK, bridge=self.default_bridge, dns=False, exist_ok=True,
                                fixed_bridge=False)

    def _pick_subnet(self, subnet: str | None, gateway: str | None, *,
                     exclude: Network | None = None,
                     nl: netlink.Netlink | None = None) -> tuple[ipaddress.IPv4Network, str]:
        taken = [ipaddress.IPv4Network(n.subnet) for n in self.list_all()
                 if exclude is None or n.id != exclude.id]
        if subnet:
            try:
                want = ipaddress.IPv4Network(subnet, strict=True)
            except ValueError as exc:
                raise NetworkError(f"invalid subnet {subnet!r}: {exc}") from None
            if want.prefixlen > 30:
                raise NetworkError(f"subnet {subnet} is too small: want /30 or larger")
            for t in taken:
                if want.overlaps(t):
                    raise NetworkError(f"subnet {subnet} overlaps network subnet {t}")
            chosen = want
        else:
            busy = taken + _host_prefixes(exclude.bridge if exclude is not None else None, nl)
            for cand in _candidate_subnets():
                if not any(cand.overlaps(b) for b in busy):
                    chosen = cand
                    break
            else:
                raise NetworkError("no free private subnet left", hint="give one with --subnet")
        if gateway:
            try:
                gw_addr = ipaddress.IPv4Address(gateway)
            except ValueError:
                raise NetworkError(f"invalid gateway {gateway!r}") from None
            if gw_addr not in chosen:
                raise NetworkError(f"gateway {gateway} is not in subnet {chosen}")
            gw = gateway
        else:
            gw = str(next(chosen.hosts()))
        return chosen, gw

    def remove(self, ref: str, *, force: bool = False) -> Network:
        """Remove a network: its bridge, its rules and its state. Refused while in use."""
        if ref in ("host", "none"):
            raise NetworkError(f"{ref} is a predefined network and cannot be removed")
        net = self.find(ref)
        if net is None:
            raise NetworkNotFound(ref)
        with flocked(self._dir(net) / "lock"):
            self._finish_teardown(net)
            eps = self._load_endpoints(net)
            live = {cid: ep for cid, ep in eps.items() if self._endpoint_alive(ep)}
            if live and not force:
                raise NetworkInUse(net.name, sorted(live))
            for ep in eps.values():
                self._teardown_endpoint(net, ep)
            self.teardown(net)
            import shutil

            shutil.rmtree(self._dir(net), ignore_errors=True)
        return net

    def prune(self) -> list[Network]:
        """Remove every user-defined network without endpoints."""
        removed = []
        for net in self.list_all():
            if net.name == DEFAULT_NETWORK:
                continue
            try:
                removed.append(self.remove(net.id))
            except NetworkInUse:
                continue
        return removed

    # -- bring up / tear down the bridge
    def _fw(self, net: Network) -> Firewall:
        return firewall_backend(net.firewall)

    def is_up(self, net: Network) -> bool:
        return link_alias(net.bridge) == f"pybuild:{net.id}"

    def ensure_up(self, net: Network, *, firewall: bool = True) -> Network:
        """Bridge, gateway address, sysctls and NAT rules, idempotently. When the bridge is not
        up yet, its name and subnet are re-checked against the host first (another store may
        have taken them meanwhile) and moved when the user did not fix them. ``firewall=False``
        skips re-applying the network's rules when the bridge was up already (they came up
        with it). Returns the network as brought up (its name/subnet may have changed)."""
        net, rules_due = self._bring_up(net)
        if rules_due or firewall:
            self._fw(net).add_network(net)
        return net

    def _bring_up(self, net: Network) -> tuple[Network, bool]:
        """ensure_up without the firewall: the network (maybe moved) and whether the bridge
        was created now (its rules are then due)."""
        ours = f"pybuild:{net.id}"
        with _host_lock(), _kernel(f"bring up network {net.name}"), _rtnl() as nl:
            link = nl.link(net.bridge)
            if link is None or link.alias != ours:
                net = self._claim(net, None if link is None else link.alias, nl)
                link = nl.link(net.bridge)
            created = link is None
            if link is None:
                nl.create_bridge(net.bridge, up=True)
                link = nl.link(net.bridge)
                if link is None:
                    raise NetworkError(f"bring up network {net.name}: bridge {net.bridge} vanished")
                nl.set_link(link.index, alias=ours)
            if created or not any(a.local == net.gateway and a.prefixlen == net.prefix_len
                                  for a in nl.addresses(link.index)):
                nl.add_address(link.index, net.gateway, net.prefix_len)
            if not link.up:
                nl.set_link(link.index, up=True)
        _sysctl("net/ipv4/ip_forward", "1")
        _sysctl(f"net/ipv4/conf/{net.bridge}/route_localnet", "1")
        return net, created

    def _claim(self, net: Network, alias: str | None, nl: netlink.Netlink) -> Network:
        """Make sure a not-yet-up network can come up: a free bridge name, a free subnet."""
        changed = False
        if alias is not None:                       # the name is someone else's interface
            if net.fixed_bridge:
                raise NetworkError(f"network {net.name}: interface {net.bridge} already exists and "
                                   "belongs to something else", hint="remove it, or use another bridge name")
            base = re.sub(r"\d+$", "", net.bridge) or "pybuild"
            for n in range(1, 256):
                name = f"{base}{n}"[:IFNAME_MAX]
                if nl.link(name) is None:
                    net = replace(net, bridge=name)
                    changed = True
                    break
            else:
                raise NetworkError(f"network {net.name}: no free bridge name",
                                   hint="set PYBUILD_BRIDGE to an unused interface name")
        subnet = ipaddress.IPv4Network(net.subnet)
        if any(subnet.overlaps(p) for p in _host_prefixes(net.bridge, nl)):
            if net.fixed_subnet:
                raise NetworkError(f"network {net.name}: subnet {net.subnet} is now used on this host",
                                   hint="remove the other user of the subnet, or re-create the network")
            if self._load_endpoints(net):
                raise NetworkError(f"network {net.name}: subnet {net.subnet} collides with a host route")
            chosen, gw = self._pick_subnet(None, None, exclude=net, nl=nl)
            net = replace(net, subnet=str(chosen), gateway=gw)
            changed = True
        if changed:
            self._save(net)
        return net

    def teardown(self, net: Network, *, container_ids: Sequence[str] = ()) -> None:
        """Remove the network's rules (and the port rules of ``container_ids``, in the same
        firewall transaction) and its bridge, with the bridge's address and routes."""
        self._fw(net).remove(net, container_ids)
        with _kernel(f"remove bridge {net.bridge}"), _rtnl() as nl:
            link = nl.link(net.bridge)
            if link is not None and link.alias == f"pybuild:{net.id}":
                nl.delete_link(index=link.index)

    # -- endpoints
    def _load_endpoints(self, net: Network) -> dict[str, Endpoint]:
        try:
            raw = json.loads((self._dir(net) / "endpoints.json").read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}       # torn by a power loss (not fsynced): every endpoint died with the host
        return {cid: Endpoint.from_dict(e) for cid, e in raw.items()}

    def _save_endpoints(self, net: Network, eps: Mapping[str, Endpoint]) -> None:
        # not fsynced: endpoints are runtime state (after a power loss every one of them is gone)
        write_atomic(self._dir(net) / "endpoints.json",
                     json.dumps({k: v.to_dict() for k, v in eps.items()}, indent=1).encode(), durable=False)

    def endpoints(self, net: Network) -> list[Endpoint]:
        return list(self._load_endpoints(net).values())

    @staticmethod
    def _endpoint_alive(ep: Endpoint) -> bool:
        return bool(ep.netns) and Path(ep.netns).exists() and link_exists(ep.host_veth)

    def _all_ports(self) -> list[tuple[str, PortMapping]]:
        out = []
        for net in self.list_all():
            for ep in self._load_endpoints(net).values():
                out += [(ep.container_id, p) for p in ep.ports]
        return out

    def _check_ports(self, cid: str, ports: Sequence[PortMapping]) -> tuple[PortMapping, ...]:
        if not ports:
            return ()
        taken = [(c, p) for c, p in self._all_ports() if c != cid]
        chosen: list[PortMapping] = []
        for p in ports:
            q = _free_port(p) if p.host_port == 0 else p
            for owner, other in [*taken, *(("", c) for c in chosen)]:
                if (other.proto == q.proto and other.host_port == q.host_port
                        and (not other.host_ip or not q.host_ip or other.host_ip == q.host_ip)):
                    why = f"already published by container {owner[:12]}" if owner else "given twice"
                    raise PortInUse(q, why)
            _probe_bind(q)
            chosen.append(q)
        return tuple(chosen)

    def connect(self, ref: str, container_id: str, netns: str | int | os.PathLike[str], *,
                name: str = "", aliases: Iterable[str] = (), ports: Sequence[PortMapping] = (),
                hosts_file: str | os.PathLike[str] | None = None, hostname: str = "",
                ifname: str = "eth0") -> Endpoint:
        """Attach the network namespace ``netns`` (a pid or a path) to network ``ref``: a veth pair
        (``ifname`` inside, ``pbv<id12>`` on the bridge), an address, the default route, the
        published ports, and hosts entries for the peers. Undone by :meth:`disconnect`."""
        net = self.get(ref)
        path = netns_path(netns)
        try:
            ns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise NetworkError(f"connect {container_id[:12]} to {net.name}: no network namespace at {path}"
                               ) from None
        try:
            return self._connect(net, container_id, ns_fd, path, name=name, aliases=aliases, ports=ports,
                                 hosts_file=hosts_file, hostname=hostname, ifname=ifname)
        finally:
            os.close(ns_fd)

    def _connect(self, net: Network, container_id: str, ns_fd: int, path: str, *, name: str,
                 aliases: Iterable[str], ports: Sequence[PortMapping],
                 hosts_file: str | os.PathLike[str] | None, hostname: str, ifname: str) -> Endpoint:
        host_veth = f"pbv{container_id[:12]}"
        with flocked(self._dir(net) / "lock"):
            self._finish_teardown(net)
            net = self.find(net.id) or net
            eps = self._load_endpoints(net)
            old = eps.pop(container_id, None)
            if old is not None:
                self._teardown_endpoint(net, old)
            net, created = self._bring_up(net)
            rules_due = created or not eps      # the network's rules come up with its first endpoint
            try:
                ports_ok = self._check_ports(container_id, ports)
            except BaseException:
                if not eps:
                    self.teardown(net)
                raise
            ip = self._allocate(net, eps)
            ep = Endpoint(container_id=container_id, name=name or container_id[:12], ip=ip,
                          mac=_mac_for(ip), host_veth=host_veth, netns=path,
                          aliases=tuple(dict.fromkeys(aliases)), ports=ports_ok,
                          hosts_file=os.fspath(hosts_file) if hosts_file else "", hostname=hostname)
            eps[container_id] = ep
            self._save_endpoints(net, eps)   # the address is reserved before any kernel object
            try:
                self._plumb(net, ep, ns_fd, ifname)
                self._fw(net).add(net, network=rules_due, endpoint=ep)      # one nft exec at most
            except BaseException:
                self._teardown_endpoint(net, ep)
                eps.pop(container_id, None)
                self._save_endpoints(net, eps)
                if not eps:
                    self.teardown(net)
                raise
            self._refresh_hosts(net, eps)
            return ep

    def _allocate(self, net: Network, eps: Mapping[str, Endpoint]) -> str:
        used = {ep.ip for ep in eps.values()} | {net.gateway}
        for host in ipaddress.IPv4Network(net.subnet).hosts():
            if str(host) not in used:
                return str(host)
        raise NetworkError(f"network {net.name}: no free address left in {net.subnet}")

    @staticmethod
    def _plumb(net: Network, ep: Endpoint, ns_fd: int, ifname: str) -> None:
        """The veth pair, by rtnetlink: the container's end is created directly inside its
        namespace (it never appears on the host), the host's end on the bridge; then, through
        a socket of the container's namespace: lo and ``ifname`` up, the address, the route."""
        with _kernel(f"create veth for {ep.name}"), _rtnl() as nl:
            bridge = nl.link(net.bridge)
            if bridge is None:
                raise NetworkError(f"create veth for {ep.name}: bridge {net.bridge} is gone")
            for attempt in (1, 2):
                try:
                    nl.create_veth(ep.host_veth, ifname, peer_netns_fd=ns_fd, peer_mac=ep.mac,
                                   master=bridge.index, up=True)
                    break
                except netlink.NetlinkError as exc:
                    if exc.errno != errno.EEXIST or attempt == 2:
                        raise
                    nl.delete_link(name=ep.host_veth)      # left by a run that died
            veth = nl.link(ep.host_veth)
            if veth is None:
                raise NetworkError(f"create veth for {ep.name}: {ep.host_veth} vanished")
            nl.set_hairpin(veth.index, True)
        with _kernel(f"configure {ifname} of {ep.name}"), netlink.Netlink(ns_fd) as inner:
            inner.set_link(netlink.LOOPBACK_IFINDEX, up=True)
            dev = inner.link(ifname)
            if dev is None:
                raise NetworkError(f"configure {ifname} of {ep.name}: no {ifname} in the namespace")
            inner.set_link(dev.index, up=True)
            inner.add_address(dev.index, ep.ip, net.prefix_len)
            inner.add_default_route(net.gateway, oif=dev.index)

    def _teardown_endpoint(self, net: Network, ep: Endpoint) -> None:
        if ep.ports:
            self._fw(net).remove_ports(ep.container_id)
        with _kernel(f"remove {ep.host_veth}"), _rtnl() as nl:
            nl.delete_link(name=ep.host_veth)
        if ep.hosts_file:
            _rewrite_hosts(Path(ep.hosts_file), [], own_name=ep.hostname)

    # -- detaching, possibly in the background
    def _pending_path(self, net: Network) -> Path:
        return self._dir(net) / "teardown.json"

    def _finish_teardown(self, net: Network) -> None:
        """Under the network lock: finish a teardown that a detached child recorded but did not
        complete (it was killed). Nothing to do in the usual case (one stat)."""
        path = self._pending_path(net)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        try:
            doc = json.loads(raw)
            eps = [Endpoint.from_dict(e) for e in doc.get("endpoints", ())]
            whole = bool(doc.get("network"))
        except (ValueError, TypeError, AttributeError):
            eps, whole = [], True
        self._kernel_teardown(net, eps, whole and not self._load_endpoints(net))
        path.unlink(missing_ok=True)

    def _kernel_teardown(self, net: Network, eps: Sequence[Endpoint], whole: bool) -> None:
        """The kernel side of detaching ``eps``: their port rules and veths; with ``whole``
        (no endpoint left) also the network's rules and its bridge. Idempotent."""
        published = [ep.container_id for ep in eps if ep.ports]
        if whole:
            self._fw(net).remove(net, published)
        elif published:
            self._fw(net).remove(None, published)
        with _kernel(f"detach from network {net.name}"), _rtnl() as nl:
            for ep in eps:
                nl.delete_link(name=ep.host_veth)
            if whole:
                link = nl.link(net.bridge)
                if link is not None and link.alias == f"pybuild:{net.id}":
                    nl.delete_link(index=link.index)

    def disconnect(self, ref: str, container_id: str, *, background: bool = False) -> bool:
        """Detach a container: veth, rules, address and peers' hosts entries. Idempotent.
        ``background``: the records and hosts files are updated now, the kernel objects are
        removed by a detached child that holds the network's lock until it is done."""
        net = self.find(ref)
        if net is None or container_id not in self._load_endpoints(net):
            return False               # (endpoints are added only by the container's own attach)
        with flocked(self._dir(net) / "lock") as lock_fd:
            self._finish_teardown(net)
            eps = self._load_endpoints(net)
            ep = eps.pop(container_id, None)
            if ep is None:
                return False
            whole = not eps
            pending = self._pending_path(net)
            write_atomic(pending, json.dumps({"endpoints": [ep.to_dict()], "network": whole}).encode(),
                         durable=False)
            self._save_endpoints(net, eps)
            self._refresh_hosts(net, eps)
            if ep.hosts_file:
                _rewrite_hosts(Path(ep.hosts_file), [], own_name=ep.hostname)

            def work() -> None:
                self._kernel_teardown(net, [ep], whole)
                pending.unlink(missing_ok=True)

            if not (background and _detached(work, lock_fd, self._dir(net) / "teardown.log")):
                work()
            return True

    def disconnect_all(self, container_id: str, *, background: bool = False) -> list[str]:
        """Detach a container from every network it is on; returns the network names."""
        return [net.name for net in self.list_all()
                if self.disconnect(net.id, container_id, background=background)]

    def settle(self, ref: str | None = None) -> None:
        """Wait until no background teardown runs on network ``ref`` (every network if None),
        and finish one whose child died."""
        nets = self.list_all() if ref is None else [n for n in [self.find(ref)] if n is not None]
        for net in nets:
            if not self._dir(net).is_dir():
                continue
            with flocked(self._dir(net) / "lock"):
                self._finish_teardown(net)

    def endpoint_of(self, container_id: str) -> list[tuple[Network, Endpoint]]:
        out = []
        for net in self.list_all():
            ep = self._load_endpoints(net).get(container_id)
            if ep is not None:
                out.append((net, ep))
        return out

    def _refresh_hosts(self, net: Network, eps: Mapping[str, Endpoint]) -> None:
        """Every container on a DNS-enabled network sees its peers (name, aliases, short ID)."""
        for cid, ep in eps.items():
            if not ep.hosts_file:
                continue
            lines = []
            if ep.hostname:
                lines.append(f"{ep.ip}\t{ep.hostname}")
            if net.dns:
                for other_id, other in sorted(eps.items(), key=lambda kv: kv[1].ip):
                    if other_id == cid:
                        continue
                    names = dict.fromkeys([other.name, *other.aliases, other_id[:12]])
                    lines.append(f"{other.ip}\t" + " ".join(names))
            _rewrite_hosts(Path(ep.hosts_file), lines, own_name=ep.hostname)

    def sweep(self) -> list[str]:
        """Drop endpoints whose namespace is gone (a killed monitor); returns the container IDs."""
        gone = []
        for net in self.list_all():
            with flocked(self._dir(net) / "lock"):
                self._finish_teardown(net)
                eps = self._load_endpoints(net)
                dead = [cid for cid, ep in eps.items() if not Path(ep.netns).exists()]
                for cid in dead:
                    self._teardown_endpoint(net, eps.pop(cid))
                if dead:
                    self._save_endpoints(net, eps)
                    self._refresh_hosts(net, eps)
                if not eps:
                    self.teardown(net)
                gone += dead
        return gone


def _detached(work: Callable[[], None], lock_fd: int, log: Path) -> bool:
    """Run ``work`` in a grandchild in a session of its own that keeps ``lock_fd`` (the network's
    flock, so the next user of the network waits for it) and closes every other inherited fd
    (a caller's pipes or locks must not outlive the caller because of it). True once started;
    False if fork failed, and the caller does the work itself."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)              # the intermediate exits at once
        return True
    code = 1
    try:
        os.setsid()
        with contextlib.suppress(OSError):
            if os.fork():
                os._exit(0)
        # (fork failed: this intermediate does the work, and the caller waits for it)
        _worker_setup(lock_fd)
        try:
            work()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - nobody to raise to: leave a note
            with contextlib.suppress(OSError), log.open("a") as f:
                f.write(f"{rfc3339_nano()} teardown failed: {exc}\n")
    finally:
        os._exit(code)


def _worker_setup(keep: int) -> None:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD,
                signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    with os.scandir("/proc/self/fd") as it:
        open_fds = [int(entry.name) for entry in it]
    for fd in open_fds:
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


# -- rootless: slirp4netns ------------------------------------------------------------------------

@dataclass
class Slirp:
    """A running slirp4netns serving one container's network namespace."""

    proc: subprocess.Popen[bytes]
    api_socket: Path
    exit_w: int
    ports: tuple[PortMapping, ...] = ()

    GUEST_IP: ClassVar[str] = "10.0.2.100"

    def add_hostfwd(self, p: PortMapping) -> None:
        req = {"execute": "add_hostfwd",
               "arguments": {"proto": p.proto, "host_addr": p.host_ip or "0.0.0.0",  # noqa: S104
                             "host_port": p.host_port, "guest_port": p.container_port}}
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.api_socket))
            s.sendall(json.dumps(req).encode())
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        answer = json.loads(reply or b"{}")
        if "error" in answer:
            raise PortInUse(p, str(answer["error"].get("desc", answer["error"])))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.exit_w)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.api_socket.unlink(missing_ok=True)


def start_slirp4netns(netns: str | int | os.PathLike[str], api_socket: Path, *,
                      ports: Sequence[PortMapping] = (), userns: str | None = None,
                      mtu: int = 65520, timeout: float = 10.0) -> Slirp:
    """User-mode networking for a namespace we may not plumb veths into (rootless runs).
    The guest gets 10.0.2.100/24 via tap0, gateway 10.0.2.2, DNS 10.0.2.3."""
    exe = _which("slirp4netns")
    if exe is None:
        raise NetworkError("rootless networking needs slirp4netns, which is not installed",
                           hint="install slirp4netns, or run with --network host or --network none")
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    argv = [exe, "--configure", f"--mtu={mtu}", "--disable-host-loopback",
            f"--api-socket={api_socket}", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}"]
    if userns:
        argv.append(f"--userns-path={userns}")
    if isinstance(netns, int):
        argv += [str(netns), "tap0"]
    else:
        argv += ["--netns-type=path", os.fspath(netns), "tap0"]
    api_socket.unlink(missing_ok=True)
    proc = subprocess.Popen(argv, pass_fds=(ready_w, exit_r), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(ready_w)
    os.close(exit_r)
    os.set_inheritable(exit_w, False)
    slirp = Slirp(proc, api_socket, exit_w)
    try:
        import select

        ready, _, _ = select.select([ready_r], [], [], timeout)
        got = os.read(ready_r, 1) if ready else b""
        if got != b"1":
            err = b""
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                err = proc.stderr.read()
            lines = [x for x in err.decode(errors="replace").strip().splitlines() if x.strip()]
            why = next((x for x in lines if "/dev/net/tun" in x), lines[0] if lines else "timeout")
            hint = "use --network host or --network none"
            if "/dev/net/tun" in why:
                hint = ("this user cannot open /dev/net/tun (it should be mode 0666, e.g. "
                        "`chmod 0666 /dev/net/tun`); or " + hint)
            raise NetworkError(f"rootless networking: slirp4netns did not come up: {why}", hint=hint)
        deadline = time.monotonic() + timeout
        while not api_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        chosen = []
        for p in ports:
            q = _free_port(p) if p.host_port == 0 else p
            slirp.add_hostfwd(q)
            chosen.append(q)
        slirp.ports = tuple(chosen)
        return slirp
    except BaseException:
        slirp.stop()
        raise
    finally:
        os.close(ready_r)


# -- per-container attach/detach (used by the monitor and by foreground runs) ---------------------

@dataclass
class Attachment:
    """What attach_container() did: docker-shaped settings per network, and a closer for the
    parts that live in this process (slirp4netns)."""

    settings: dict[str, Any] = field(default_factory=dict)
    slirp: Slirp | None = None

    def close(self) -> None:
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp = None


def _ports_json(ports: Iterable[PortMapping]) -> list[dict[str, Any]]:
    return [{"HostIp": p.host_ip or "0.0.0.0", "HostPort": p.host_port,  # noqa: S104
             "ContainerPort": p.container_port, "Proto": p.proto} for p in ports]


def attach_container(store_root: Path, c: Any, pid: int) -> Attachment:
    """Plug container ``c`` (a runtime.containers.Container) whose init is ``pid`` into the
    network its record asks for. none/host: nothing to do. bridge/a user network: a veth on
    the bridge when root; slirp4netns when rootless (default network only)."""
    r = c.record
    mode = r.network or "none"
    if mode in ("none", "host") or mode.startswith("container:"):
        return Attachment()
    if os.geteuid() != 0:
        if mode != DEFAULT_NETWORK:
            raise NetworkError(f"network {mode}: user-defined networks need root",
                               hint="use the default network (slirp4netns), or --network host|none")
        own = Path(f"/proc/{pid}/ns/user")
        userns = str(own) if own.stat().st_ino != Path("/proc/self/ns/user").stat().st_ino else None
        slirp = start_slirp4netns(pid, c.path("slirp.sock"), ports=r.ports, userns=userns)
        return Attachment({"slirp4netns": {"IPAddress": Slirp.GUEST_IP, "IPPrefixLen": 24,
                                           "Gateway": "10.0.2.2", "Ports": _ports_json(slirp.ports)}},
                          slirp)
    store = NetworkStore(store_root / "networks")
    net = store.get(mode)
    hosts = c.path("hosts")
    ep = store.connect(net.id, c.id, pid, name=r.name, aliases=r.network_aliases, ports=r.ports,
                       hosts_file=hosts if hosts.exists() else None,
                       hostname=r.hostname or c.id[:12])
    return Attachment({net.name: {**ep.settings(net), "Ports": _ports_json(ep.ports)}})


def detach_container(store_root: Path, c: Any, *, wait: bool = False) -> list[str]:
    """Undo attach_container for every network (idempotent; safe after a crash). The kernel
    side runs in the background (see NetworkStore.disconnect) unless ``wait``: then it is done
    before this returns, and so is any background teardown of the container's network (an
    exited monitor's), so nothing of the container is left on the host (`rm`)."""
    if not (store_root / "networks").is_dir() or os.geteuid() != 0:
        return []
    store = NetworkStore(store_root / "networks")
    names = store.disconnect_all(c.id, background=not wait)
    if wait:
        mode = getattr(getattr(c, "record", None), "network", "") or ""
        store.settle(mode if mode not in ("", "none", "host") else None)
    return names
