"""Raw rtnetlink (NETLINK_ROUTE): typed builders for the link/address/route messages a bridge
network needs, one request/ack loop, and sockets of another network namespace (made by a
short-lived thread that setns()es: a netlink socket keeps its creator's namespace). Errors are
NetlinkError (errno + the kernel's extended-ack text). Stdlib only, sockets from ``_socket``
(``socket`` builds IntEnums at import, ~3 ms of every bridge run); setns via runtime._syscalls.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from runtime.errors import SandboxError

AF_UNSPEC, AF_INET = 0, 2
# <linux/netlink.h>
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
# <linux/rtnetlink.h>
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
# <linux/if_link.h>, <linux/if_addr.h>, <linux/veth.h>
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 10, 18
IFLA_IFALIAS, IFLA_NET_NS_FD = 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_MODE = 4            # hairpin
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1
LOOPBACK_IFINDEX = 1            # every network namespace's lo
CLONE_NEWNET = 0x40000000

_NLMSGHDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")     # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")      # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")      # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NLATTR = struct.Struct("=HH")
_NLA_F_NESTED = 0x8000


class NetlinkError(SandboxError):
    """A netlink request the kernel refused: ``errno`` and the kernel's own words."""

    def __init__(self, what: str, code: int, detail: str = "") -> None:
        why = os.strerror(code) + (f" ({detail})" if detail else "")
        super().__init__(f"{what}: {why}")
        self.errno = code
        self.detail = detail


# -- builders ---------------------------------------------------------------------------------------

def _align(n: int) -> int:
    return (n + 3) & ~3


def nla(kind: int, payload: bytes) -> bytes:
    """One attribute (struct nlattr + payload, padded to 4 bytes)."""
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (_align(size) - size)


def nla_str(kind: int, text: str) -> bytes:
    return nla(kind, text.encode() + b"\0")


def nla_u32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=I", value))


