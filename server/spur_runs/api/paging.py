"""Opaque page tokens (page sizes are rules.py's).

A token is the position of the last item of a page (a keyset cursor), bound
to the listing it came from (its *scope*: "runs", "children:R5", ..., with a
digest of the listing's filters, see filtered_scope) and
sealed with a checksum, so that a token that was cut, edited or replayed on
another listing is rejected as INVALID_ARGUMENT instead of silently paging
something else.

Tokens are unsigned cursors, not credentials. The checksum's key is a
constant of this public source, so anyone can make a token that passes it,
and that is harmless: a token only says where a listing resumes, every run
it could reach is one its caller may read by paging anyway (authorization
is per RPC, auth.py), and each decoded value is range-checked here before
any query sees it (an out-of-range one is INVALID_ARGUMENT, never a
database error). A secret key would add a file to deploy, share between
replicas and rotate, and protect nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from ..errors import InvalidArgument
from .convert import naive_utc

_VERSION = 1
# Not a secret (see above); kept byte for byte so that tokens issued by an
# older version of the service stay valid across an upgrade.
_CHECKSUM_KEY = b"spur-runs page token v1"
_MAC_BYTES = 8

# The range of a cursor's _intid: a 64-bit signed integer, what SQLite's
# rowid holds (PySpur's 32-bit PostgreSQL keys fit in it; storage compares
# the cursor as a BIGINT there). PySpur's ids start at 1; 0 and below are
# rows another tool wrote, listed like any other.
INTID_MIN = -(2**63)
INTID_MAX = 2**63 - 1


def filtered_scope(listing: str, filters: dict[str, Any]) -> str:
    """The scope of a filtered listing: `listing` and a digest of its filters,
    so that a token replayed with other filters fails its checksum. `filters`
    must be canonical (sets sorted, unset filters left out or at one value):
    equal filters must give equal scopes. What only shapes the page (its
    size, the view) stays out: it may change from page to page."""
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()
    return f"{listing}?{digest}"


def _mac(scope: str, payload: bytes) -> bytes:
    return hashlib.blake2b(
        scope.encode() + b"\0" + payload, key=_CHECKSUM_KEY, digest_size=_MAC_BYTES
    ).digest()


def encode(scope: str, position: list[Any]) -> str:
    payload = json.dumps([_VERSION, *position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_mac(scope, payload) + payload).decode().rstrip("=")


def decode(scope: str, token: str) -> list[Any]:
    """The position sealed in `token`; InvalidArgument unless it is intact and
    was issued for `scope`."""
    if len(token) > 512:
        raise InvalidArgument("page_token", "is not a token this service issued")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidArgument("page_token", "is not a token this service issued") from None
    mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, _mac(scope, payload)):
        raise InvalidArgument("page_token", "is damaged or belongs to another listing or filter")
    try:
        decoded = json.loads(payload)
    except ValueError:
        raise InvalidArgument("page_token", "is not a token this service issued") from None
    if not isinstance(decoded, list) or not decoded or decoded[0] != _VERSION:
        raise InvalidArgument("page_token", "was issued by another version of the service")
    return decoded[1:]


# Run listings are ordered by (start_time DESC, _intid DESC) with runs that
# have no start_time last; a cursor is the (start_time, _intid) of the last
# run of a page, start_time None meaning "in the runs without a start_time".


def encode_run_cursor(scope: str, start_time: datetime | None, intid: int) -> str:
    if start_time is not None:
        # Read with an offset (a database we did not make): as naive UTC,
        # as decode_run_cursor takes it.
        start_time = naive_utc(start_time)
    return encode(scope, [start_time.isoformat() if start_time else None, intid])


def decode_run_cursor(scope: str, token: str) -> tuple[datetime | None, int]:
    position = decode(scope, token)
    if len(position) != 2:
        raise InvalidArgument("page_token", "is not a token this service issued")
    stamp, intid = position
    if stamp is None:
        return None, _intid(intid)
    try:
        # Python's range (years 1 to 9999), which both databases hold.
        start_time = datetime.fromisoformat(stamp)
    except (ValueError, TypeError):
        raise InvalidArgument("page_token", "holds a position that is not a time") from None
    if start_time.tzinfo is not None:
        # Stored times are naive UTC, and so are the positions we issue.
        raise InvalidArgument("page_token", "holds a time with a UTC offset")
    return start_time, _intid(intid)


def encode_intid_cursor(scope: str, intid: int) -> str:
    return encode(scope, [intid])


def decode_intid_cursor(scope: str, token: str) -> int:
    position = decode(scope, token)
    if len(position) != 1:
        raise InvalidArgument("page_token", "is not a token this service issued")
    return _intid(position[0])


def _intid(value: Any) -> int:
    """A cursor's _intid, checked: a database must never see a value its
    integer columns cannot compare with (an INTERNAL error)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument("page_token", "is not a token this service issued")
    if not INTID_MIN <= value <= INTID_MAX:
        raise InvalidArgument(
            "page_token", f"holds a position out of range ({INTID_MIN} to {INTID_MAX})"
        )
    return value
