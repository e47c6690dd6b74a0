"""api/senders.py: which blocked streams a sender pool gives up."""

from __future__ import annotations

from spur_runs.api import senders
from spur_runs.api.senders import NonReaders
from spur_runs.trust import address_of

A1, A2, B = "ipv4:10.0.0.1:1000", "ipv4:10.0.0.1:2000", "ipv4:10.0.0.2:1000"
NOW = 1000.0


def test_a_slow_stream_alone_goes_while_senders_are_free() -> None:
    """A client that reads one stream and not another loses that one only."""
    pool = NonReaders(senders=8)
    streams = [
        ("slow", A1, NOW - senders.SLOW_SECONDS - 1, False),
        ("queued", A1, None, True),
        ("reading", A1, None, False),
    ]
    assert pool.doomed(streams, NOW) == ["slow"]
    assert pool.doomed([("blocked", A1, NOW - 5, False)], NOW) == []  # no suspect made


def test_a_jam_gives_up_the_busy_streams_of_its_connections() -> None:
    """Every sender blocked: the stream blocked over a second goes, with the
    streams of its connection that wait to send, not one that reads (an L7
    proxy's connection carries other clients' streams)."""
    pool = NonReaders(senders=2)
    streams = [
        ("a1-blocked", A1, NOW - senders.SATURATED_SECONDS - 0.1, False),
        ("b-blocked", B, NOW - 0.05, False),  # a sender busy, not for long yet
        ("a1-queued", A1, None, True),
        ("a1-reading", A1, None, False),
        ("a2-queued", A2, None, True),  # another connection of the address
    ]
    assert sorted(pool.doomed(streams, NOW)) == ["a1-blocked", "a1-queued"]


def test_a_jammed_address_is_a_suspect_for_a_while_and_in_jams_only() -> None:
    pool = NonReaders(senders=1)
    pool.doomed([("a1", A1, NOW - senders.SATURATED_SECONDS - 0.1, False)], NOW)
    later = NOW + 1
    briefly = later - senders.SUSPECT_SEND_SECONDS - 0.01
    # In a jam, its other connection's send goes sooner; B's does not.
    assert pool.doomed([("a2", A2, briefly, False), ("a2-q", A2, None, True)], later) == [
        "a2",
        "a2-q",
    ]
    assert pool.doomed([("b", B, briefly, False)], later) == []
    # Out of a jam (a sender free), a suspect's slow reader is no one's concern.
    two = NonReaders(senders=2)
    two.doomed([("a1", A1, NOW - 2, False), ("b", B, NOW - 2, False)], NOW)
    assert two.doomed([("a2", A2, briefly, False)], later) == []
    # ... and it is a suspect for SUSPECT_SECONDS.
    gone = NOW + senders.SUSPECT_SECONDS + 2
    assert pool.doomed([("a2", A2, gone - 0.5, False)], gone) == []


def test_the_gateways_socket_is_never_given_up_whole() -> None:
    """Every HTTP watch comes through one unix socket: only its blocked
    stream goes, and the socket is no suspect."""
    pool = NonReaders(senders=1)
    streams = [("http-blocked", "unix:", NOW - 2, False), ("http-queued", "unix:", None, True)]
    assert pool.doomed(streams, NOW) == ["http-blocked"]
    assert pool.doomed([("http-next", "unix:", NOW + 1 - 0.5, False)], NOW + 1) == []


def test_a_client_is_its_address_as_grpc_names_it() -> None:
    assert address_of("ipv4:10.0.0.7:5123") == "ipv4:10.0.0.7"
    # grpc percent-encodes an IPv6 peer's brackets (grpcio 1.85: "ipv6:%5B::1%5D:33312").
    assert address_of("ipv6:%5B::1%5D:33312") == address_of("ipv6:%5B::1%5D:40000") == "ipv6:::1"
    assert address_of("ipv6:%5B2001:db8::1%5D:80") != address_of("ipv6:%5B2001:db8::2%5D:80")
    assert address_of("ipv6:%5B::ffff:10.0.0.7%5D:80") == "ipv4:10.0.0.7"
    assert address_of("unix:/run/x.sock") == "unix:/run/x.sock"
