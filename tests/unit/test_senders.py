"""api/senders.py: which blocked streams a sender pool gives up."""

from __future__ import annotations

from spur_runs.api import senders
from spur_runs.api.senders import NonReaders
from spur_runs.trust import address_of

A1, A2, B = "ipv4:10.0.0.1:1000", "ipv4:10.0.0.1:2000", "ipv4:10.0.0.2:1000"


def test_a_slow_stream_alone_goes_while_senders_are_free() -> None:
    """A client that reads one stream and not another loses that one only."""
    pool = NonReaders(senders=8)
    now = 1000.0
    streams = [("slow", A1, now - senders.SLOW_SECONDS - 1), ("reading", A1, None)]
    assert pool.doomed(streams, now) == ["slow"]
    assert pool.doomed([("blocked", A1, now - 5)], now) == []  # not a suspect


def test_a_jam_gives_up_whole_connections_and_suspects_their_address() -> None:
    pool = NonReaders(senders=2)
    now = 1000.0
    blocked = now - senders.SATURATED_SECONDS - 0.1
    streams = [
        ("a1-blocked", A1, blocked),
        ("b-blocked", B, now - 0.05),  # every sender busy, but not for long yet
        ("a1-queued", A1, None),
        ("a2-queued", A2, None),
    ]
    assert sorted(pool.doomed(streams, now)) == ["a1-blocked", "a1-queued"]
    # The address is a suspect now: its other connection's send goes sooner.
    later = now + 1
    suspect_send = later - senders.SUSPECT_SEND_SECONDS - 0.01
    assert sorted(pool.doomed([("a2", A2, suspect_send), ("a2-q", A2, None)], later)) == [
        "a2",
        "a2-q",
    ]
    assert pool.doomed([("b", B, suspect_send)], later) == []  # B is not a suspect
    # ... for SUSPECT_SECONDS.
    expired = now + senders.SUSPECT_SECONDS + 2
    assert pool.doomed([("a2", A2, expired - 1)], expired) == []


def test_the_gateways_socket_is_never_given_up_whole() -> None:
    """Every HTTP watch comes through one unix socket: only its blocked
    stream goes, and the socket is no suspect."""
    pool = NonReaders(senders=1)
    now = 1000.0
    streams = [("http-blocked", "unix:", now - 2), ("http-other", "unix:", None)]
    assert pool.doomed(streams, now) == ["http-blocked"]
    assert pool.doomed([("http-next", "unix:", now + 1 - 0.5)], now + 1) == []


def test_a_client_is_its_ipv4_address_or_its_ipv6_64() -> None:
    assert address_of("ipv4:10.0.0.7:5123") == "ipv4:10.0.0.7"
    assert address_of("ipv6:[::ffff:10.0.0.7]:80") == "ipv4:10.0.0.7"
    assert address_of("ipv6:[2001:db8:1:2:3:4:5:6]:9") == address_of("ipv6:[2001:db8:1:2::9]:1")
    assert address_of("ipv6:[2001:db8:1:3::1]:9") == "ipv6:2001:db8:1:3::/64"
    assert address_of("unix:/run/x.sock") == "unix:/run/x.sock"
