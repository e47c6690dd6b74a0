"""A network namespace joined to this one by a veth pair, and a blackhole
between them (test_partition.py).

    with Namespace.create() as ns:      # ip netns add, veth, addresses
        ns.run("iptables", ...)         # a command inside it
        ns.blackhole(port)              # drop TCP to/from host:port, no RST
        ns.heal(port)

Only the namespace's own firewall changes: the host's rules, routes and
other interfaces are left alone, and the namespace and its veth pair are
deleted at the end, whatever happened. Needs root, `ip` (iproute2) and
`iptables` (Debian packages; .ci/run installs them).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from databases import IN_CI


def _sh(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def _require() -> None:
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    reason = ""
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    elif missing:
        reason = f"{', '.join(missing)} not installed (apt-get install iproute2 iptables)"
    if reason:
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of 10.200.0.0/13 that no interface of this machine uses."""
    used = subprocess.run(
        ["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout
    for _ in range(100):
        subnet = ipaddress.IPv4Network((0x0AC80000 + 4 * random.randrange(1 << 17), 30))
        if str(next(subnet.hosts())) not in used:
            return subnet
    raise RuntimeError("no free /30 found")


@dataclass
class Namespace:
    name: str
    host_if: str  # the veth end in this (the host's) namespace
    host_ip: str
    ns_ip: str

    @classmethod
    @contextmanager
    def create(cls) -> Iterator[Namespace]:
        _require()
        tag = uuid.uuid4().hex[:8]
        host_if, ns_if = f"sph{tag}", f"spn{tag}"  # within IFNAMSIZ (15)
        subnet = _free_subnet()
        host_ip, ns_ip = (str(address) for address in subnet.hosts())
        namespace = cls(f"spur-runs-{tag}", host_if, host_ip, ns_ip)
        try:
            _sh("ip", "netns", "add", namespace.name)
            _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _sh("ip", "link", "set", ns_if, "netns", namespace.name)
            _sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
            _sh("ip", "link", "set", host_if, "up")
            namespace.run("ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
            namespace.run("ip", "link", "set", ns_if, "up")
            namespace.run("ip", "link", "set", "lo", "up")
            yield namespace
        finally:
            # Deleting the namespace deletes its veth end, and with it the pair.
            subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True)
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)

    def command(self, *argv: str) -> list[str]:
        """`argv` to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> None:
        _sh(*self.command(*argv))

    def _rules(self, action: str, port: int) -> None:
        # Both directions, silently (DROP, not REJECT): neither end gets a
        # reset or an ICMP error, as when a route vanishes or a peer is gone.
        self.run("iptables", action, "OUTPUT", "-p", "tcp", "-d", self.host_ip,
                 "--dport", str(port), "-j", "DROP")  # fmt: skip
        self.run("iptables", action, "INPUT", "-p", "tcp", "-s", self.host_ip,
                 "--sport", str(port), "-j", "DROP")  # fmt: skip

    def blackhole(self, port: int) -> None:
        """Drop every packet between the namespace and host_ip:port."""
        self._rules("-I", port)

    def heal(self, port: int) -> None:
        self._rules("-D", port)
