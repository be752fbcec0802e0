"""Bridge networking from the host side, exercised on `ip netns add` namespaces (no sandbox
needed): IPAM, published ports reached on loopback (nft and iptables backends), name
resolution through hosts files, isolation of state per store, and a teardown that leaves
no link, table or rule behind. Traffic goes only to loopback and the test namespaces."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import network
from runtime.netlink import Netlink
from runtime.network import (
    NetworkError,
    NetworkInUse,
    NetworkStore,
    PortInUse,
    firewall_backend,
    parse_publish,
)
from tests.lifecycle.conftest import SUFFIX, traces
from tests.support.registry_server import free_loopback_port

pytestmark = pytest.mark.needs_root

CID_A, CID_B, CID_C = "a" * 64, "b" * 64, "c" * 64


def _backends() -> list[str]:
    out = []
    if shutil.which("nft"):
        out.append("nft")
    if shutil.which("iptables"):
        out.append("iptables")
    return out


@pytest.fixture(params=_backends())
def fw_store(request: pytest.FixtureRequest, root: Path) -> Iterator[NetworkStore]:
    ns = NetworkStore(root / f"networks-{request.param}", firewall=request.param,
                      default_bridge=f"pbt{SUFFIX}{request.param[0]}")
    yield ns
    for net in ns.list_all():
        ns.remove(net.id, force=True)


@pytest.fixture
def httpd(tmp_path: Path) -> Iterator[Callable[[str, str], None]]:
    """`httpd(netns_path, text)` serves text on port 80 inside that namespace (busybox httpd)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(ns_path: str, text: str) -> None:
        www = tmp_path / f"www{len(procs)}"
        www.mkdir()
        (www / "index.html").write_text(text)
        p = subprocess.Popen(["nsenter", f"--net={ns_path}", "busybox", "httpd", "-f", "-p", "80", "-h",
                              str(www)])
        procs.append(p)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = subprocess.run(["nsenter", f"--net={ns_path}", "cat", "/proc/net/tcp", "/proc/net/tcp6"],
                               capture_output=True, text=True)
            if ":0050 " in r.stdout:
                return
            time.sleep(0.02)
        raise AssertionError("httpd did not listen")

    yield start
    for p in procs:
        p.kill()
        p.wait()


def curl(url: str, *, ns: str | None = None, hosts: Path | None = None) -> str:
    argv = ["curl", "-s", "-m", "5", url]
    if ns:
        argv = ["nsenter", f"--net={ns}", *argv]
    if hosts:
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
                *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout


def test_parse_publish_forms() -> None:
    p = parse_publish("8080:80")[0]
    assert (p.host_ip, p.host_port, p.container_port, p.proto) == ("", 8080, 80, "tcp")
    p = parse_publish("127.0.0.1:5353:53/udp")[0]
    assert (p.host_ip, p.host_port, p.container_port, p.proto) == ("127.0.0.1", 5353, 53, "udp")
    assert [(q.host_port, q.container_port) for q in parse_publish("9000-9002:7000-7002")] == \
        [(9000, 7000), (9001, 7001), (9002, 7002)]
    assert parse_publish("80")[0].host_port == 0
    for bad in ("80:80/sctp", "x:80", "1:2:3:4", "9000-9001:80", "70000:80", "300.1.1.1:80:80"):
        with pytest.raises(NetworkError):
            parse_publish(bad)


def test_bridges_exist_only_while_networks_have_endpoints(netstore: NetworkStore,
                                                          netns: Callable[[str], str]) -> None:
    a = netstore.create(f"n{SUFFIX}a")
    b = netstore.create(f"n{SUFFIX}b")
    assert not ipaddress.IPv4Network(a.subnet).overlaps(ipaddress.IPv4Network(b.subnet))
    assert subprocess.run(["ip", "link", "show", a.bridge], capture_output=True).returncode != 0
    netstore.connect(a.name, CID_A, netns("a"), name="x")
    a = netstore.get(a.name)
    link = json.loads(subprocess.run(["ip", "-j", "link", "show", "dev", a.bridge], capture_output=True,
                                     text=True).stdout)[0]
    assert link["ifalias"] == f"pybuild:{a.id}"
    info = json.loads(subprocess.run(["ip", "-j", "addr", "show", "dev", a.bridge], capture_output=True,
                                     text=True).stdout)[0]
    assert any(x["local"] == a.gateway for x in info["addr_info"])
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True).stdout)
    others = [ipaddress.IPv4Network(r["dst"], strict=False) for r in routes
              if r["dst"] != "default" and r.get("dev") != a.bridge]
    assert not any(ipaddress.IPv4Network(a.subnet).overlaps(o) for o in others)
    with pytest.raises(NetworkError):
        netstore.create(f"n{SUFFIX}a")
    with pytest.raises(NetworkError):
        netstore.create("x" + f"{SUFFIX}", subnet=a.subnet)
    with pytest.raises(NetworkInUse):
        netstore.remove(a.name)
    netstore.disconnect(a.name, CID_A)        # the last endpoint takes the bridge and rules along
    assert subprocess.run(["ip", "link", "show", a.bridge], capture_output=True).returncode != 0
    assert not [t for t in NftFirewallTables() if a.short_id in t]
    netstore.remove(a.name)
    assert [n.name for n in netstore.list_all()] == [b.name]


