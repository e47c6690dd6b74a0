"""Whom the HTTP port trusts: the Host names it answers (against DNS
rebinding) and the proxies whose X-Forwarded-For it believes. Plain parsing,
shared by config.py (to refuse a bad list at start-up) and the gateway.
And what one client is (`address_of`), with the per-client bookkeeping the
bounds on clients share: suspects for a while, streams held.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The HTTP gateway's x-forwarded-for is its own say about its caller; a gRPC
# caller's x-forwarded-for metadata is only the caller's. The gateway marks
# its calls with this process's secret, and the access log believes
# x-forwarded-for only beside it (observe.py).
GATEWAY_KEY = "spur-runs-gateway"
_GATEWAY_MARK = secrets.token_hex(16)

# Host names a browser can only reach on this machine: a page on another
# name that resolves to 127.0.0.1 (DNS rebinding) sends its own name.
LOOPBACK_HOSTS = frozenset(("localhost", "127.0.0.1", "[::1]"))

# A host as a Host header names it: a DNS name, an IPv4 address, or an IPv6
# address in brackets; an optional :port.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?")


def _items(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def host_name(header: str) -> str | None:
    """The host of a Host header, lowercased, without its port; None if it
    is not a host[:port]."""
    found = _HOST.fullmatch(header.strip().lower())
    return found.group(1).rstrip(".") if found else None


def parse_hosts(text: str | None) -> frozenset[str]:
    """--http-allowed-hosts: comma-separated host names (a port, if given,
    is ignored: any port of an allowed host is allowed)."""
    hosts = set()
    for item in _items(text):
        host = host_name(item)
        if host is None:
            raise ValueError(f"{item[:80]!r} is not a host name")
        hosts.add(host)
    return frozenset(hosts)


# A browser's Origin: scheme://host[:port], nothing after.
_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")


def parse_origins(text: str | None) -> frozenset[str]:
    """--http-cors-origins: comma-separated origins (https://ui.example:3000),
    or * for any."""
    origins = set()
    for item in _items(text):
        origin = item.lower().rstrip("/")
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"{item[:80]!r} is not an origin such as https://ui.example:3000 (or *)"
            )
        origins.add(origin)
    return frozenset(origins)


def parse_proxies(text: str | None) -> tuple[Network, ...]:
    """--trusted-proxies: comma-separated addresses or CIDR networks."""
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item[:80]!r} is not an address or a CIDR network") from None
    return tuple(networks)


def is_trusted(address: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether a peer's address (as the socket gives it) is in `networks`."""
    if not address or not networks:
        return False
    try:
        peer = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in network for network in networks)


def is_loopback_bind(host: str) -> bool:
    """Whether a listening host (of --http-address) is a loopback one."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gateway_mark() -> tuple[str, str]:
    """The metadata pair of the gateway's own calls."""
    return GATEWAY_KEY, _GATEWAY_MARK


def from_gateway(mark: str | None) -> bool:
    # compare_digest refuses a str beyond ASCII (TypeError), which a raw
    # HTTP/2 caller can send as this key's value; none is the mark.
    return mark is not None and mark.isascii() and hmac.compare_digest(mark, _GATEWAY_MARK)


def address_of(peer: str) -> str:
    """The client of a grpc peer, what per-client bounds count by
    (rpc/arrival.py, api/senders.py, health and reflection): its address
    without the port, "ipv4:10.0.0.7:5123" -> "ipv4:10.0.0.7". grpc writes
    an IPv6 peer percent-encoded ("ipv6:%5B::1%5D:5123"); an IPv4-mapped one
    counts as its IPv4 address. An IPv6 client is its whole address, not
    its /64: on Kubernetes a node's pods may share one /64."""
    if peer.startswith("ipv4:"):
        return peer.rpartition(":")[0]
    if not peer.startswith("ipv6:"):
        return peer
    host = unquote(peer[5:]).rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:  # (not grpc's form: keep it whole, without the port)
        return peer.rpartition(":")[0]
    return _named(address)


def _named(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as address_of names a client: an IPv4-mapped IPv6
    address as its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"ipv6:{address}"
        address = address.ipv4_mapped
    return f"ipv4:{address}"


class Suspects:
    """Client addresses under suspicion until a time, at most `limit` of
    them (the oldest forgotten first). Not thread-safe: one owner."""

    def __init__(self, seconds: float, limit: int = 4096) -> None:
        self.seconds = seconds
        self.limit = limit
        self._until: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self._until)

    def mark(self, address: str, now: float) -> None:
        self._until.pop(address, None)  # (re-inserted last: the newest)
        self._until[address] = now + self.seconds
        while len(self._until) > self.limit:
            del self._until[next(iter(self._until))]

    def holds(self, address: str, now: float) -> bool:
        return self._until.get(address, 0.0) > now


def gateway_forwarded_for(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The x-forwarded-for of a call the HTTP gateway made (its mark beside
    it), or None: a gRPC caller's own is only its say. The first of each
    key (the gateway writes one of each, and drops its callers' own)."""
    mark = forwarded = None
    for key, value in metadata or ():
        if key == GATEWAY_KEY and mark is None and isinstance(value, str):
            mark = value
        elif key == "x-forwarded-for" and forwarded is None and isinstance(value, str):
            forwarded = value
    return forwarded if forwarded is not None and from_gateway(mark) else None


def caller_address(peer: str, metadata: Iterable[tuple[str, Any]] | None) -> str:
    """address_of the call's client: for a call the HTTP gateway makes, the
    HTTP client's address, the last of its x-forwarded-for (a watch's peer
    is the gateway's own socket, which names no client); else the peer's."""
    forwarded = gateway_forwarded_for(metadata)
    if forwarded is None:
        return address_of(peer)
    remote = forwarded.rpartition(",")[2].strip()
    try:
        return _named(ipaddress.ip_address(remote))
    except ValueError:  # (not an address: counted as given)
        return remote


class AddressCounts:
    """How much of something each client address holds, within a bound: a
    count (streams) or an amount (bytes of answers, rpc/unsent.py). Not
    thread-safe: its owner calls it under its own lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def held(self, address: str) -> int:
        return self._held.get(address, 0)

    def take(self, address: str, amount: int = 1) -> bool:
        """`amount` more for `address`; False (and none taken) if that would
        pass the bound. An address that holds nothing may always take its
        first: one answer larger than the bound is still one answer."""
        held = self._held.get(address, 0)
        if held and held + amount > self.limit:
            return False
        if amount:
            # Nothing is held as no entry: an entry of 0 (an empty answer,
            # DeleteRun's) was removed by the first of two such releases,
            # and the second raised KeyError in grpc's callback.
            self._held[address] = held + amount
        return True

    def release(self, address: str, amount: int = 1) -> None:
        if not amount:
            return
        left = self._held[address] - amount
        if left:
            self._held[address] = left
        else:
            del self._held[address]
