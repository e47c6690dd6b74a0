"""HTTP request headers -> gRPC call metadata and timeout, as grpc-gateway
forwards them (runtime/context.go), so that an interceptor sees an HTTP
caller the way it would behind grpc-gateway:

- `Authorization` -> `authorization`;
- `Grpc-Metadata-Foo` -> `foo` (a `-Bin` key's value is base64 and is sent
  as bytes);
- the IANA permanent request headers (Accept, User-Agent, ...) ->
  `grpcgateway-accept`, `grpcgateway-user-agent`, ..., left out where the
  value is not printable ASCII, as grpc-gateway does (but Host, which Go's
  net/http keeps out of the headers, so grpc-gateway never sends it: it is
  `x-forwarded-host`);
- `X-Request-Id` -> `x-request-id` (the id the access log and the
  answer carry; observe.py);
- `x-forwarded-host` (the Host) and `x-forwarded-for` (the client's address,
  appended to the X-Forwarded-For it sent if it is a trusted proxy:
  --trusted-proxies; anyone else's X-Forwarded-For and X-Forwarded-Host are
  ignored, for the access log's forwarded_for must not be the caller's say);
  `Grpc-Metadata-X-Forwarded-For` / `-Host` / `-Spur-Runs-Gateway` are
  refused (400): those keys are the gateway's to set; the last marks the
  gateway's calls (trust.gateway_mark);
- `Grpc-Timeout` (gRPC's own format: up to 8 digits and a unit H M S m u n)
  -> the call's deadline, at most MAX_TIMEOUT.

The whole is bounded by METADATA_BUDGET, below grpc's own limit on the
metadata a server receives (8 KiB, then refused at random up to 16 KiB),
which WatchRun's calls meet through the channel: the informational
`grpcgateway-*` keys are left out first (a browser's large cookies), and
what is still too large is a 400 on every route alike, where WatchRun got
a random 429 with grpc's own text and unary routes none.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from ..errors import InvalidArgument
from ..trust import GATEWAY_KEY, Network, gateway_mark, is_trusted

METADATA_PREFIX = "grpc-metadata-"
TIMEOUT_HEADER = "Grpc-Timeout"

# The longest deadline given to a call (99,999,999 s, about 3 years: the
# largest gRPC's own header writes in seconds). A longer one, up to
# 99999999H, overflows grpc's int64 nanoseconds (an instant
# DEADLINE_EXCEEDED on a channel); a deadline years away is none in effect.
MAX_TIMEOUT = 99_999_999.0
# Metadata keys the gateway sets itself.
_GATEWAY_KEYS = frozenset(("x-forwarded-for", "x-forwarded-host", GATEWAY_KEY))

_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# What gRPC accepts as a metadata key, and as the value of a non-binary key.
_KEY = re.compile(r"[0-9a-z_.-]+")
_VALUE = re.compile(r"[\x20-\x7e]*")

_PERMANENT = frozenset(
    h.lower()
    for h in (
        "Accept", "Accept-Charset", "Accept-Language", "Accept-Ranges", "Cache-Control",
        "Content-Type", "Cookie", "Date", "Expect", "From", "If-Match",
        "If-Modified-Since", "If-None-Match", "If-Schedule-Tag-Match", "If-Unmodified-Since",
        "Max-Forwards", "Origin", "Pragma", "Referer", "User-Agent", "Via", "Warning",
    )
)  # fmt: skip

Metadata = list[tuple[str, str | bytes]]

# Bytes of metadata a call may get from HTTP, counted as HTTP/2 counts a
# header (name, value and 32): grpc's 8 KiB, less what the channel adds
# (path, authority, content-type, te, user-agent, grpc-timeout).
METADATA_BUDGET = 7 * 1024
_INFORMATIONAL = "grpcgateway-"


def _size(pairs: Metadata) -> int:
    return sum(len(key) + len(value) + 32 for key, value in pairs)


def parse_timeout(text: str) -> float:
    """Seconds of a Grpc-Timeout header value, at most MAX_TIMEOUT;
    InvalidArgument if malformed."""
    found = _TIMEOUT.fullmatch(text)
    if found is None:
        raise InvalidArgument(
            TIMEOUT_HEADER, f"{text[:40]!r} is not a gRPC timeout such as 500m or 2S"
        )
    return min(int(found.group(1)) * _UNITS[found.group(2)], MAX_TIMEOUT)


def outgoing_metadata(
    headers: Iterable[tuple[str, str]],
    remote: str | None,
    host: str | None,
    trusted: tuple[Network, ...] = (),
) -> Metadata:
    """The metadata of the call for an HTTP request's headers; X-Forwarded-*
    count only from a `remote` in `trusted`."""
    pairs: Metadata = []
    forwarded_for = forwarded_host = None
    for name, value in headers:
        key = name.lower()
        if key == "authorization":
            pairs.append((key, _text(name, value)))
        elif key.startswith(METADATA_PREFIX):
            target = key[len(METADATA_PREFIX) :]
            if not _KEY.fullmatch(target) or target.startswith("grpc-"):
                raise InvalidArgument(name, "is not a usable gRPC metadata key")
            if target in _GATEWAY_KEYS:
                raise InvalidArgument(name, "is set by the gateway, not by callers")
            pairs.append(
                (target, _binary(name, value) if target.endswith("-bin") else _text(name, value))
            )
        elif key in _PERMANENT:
            # An informational copy gRPC cannot carry (a browser's UTF-8
            # cookie) is left out, as grpc-gateway skips it, rather than
            # failing the request over a header nobody asked to forward.
            if _VALUE.fullmatch(value):
                pairs.append(("grpcgateway-" + key, value))
        elif key == "x-request-id":
            pairs.append((key, _text(name, value)))
        elif key == "x-forwarded-for":
            forwarded_for = value
        elif key == "x-forwarded-host":
            forwarded_host = value
    if not is_trusted(remote, trusted):
        forwarded_host = None
    host = forwarded_host or host
    if host:
        pairs.append(("x-forwarded-host", _text("Host", host)))
    chain = forwarded_chain(forwarded_for, remote, trusted)
    if chain is not None:
        pairs.append(("x-forwarded-for", _text("X-Forwarded-For", chain)))
        pairs.append(gateway_mark())  # (what makes the access log believe it)
    if _size(pairs) > METADATA_BUDGET:
        pairs = [pair for pair in pairs if not pair[0].startswith(_INFORMATIONAL)]
        if _size(pairs) > METADATA_BUDGET:
            raise InvalidArgument(
                "headers",
                f"carry more than {METADATA_BUDGET} bytes of gRPC metadata "
                "(Authorization, X-Request-Id, Grpc-Metadata-*)",
            )
    return pairs


def forwarded_chain(
    forwarded_for: str | None, remote: str | None, trusted: tuple[Network, ...]
) -> str | None:
    """The access log's forwarded_for of an HTTP caller at `remote` that
    sent `forwarded_for` (its last X-Forwarded-For): the client's address,
    after the chain it sent if it is a trusted proxy; None without one."""
    if not remote:
        return None
    if forwarded_for and is_trusted(remote, trusted):
        return f"{forwarded_for}, {remote}"
    return remote


def _text(name: str, value: str) -> str:
    if not _VALUE.fullmatch(value):
        raise InvalidArgument(name, "holds characters that gRPC metadata cannot carry")
    return value


def _binary(name: str, value: str) -> bytes:
    try:
        padded = value + "=" * (-len(value) % 4)
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidArgument(name, "is not base64") from None