def NftFirewallTables() -> list[str]:  # noqa: N802 - reads like the thing it lists
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pybuild" in line]


def test_a_taken_bridge_name_or_subnet_moves_at_bring_up(netstore: NetworkStore,
                                                          netns: Callable[[str], str]) -> None:
    net = netstore.ensure_default()
    squatter = net.bridge
    subprocess.run(["ip", "link", "add", squatter, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"{net.gateway}/32", "dev", squatter], check=True)
    try:
        netstore.connect("bridge", CID_A, netns("a"), name="x")
        moved = netstore.get("bridge")
        assert moved.bridge != squatter
        assert not ipaddress.IPv4Network(moved.subnet).overlaps(ipaddress.IPv4Network(net.subnet))
        fixed = netstore.create(f"fx{SUFFIX}", bridge=squatter)
        with pytest.raises(NetworkError, match="already exists"):
            netstore.connect(fixed.name, CID_B, netns("b"), name="y")
    finally:
        subprocess.run(["ip", "link", "del", squatter], check=False)


def test_published_port_reaches_the_namespace_and_teardown_is_complete(
        fw_store: NetworkStore, netns: Callable[[str], str], httpd: Callable[[str, str], None]) -> None:
    net = fw_store.ensure_default()
    ns_a = netns("a")
    port = free_loopback_port()
    ep = fw_store.connect("bridge", CID_A, ns_a, name="web", ports=parse_publish(f"{port}:80"))
    assert ipaddress.IPv4Address(ep.ip) in ipaddress.IPv4Network(net.subnet)
    httpd(ns_a, "hello from a\n")
    assert curl(f"http://127.0.0.1:{port}/") == "hello from a\n"     # DNAT + loopback hairpin
    assert curl(f"http://{ep.ip}/") == "hello from a\n"              # the container's own address
    # the namespace reaches its own published port through the host (hairpin NAT)
    assert curl(f"http://{net.gateway}:{port}/", ns=ns_a) == "hello from a\n"
    assert firewall_backend(fw_store._fw(net).name).owned()
    fw_store.disconnect("bridge", CID_A)
    assert curl(f"http://127.0.0.1:{port}/") == ""
    # the last disconnect removed the veth, the bridge and every rule
    net = fw_store.get("bridge")
    left = traces(fw_store.root.parent, [CID_A], [net.id], [net.bridge], [])
    assert left == {"links": [], "nft": [], "iptables": [], "mounts": [], "cgroups": [], "procs": []}


def test_host_ip_binding_only_answers_on_that_address(
        netstore: NetworkStore, netns: Callable[[str], str], httpd: Callable[[str, str], None]) -> None:
    ns_a = netns("a")
    port = free_loopback_port()
    netstore.connect("bridge", CID_A, ns_a, name="web", ports=parse_publish(f"127.0.0.2:{port}:80"))
    httpd(ns_a, "only on .2\n")
    assert curl(f"http://127.0.0.2:{port}/") == "only on .2\n"
    assert curl(f"http://127.0.0.1:{port}/") == ""


