"""runtime.netlink: the message builders byte for byte, and every operation the bridge network
uses checked against what `ip -j` reports, inside two throwaway network namespaces (`ip netns
add`), so the host's interfaces, addresses and routes are never touched."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from runtime import netlink
from runtime.netlink import Netlink, NetlinkError

SUFFIX = f"{os.getpid() % 100000}"


# -- builders and parsers (no privileges needed) ---------------------------------------------------

def test_attributes_are_padded_and_nested_flagged() -> None:
    a = netlink.nla_str(netlink.IFLA_IFNAME, "eth0")        # 4 header + "eth0\0" = 9 -> 12
    assert a == struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0\0\0"
    n = netlink.nla_nest(netlink.IFLA_LINKINFO, netlink.nla_str(netlink.IFLA_INFO_KIND, "veth"))
    size, kind = struct.unpack_from("=HH", n)
    assert kind == netlink.IFLA_LINKINFO | 0x8000 and size == len(n) == 4 + 12
    parsed = netlink.parse_attrs(a + netlink.nla_u32(netlink.IFLA_MASTER, 7) + n)
    assert parsed[netlink.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", parsed[netlink.IFLA_MASTER]) == (7,)
    assert netlink.parse_attrs(parsed[netlink.IFLA_LINKINFO]) == {netlink.IFLA_INFO_KIND: b"veth\0"}


def test_struct_headers_match_the_kernel_layouts() -> None:
    assert len(netlink.ifinfomsg()) == 16            # struct ifinfomsg
    assert len(netlink.ifaddrmsg(index=3, prefixlen=24)) == 8
    assert len(netlink.rtmsg()) == 12
    assert netlink.mac_bytes("02:42:0a:58:00:02") == bytes([2, 0x42, 10, 0x58, 0, 2])
    link = netlink.Link.parse(netlink.ifinfomsg(index=5, flags=netlink.IFF_UP)
                              + netlink.nla_str(netlink.IFLA_IFNAME, "br0")
                              + netlink.nla_str(netlink.IFLA_IFALIAS, "pybuild:x")
                              + netlink.nla(netlink.IFLA_ADDRESS, bytes(6)))
    assert (link.index, link.name, link.alias, link.up, link.mac) == (5, "br0", "pybuild:x", True,
                                                                     "00:00:00:00:00:00")


# -- against the kernel, in private namespaces ---------------------------------------------------------

def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out or "[]"))


@pytest.fixture
def two_netns() -> Iterator[tuple[str, int, str, int]]:
    """(name, fd) of two fresh network namespaces, removed afterwards."""
    names = [f"pbnl{SUFFIX}a", f"pbnl{SUFFIX}b"]
    fds: list[int] = []
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True, capture_output=True)
            fds.append(os.open(f"/run/netns/{n}", os.O_RDONLY | os.O_CLOEXEC))
        yield names[0], fds[0], names[1], fds[1]
    finally:
        for fd in fds:
            os.close(fd)
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)


@pytest.mark.needs_root
def test_a_socket_in_another_namespace_leaves_ours_alone(two_netns: tuple[str, int, str, int]) -> None:
    ns_a, fd_a, _, _ = two_netns
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with Netlink(fd_a) as nl:
        names = sorted(link.name for link in nl.links())
    assert os.stat("/proc/thread-self/ns/net").st_ino == before
    assert names == sorted(str(x["ifname"]) for x in ip_json(ns_a, "link", "show")) == ["lo"]


@pytest.mark.needs_root
def test_bridge_alias_address_and_dumps_match_ip(two_netns: tuple[str, int, str, int]) -> None:
    ns_a, fd_a, _, _ = two_netns
    with Netlink(fd_a) as nl:
        assert nl.link("br0") is None
        nl.create_bridge("br0", up=True)
        br = nl.link("br0")
        assert br is not None and br.kind == "bridge" and br.up
        nl.set_link(br.index, alias="pybuild:test")
        nl.add_address(br.index, "10.66.0.1", 16)
        with pytest.raises(NetlinkError) as exc:
            nl.create_bridge("br0")
        assert exc.value.errno == errno.EEXIST
        nl.set_link(netlink.LOOPBACK_IFINDEX, up=True)
        addrs, routes, links = nl.addresses(), nl.routes(), nl.links()
        assert nl.addresses(br.index) == [a for a in addrs if a.index == br.index]
    link = ip_json(ns_a, "-d", "link", "show", "dev", "br0")[0]
    assert (link["ifindex"], link["ifalias"]) == (br.index, "pybuild:test")
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in link["flags"]
    assert sorted((a.index, a.local, a.prefixlen) for a in addrs) == sorted(
        (int(x["ifindex"]), a["local"], a["prefixlen"])
        for x in ip_json(ns_a, "-4", "addr", "show") for a in x["addr_info"])
    want_routes = sorted((r["dst"], r.get("dev")) for r in ip_json(ns_a, "-4", "route", "show"))
    by_index = {link.index: link.name for link in links}
    assert sorted((f"{r.dst}/{r.dst_len}", by_index.get(r.oif)) for r in routes) == want_routes
    assert ("10.66.0.0/16", "br0") in want_routes


@pytest.mark.needs_root
def test_veth_peer_is_born_in_the_other_namespace(two_netns: tuple[str, int, str, int]) -> None:
    ns_a, fd_a, ns_b, fd_b = two_netns
    with Netlink(fd_a) as a:
        a.create_bridge("br0")
        br = a.link("br0")
        assert br is not None
        a.add_address(br.index, "10.66.0.1", 16)
        a.create_veth("pbvtest", "eth0", peer_netns_fd=fd_b, peer_mac="02:42:0a:42:00:02",
                      master=br.index, up=True)
        veth = a.link("pbvtest")
        assert veth is not None and veth.master == br.index and veth.up
        assert a.link("eth0") is None                     # never appeared on this side
        a.set_hairpin(veth.index, True)
        with pytest.raises(NetlinkError) as exc:          # the name is taken now
            a.create_veth("pbvtest", "eth1", peer_netns_fd=fd_b)
        assert exc.value.errno == errno.EEXIST
        with Netlink(fd_b) as b:
            eth = b.link("eth0")
            assert eth is not None and eth.mac == "02:42:0a:42:00:02"
            b.set_link(netlink.LOOPBACK_IFINDEX, up=True)
            b.set_link(eth.index, up=True)
            b.add_address(eth.index, "10.66.0.2", 16)
            b.add_default_route("10.66.0.1", oif=eth.index)
            default = [r for r in b.routes() if r.dst_len == 0]
            assert [(r.gateway, r.oif) for r in default] == [("10.66.0.1", eth.index)]
        info = ip_json(ns_a, "-d", "link", "show", "dev", "pbvtest")[0]
        assert info["master"] == "br0" and info["linkinfo"]["info_slave_data"]["hairpin"] is True
        routes = ip_json(ns_b, "-4", "route", "show")
        assert {"dst": "default", "gateway": "10.66.0.1", "dev": "eth0"}.items() <= routes[0].items()
        ping = subprocess.run(["ip", "netns", "exec", ns_b, "busybox", "ping", "-c", "1", "-W", "2",
                               "10.66.0.1"], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert a.delete_link(name="pbvtest") is True      # takes the peer along
        assert a.delete_link(name="pbvtest") is False
    assert [x["ifname"] for x in ip_json(ns_b, "link", "show")] == ["lo"]


@pytest.mark.needs_root
def test_kernel_errors_carry_errno_and_the_extended_ack(two_netns: tuple[str, int, str, int]) -> None:
    _, fd_a, _, _ = two_netns
    with Netlink(fd_a) as nl:
        with pytest.raises(NetlinkError) as exc:
            nl.add_address(999, "10.1.2.3", 24)            # no such interface
        assert exc.value.errno == errno.ENODEV
        assert str(exc.value).startswith("add address 10.1.2.3/24: ")
        with pytest.raises(NetlinkError) as exc:
            nl.request(netlink.RTM_NEWLINK, netlink.ifinfomsg() + netlink.nla_nest(
                netlink.IFLA_LINKINFO, netlink.nla_str(netlink.IFLA_INFO_KIND, "no-such-kind")),
                flags=netlink.NLM_F_CREATE | netlink.NLM_F_EXCL, what="create")
        assert exc.value.errno in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL)
        assert nl.link("nope0") is None
        assert nl.delete_link(name="nope0") is False