def nla_u8(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=B", value))


def nla_nest(kind: int, *attrs: bytes) -> bytes:
    return nla(kind | _NLA_F_NESTED, b"".join(attrs))


def ifinfomsg(*, family: int = AF_UNSPEC, index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(family, 0, index, flags, change)


def ifaddrmsg(*, index: int, prefixlen: int, family: int = AF_INET,
              scope: int = RT_SCOPE_UNIVERSE) -> bytes:
    return _IFADDRMSG.pack(family, prefixlen, 0, scope, index)


def rtmsg(*, family: int = AF_INET, dst_len: int = 0, table: int = RT_TABLE_MAIN,
          protocol: int = RTPROT_BOOT, scope: int = RT_SCOPE_UNIVERSE, type: int = RTN_UNICAST) -> bytes:
    return _RTMSG.pack(family, dst_len, 0, 0, table, protocol, scope, type, 0)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


# -- parsers -----------------------------------------------------------------------------------------

def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes from ``offset`` on: type (nested flag stripped) -> payload (the last wins)."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + _NLATTR.size <= end:
        size, kind = _NLATTR.unpack_from(data, offset)
        if size < _NLATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + _NLATTR.size:offset + size]
        offset += _align(size)
    return out


def _cstr(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw is not None else ""


@dataclass(frozen=True)
class Link:
    """An interface as RTM_NEWLINK describes it."""

    index: int
    name: str
    flags: int
    alias: str = ""
    master: int = 0
    kind: str = ""
    mac: str = ""

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @classmethod
    def parse(cls, payload: bytes) -> Link:
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
        a = parse_attrs(payload, _IFINFOMSG.size)
        info = parse_attrs(a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
        mac = a.get(IFLA_ADDRESS, b"")
        return cls(index=index, name=_cstr(a.get(IFLA_IFNAME)), flags=flags, alias=_cstr(a.get(IFLA_IFALIAS)),
                   master=struct.unpack("=I", a[IFLA_MASTER])[0] if IFLA_MASTER in a else 0,
                   kind=_cstr(info.get(IFLA_INFO_KIND)), mac=":".join(f"{b:02x}" for b in mac))


@dataclass(frozen=True)
class Address:
    """An IPv4 address as RTM_NEWADDR describes it (``ip -4 addr``'s local/prefixlen)."""

    index: int
    local: str
    prefixlen: int

    @classmethod
    def parse(cls, payload: bytes) -> Address:
        _family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
        a = parse_attrs(payload, _IFADDRMSG.size)
        raw = a.get(IFA_LOCAL, a.get(IFA_ADDRESS, b""))
        return cls(index=index, local=str(ipaddress.IPv4Address(raw)) if len(raw) == 4 else "",
                   prefixlen=prefixlen)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.local}/{self.prefixlen}", strict=False)


@dataclass(frozen=True)
class Route:
    """An IPv4 route as RTM_NEWROUTE describes it. ``dst`` "" with dst_len 0 is the default."""

    table: int
    type: int
    dst: str
    dst_len: int
    oif: int = 0
    gateway: str = ""

    @classmethod
    def parse(cls, payload: bytes) -> Route:
        _family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(payload)
        a = parse_attrs(payload, _RTMSG.size)
        if RTA_TABLE in a:
            table = struct.unpack("=I", a[RTA_TABLE])[0]
        dst = str(ipaddress.IPv4Address(a[RTA_DST])) if len(a.get(RTA_DST, b"")) == 4 else ""
        gw = str(ipaddress.IPv4Address(a[RTA_GATEWAY])) if len(a.get(RTA_GATEWAY, b"")) == 4 else ""
        return cls(table=table, type=rtype, dst=dst, dst_len=dst_len,
                   oif=struct.unpack("=I", a[RTA_OIF])[0] if RTA_OIF in a else 0, gateway=gw)

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        return ipaddress.IPv4Network(f"{self.dst}/{self.dst_len}", strict=False) if self.dst_len else None


# -- the socket ---------------------------------------------------------------------------------------

def _setns(fd: int) -> None:
    if hasattr(os, "setns"):              # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    from runtime import _syscalls

    _syscalls.setns(fd, CLONE_NEWNET)


def _new_socket() -> _socket.socket:
    return _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)


def _socket_in(netns_fd: int) -> _socket.socket:
    """A NETLINK_ROUTE socket of the network namespace ``netns_fd``, made by a thread that
    joins it and ends (this thread never changes namespace)."""
    box: list[_socket.socket | BaseException] = []

    def body() -> None:
        try:
            _setns(netns_fd)
            box.append(_new_socket())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append(exc)

    t = threading.Thread(target=body, name="netlink-setns", daemon=True)
    t.start()
    t.join()
    got = box[0] if box else RuntimeError("netlink: the setns thread died")
    if isinstance(got, BaseException):
        if isinstance(got, OSError):
            raise NetlinkError("join the network namespace", got.errno or errno.EINVAL) from None
        raise got
    return got


class Netlink:
    """A NETLINK_ROUTE socket (of this process's network namespace, or of ``netns_fd``'s)."""

    BUFSIZE: ClassVar[int] = 1 << 16

    def __init__(self, netns_fd: int | None = None) -> None:
        if netns_fd is None:
            self.sock = _new_socket()
        else:
            self.sock = _socket_in(netns_fd)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            pass                              # an old kernel: errors without the text
        self.sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- the request loop
    def _messages(self) -> Iterator[tuple[int, int, int, bytes]]:
        while True:
            data = self.sock.recv(self.BUFSIZE)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                size, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if size < _NLMSGHDR.size:
                    break
                yield kind, flags, seq, data[off + _NLMSGHDR.size:off + size]
                off += _align(size)

    @staticmethod
    def _error(kind: int, payload: bytes, flags: int) -> tuple[int, str]:
        """(errno, extended-ack text) of an NLMSG_ERROR (or a failed dump's NLMSG_DONE)."""
        code = struct.unpack_from("=i", payload)[0]
        detail = ""
        if code and flags & NLM_F_ACK_TLVS:
            off = 4
            if kind == NLMSG_ERROR:         # struct nlmsgerr: the request's header (+ body)
                inner = _NLMSGHDR.unpack_from(payload, 4)[0]
                off += _NLMSGHDR.size if flags & NLM_F_CAPPED else _align(inner)
            detail = _cstr(parse_attrs(payload, off).get(NLMSGERR_ATTR_MSG))
        return -code, detail

    def request(self, kind: int, body: bytes, *, flags: int = 0, what: str = "") -> list[bytes]:
        """Send one request and return the payloads of the replies (a dump's messages, or a
        GET's answer); raises NetlinkError on a kernel error. Non-dump requests are acked."""
        dump = (flags & NLM_F_DUMP) == NLM_F_DUMP
        for _attempt in range(5):
            self._seq += 1
            seq = self._seq
            req_flags = NLM_F_REQUEST | flags | (0 if dump else NLM_F_ACK)
            self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, req_flags, seq, 0) + body)
            out: list[bytes] = []
            interrupted = False
            for mkind, mflags, mseq, payload in self._messages():
                if mseq != seq:
                    continue
                if mflags & NLM_F_DUMP_INTR:
                    interrupted = True
                if mkind == NLMSG_ERROR or (mkind == NLMSG_DONE and len(payload) >= 4
                                            and struct.unpack_from("=i", payload)[0] < 0):
                    err, detail = self._error(mkind, payload, mflags)
                    if err:
                        raise NetlinkError(what or f"netlink request {kind}", err, detail)
                    return out                  # the ack
                if mkind == NLMSG_DONE:
                    break
                out.append(payload)
            if not interrupted:
                return out
        raise NetlinkError(what or f"netlink dump {kind}", errno.EINTR, "the dump kept changing")

    # -- links
    def link(self, name: str) -> Link | None:
        """The interface called ``name``, or None."""
        try:
            got = self.request(RTM_GETLINK, ifinfomsg() + nla_str(IFLA_IFNAME, name), what=f"look up {name}")
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return Link.parse(got[0]) if got else None

    def links(self) -> list[Link]:
        return [Link.parse(p) for p in self.request(RTM_GETLINK, ifinfomsg(), flags=NLM_F_DUMP,
                                                    what="list interfaces")]

    def create_bridge(self, name: str, *, up: bool = True) -> None:
        self.request(RTM_NEWLINK,
                     ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP) + nla_str(IFLA_IFNAME, name)
                     + nla_nest(IFLA_LINKINFO, nla_str(IFLA_INFO_KIND, "bridge")),
                     flags=NLM_F_CREATE | NLM_F_EXCL, what=f"create bridge {name}")

    def create_veth(self, name: str, peer: str, *, peer_netns_fd: int | None = None, peer_mac: str = "",
                    master: int = 0, up: bool = True) -> None:
        """A veth pair: ``name`` here (on bridge ``master`` if given, up if ``up``), ``peer``
        created directly in the namespace ``peer_netns_fd`` (so it never appears in ours). The
        peer stays down: it cannot come up in the same request (its ndo_open runs before the
        pair is linked, ENOTCONN); bring it up with set_link from its namespace."""
        peer_attrs = nla_str(IFLA_IFNAME, peer)
        if peer_mac:
            peer_attrs += nla(IFLA_ADDRESS, mac_bytes(peer_mac))
        if peer_netns_fd is not None:
            peer_attrs += nla_u32(IFLA_NET_NS_FD, peer_netns_fd)
        body = (ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP) + nla_str(IFLA_IFNAME, name)
                + (nla_u32(IFLA_MASTER, master) if master else b"")
                + nla_nest(IFLA_LINKINFO, nla_str(IFLA_INFO_KIND, "veth"),
                           nla_nest(IFLA_INFO_DATA,
                                    nla(VETH_INFO_PEER, ifinfomsg() + peer_attrs))))
        self.request(RTM_NEWLINK, body, flags=NLM_F_CREATE | NLM_F_EXCL, what=f"create veth {name}")

    def set_link(self, index: int, *, up: bool | None = None, alias: str | None = None) -> None:
        attrs = nla_str(IFLA_IFALIAS, alias) if alias is not None else b""
        self.request(RTM_NEWLINK, ifinfomsg(index=index, flags=IFF_UP if up else 0,
                                            change=IFF_UP if up is not None else 0) + attrs,
                     what=f"configure interface {index}")

    def set_hairpin(self, index: int, on: bool = True) -> None:
        """Hairpin mode of a bridge port (traffic may leave by the port it came in)."""
        self.request(RTM_NEWLINK, ifinfomsg(index=index)
                     + nla_nest(IFLA_LINKINFO, nla_str(IFLA_INFO_SLAVE_KIND, "bridge"),
                                nla_nest(IFLA_INFO_SLAVE_DATA, nla_u8(IFLA_BRPORT_MODE, int(on)))),
                     what=f"hairpin mode on interface {index}")

    def delete_link(self, *, index: int = 0, name: str = "") -> bool:
        """Delete an interface (a veth takes its peer along); False if there was none."""
        body = ifinfomsg(index=index) + (nla_str(IFLA_IFNAME, name) if name and not index else b"")
        try:
            self.request(RTM_DELLINK, body, what=f"delete interface {name or index}")
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -- addresses and routes
    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        raw = ipaddress.IPv4Address(address).packed
        self.request(RTM_NEWADDR, ifaddrmsg(index=index, prefixlen=prefixlen)
                     + nla(IFA_LOCAL, raw) + nla(IFA_ADDRESS, raw),
                     flags=NLM_F_CREATE | NLM_F_EXCL, what=f"add address {address}/{prefixlen}")

    def addresses(self, index: int = 0) -> list[Address]:
        """IPv4 addresses (of interface ``index`` only, if given)."""
        got = [Address.parse(p) for p in self.request(RTM_GETADDR, ifaddrmsg(index=0, prefixlen=0),
                                                      flags=NLM_F_DUMP, what="list addresses")]
        return [a for a in got if not index or a.index == index]

    def routes(self, table: int = RT_TABLE_MAIN) -> list[Route]:
        """IPv4 routes of ``table`` (what ``ip -4 route show`` lists)."""
        got = [Route.parse(p) for p in self.request(RTM_GETROUTE, rtmsg(table=0, protocol=0, type=0),
                                                    flags=NLM_F_DUMP, what="list routes")]
        return [r for r in got if r.table == table]

    def add_default_route(self, gateway: str, *, oif: int = 0) -> None:
        self.request(RTM_NEWROUTE, rtmsg() + nla(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
                     + (nla_u32(RTA_OIF, oif) if oif else b""),
                     flags=NLM_F_CREATE | NLM_F_EXCL, what=f"add default route via {gateway}")