def test_port_conflicts_are_refused(netstore: NetworkStore, netns: Callable[[str], str]) -> None:
    ns_a, ns_b = netns("a"), netns("b")
    port = free_loopback_port()
    netstore.connect("bridge", CID_A, ns_a, name="one", ports=parse_publish(f"{port}:80"))
    with pytest.raises(PortInUse):
        netstore.connect("bridge", CID_B, ns_b, name="two", ports=parse_publish(f"127.0.0.1:{port}:81"))
    # the failed connect released its address and left no veth
    assert len(netstore.endpoints(netstore.get("bridge"))) == 1
    assert subprocess.run(["ip", "link", "show", f"pbv{CID_B[:12]}"], capture_output=True).returncode != 0
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(PortInUse):
            netstore.connect("bridge", CID_B, ns_b, name="two", ports=parse_publish(f"{busy}:80"))
    auto = netstore.connect("bridge", CID_C, netns("c"), name="three", ports=parse_publish("80"))
    assert auto.ports[0].host_port > 0


def test_user_network_name_resolution_and_peer_updates(
        netstore: NetworkStore, netns: Callable[[str], str], httpd: Callable[[str, str], None],
        tmp_path: Path) -> None:
    net = netstore.create(f"app{SUFFIX}")
    ns_a, ns_b = netns("a"), netns("b")
    ha, hb = tmp_path / "hosts-a", tmp_path / "hosts-b"
    for h in (ha, hb):
        h.write_text("127.0.0.1\tlocalhost\n")
    inode_b = hb.stat().st_ino
    a = netstore.connect(net.name, CID_A, ns_a, name="web", aliases=["www"], hosts_file=ha, hostname="web")
    b = netstore.connect(net.name, CID_B, ns_b, name="client", hosts_file=hb, hostname="client")
    assert f"{a.ip}\tweb www {CID_A[:12]}" in hb.read_text()
    assert f"{b.ip}\tclient" in ha.read_text()
    assert f"{a.ip}\tweb\n" in ha.read_text() and "127.0.0.1\tweb" not in ha.read_text()
    assert hb.stat().st_ino == inode_b           # rewritten in place: a bind mount keeps seeing it
    assert hb.read_text().startswith("127.0.0.1\tlocalhost\n")
    httpd(ns_a, "by name\n")
    assert curl("http://web/", ns=ns_b, hosts=hb) == "by name\n"
    assert curl("http://www/", ns=ns_b, hosts=hb) == "by name\n"
    netstore.disconnect(net.name, CID_A)
    assert "web" not in hb.read_text().replace("client", "")
    assert ha.read_text().splitlines()[-1] == "127.0.0.1\tweb"     # back to what a stopped one has
    with pytest.raises(NetworkInUse):
        netstore.remove(net.name)
    netstore.disconnect(net.name, CID_B)
    netstore.remove(net.name)


def test_default_bridge_network_has_no_name_resolution(
        netstore: NetworkStore, netns: Callable[[str], str], tmp_path: Path) -> None:
    h = tmp_path / "hosts"
    h.write_text("127.0.0.1\tlocalhost\n")
    netstore.connect("bridge", CID_A, netns("a"), name="web", hosts_file=tmp_path / "unused")
    netstore.connect("bridge", CID_B, netns("b"), name="client", hosts_file=h, hostname="client")
    assert "web" not in h.read_text()


def test_addresses_are_reused_after_disconnect(netstore: NetworkStore, netns: Callable[[str], str]) -> None:
    ns_a = netns("a")
    first = netstore.connect("bridge", CID_A, ns_a, name="a").ip
    netstore.disconnect("bridge", CID_A)
    again = netstore.connect("bridge", CID_B, netns("b"), name="b").ip
    assert again == first
    assert netstore.disconnect("bridge", CID_A) is False     # idempotent


def test_vanished_namespace_is_swept(netstore: NetworkStore, tmp_path: Path) -> None:
    name = f"pbt{SUFFIX}s"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        netstore.connect("bridge", CID_A, f"/run/netns/{name}", name="gone")
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert netstore.sweep() == [CID_A]
    assert netstore.endpoints(netstore.get("bridge")) == []


def test_two_stores_get_distinct_default_bridges(tmp_path: Path) -> None:
    a = NetworkStore(tmp_path / "a", default_bridge=f"pbt{SUFFIX}d")
    b = NetworkStore(tmp_path / "b", default_bridge=f"pbt{SUFFIX}d")
    try:
        ns_a, ns_b = f"pbt{SUFFIX}x", f"pbt{SUFFIX}y"
        for n in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "add", n], check=True)
        a.connect("bridge", CID_A, f"/run/netns/{ns_a}", name="a")
        b.connect("bridge", CID_B, f"/run/netns/{ns_b}", name="b")
        na, nb = a.get("bridge"), b.get("bridge")
        assert na.bridge != nb.bridge
        assert not ipaddress.IPv4Network(na.subnet).overlaps(ipaddress.IPv4Network(nb.subnet))
    finally:
        for s in (a, b):
            for net in s.list_all():
                s.remove(net.id, force=True)
        for n in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", n], check=False)


@pytest.mark.needs_peer("slirp4netns")
def test_slirp4netns_serves_a_namespace_and_forwards_a_port(
        netns: Callable[[str], str], httpd: Callable[[str, str], None], tmp_path: Path) -> None:
    """The rootless path's building block, driven here on a root-made namespace: slirp4netns
    configures tap0 (10.0.2.100) and forwards a host loopback port into the namespace."""
    from runtime.network import start_slirp4netns

    ns = netns("s")
    port = free_loopback_port()
    slirp = start_slirp4netns(ns, tmp_path / "slirp.sock", ports=parse_publish(f"127.0.0.1:{port}:80"))
    try:
        addrs = subprocess.run(["nsenter", f"--net={ns}", "ip", "-4", "-o", "addr", "show", "tap0"],
                               capture_output=True, text=True).stdout
        assert "10.0.2.100/24" in addrs
        httpd(ns, "through slirp\n")
        assert curl(f"http://127.0.0.1:{port}/") == "through slirp\n"
        assert slirp.ports[0].host_port == port
    finally:
        slirp.stop()
    assert slirp.proc.returncode is not None          # the exit fd ended it
    assert not (tmp_path / "slirp.sock").exists()


def test_nft_backend_opens_an_iptables_forward_drop_policy(tmp_path: Path) -> None:
    """On a host whose iptables FORWARD policy is DROP (docker installed), the nft backend also
    accepts the bridge's traffic there, and removes those rules with the network. Run in a
    private network namespace, so the host's own policy is never touched."""
    if not shutil.which("iptables") or not shutil.which("nft"):
        pytest.skip("needs both iptables and nft")
    code = f"""
import subprocess, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from runtime.network import Network, NftFirewall
subprocess.run(["iptables", "-w", "5", "-P", "FORWARD", "DROP"], check=True)
net = Network(id="f" * 64, name="n", bridge="pbfwd0", subnet="10.77.0.0/24", gateway="10.77.0.1",
              firewall="nft", created="")
NftFirewall().add_network(net)
added = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
NftFirewall().remove_network(net)
left = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
print(added.count("pybuild:n:ffffffffffff"), left.count("pybuild"))
"""
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "0"]


def test_background_teardown_runs_detached_and_settle_waits_for_it(
        netstore: NetworkStore, netns: Callable[[str], str]) -> None:
    """disconnect(background=True): the records change before it returns, the kernel objects go
    in a detached child that holds the network's lock and none of the caller's other fds (a
    pipe the caller closes sees EOF at once); settle() waits for it; nothing is left."""
    port = free_loopback_port()
    netstore.connect("bridge", CID_A, netns("a"), name="web", ports=parse_publish(f"{port}:80"))
    net = netstore.get("bridge")
    assert [t for t in NftFirewallTables() if CID_A[:12] in t]
    r, w = os.pipe()
    try:
        assert netstore.disconnect("bridge", CID_A, background=True) is True
        os.close(w)
        assert select.select([r], [], [], 5)[0] and os.read(r, 1) == b""
    finally:
        os.close(r)
    assert netstore.endpoints(net) == []
    netstore.settle()
    assert not (netstore.root / net.id / "teardown.json").exists()
    left = traces(netstore.root.parent, [CID_A], [net.id], [net.bridge], [])
    assert left == {"links": [], "nft": [], "iptables": [], "mounts": [], "cgroups": [], "procs": []}


def test_a_teardown_whose_child_died_is_finished_by_the_next_user(
        netstore: NetworkStore, netns: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_loopback_port()
    netstore.connect("bridge", CID_A, netns("a"), name="a", ports=parse_publish(f"{port}:80"))
    net = netstore.get("bridge")
    monkeypatch.setattr(network, "_detached", lambda work, lock_fd, log: True)   # killed at once
    assert netstore.disconnect("bridge", CID_A, background=True) is True
    monkeypatch.undo()
    assert (netstore.root / net.id / "teardown.json").exists()
    assert network.link_alias(net.bridge) == f"pybuild:{net.id}"      # nobody did the work yet
    # the next connect finishes it under the lock first: A's veth and port table are gone,
    # the network's bridge and rules come back for B
    ep = netstore.connect("bridge", CID_B, netns("b"), name="b")
    assert not (netstore.root / net.id / "teardown.json").exists()
    assert not network.link_exists(f"pbv{CID_A[:12]}")
    assert not [t for t in NftFirewallTables() if CID_A[:12] in t]
    assert [t for t in NftFirewallTables() if net.short_id in t]
    gateway = ipaddress.IPv4Address(netstore.get("bridge").gateway)
    assert ep.ip == str(gateway + 1)                                     # A's address is free again
    netstore.disconnect("bridge", CID_B)
    left = traces(netstore.root.parent, [CID_A, CID_B], [net.id], [net.bridge], [])
    assert left == {"links": [], "nft": [], "iptables": [], "mounts": [], "cgroups": [], "procs": []}


def test_host_prefixes_from_netlink_match_ip(netns: Callable[[str], str]) -> None:
    """The subnet check reads routes and addresses with rtnetlink: the same prefixes `ip -j`
    lists (in a test namespace with a dummy link, addresses and routes of its own)."""
    path = netns("p")
    name = Path(path).name            # a veth pair inside the namespace stands for a host link
    for cmd in (["link", "set", "lo", "up"], ["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                ["link", "set", "d1", "up"], ["link", "set", "d0", "up"],
                ["addr", "add", "10.201.3.4/24", "dev", "d0"], ["addr", "add", "172.30.9.1/32", "dev", "d0"],
                ["route", "add", "10.202.0.0/16", "dev", "d0"], ["route", "add", "default", "dev", "d0"],
                ["route", "add", "blackhole", "192.168.77.0/24"]):
        subprocess.run(["ip", "-n", name, *cmd], check=True, capture_output=True)

    def ip_json(*args: str) -> list[dict[str, Any]]:
        return list(json.loads(subprocess.run(["ip", "-n", name, "-j", *args], capture_output=True,
                                              text=True, check=True).stdout))

    want: set[ipaddress.IPv4Network] = set()
    for r in ip_json("-4", "route", "show"):
        if r["dst"] != "default":
            want.add(ipaddress.IPv4Network(r["dst"], strict=False))
    for link in ip_json("-4", "addr", "show"):
        for a in link.get("addr_info", ()):
            want.add(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    fd = os.open(path, os.O_RDONLY)
    try:
        with Netlink(fd) as nl:
            got = network._host_prefixes(None, nl)
            without_d0 = network._host_prefixes("d0", nl)
    finally:
        os.close(fd)
    assert set(got) == want
    assert ipaddress.IPv4Network("192.168.77.0/24") in want          # a route without a device
    assert set(without_d0) == {ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("192.168.77.0/24")}


def test_nft_rules_replace_a_leftover_table(tmp_path: Path) -> None:
    """A network's table is (re)defined by add + flush + define in one transaction: a leftover
    table's rules are replaced, never duplicated; a leftover whose chain cannot be redefined
    (another chain type) is deleted and defined again. In a private network namespace."""
    if not shutil.which("nft"):
        pytest.skip("needs nft")
    code = f"""
import subprocess, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from runtime.network import Network, NftFirewall
net = Network(id="e" * 64, name="n", bridge="pbx0", subnet="10.78.0.0/24", gateway="10.78.0.1",
              firewall="nft", created="")
t = "pybuild_n_" + "e" * 12
def nft(script):
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
def listing():
    return subprocess.run(["nft", "list", "table", "ip", t], capture_output=True, text=True).stdout
nft("table ip " + t + " {{\\n chain postrouting {{\\n type nat hook postrouting priority srcnat; "
    "policy accept;\\n ip saddr 1.2.3.4 masquerade\\n }}\\n}}\\n")
NftFirewall().add_network(net)
first = listing()
NftFirewall().add_network(net)
again = listing()
nft("delete table ip " + t)
nft("table ip " + t + " {{\\n chain postrouting {{\\n type filter hook postrouting priority 0; "
    "policy accept;\\n }}\\n}}\\n")
NftFirewall().add_network(net)
fixed = listing()
NftFirewall().remove_network(net)
print("1.2.3.4" in first, first.count("masquerade"), again == first, "type nat" in fixed,
      fixed.count("masquerade"), bool(listing()))
"""
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "2", "True", "True", "2", "False"]
