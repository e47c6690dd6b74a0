"""The access line of every HTTP answer the gateway gives without a gRPC call.

Every call to the gRPC server leaves one line on the `spur_runs.access`
logger (rpc/observe.py), HTTP callers' calls included: method, code,
duration, peer, request id, forwarded_for. The answers the gateway gives on
its own left none: a path no route has (404), a Host it does not answer
(421), a query, body or header it cannot read (400), a verb the path does
not take (405), an unparsable request (protocol.py), the probes, /metrics,
/openapi.json, CORS preflights. A client could probe or hammer the port
unseen. Each of those answers now leaves one line in the same format, with
`method` as the verb and the path (`GET /run/R1/nope`), `code` the code of
the google.rpc.Status in its body (OK for a success), and `http_status`.

Bounded as the call lines are: one line per request, at INFO, neither
sampled nor rate-limited (the access log is neither, so a client's 404s
cost the log what its GetRuns cost). Nothing of the request but its verb,
its path (no query: it holds what a body would; cut at _MAX_PATH, anything
unprintable escaped, so that no line can be forged), the request id and
the forwarded_for chain the call lines carry; never a header's value
(Authorization), never a body.

An answer rendered from a call (mux.py, probes.py) marks it by `called()`:
the call's own line stands for it, with its code.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time

from aiohttp import web

from ..rpc.observe import REQUEST_ID_KEY, access_log, log_access, request_id_for
from ..trust import Network
from .metadata import forwarded_chain
from .replies import StatusReply

_CALLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "spur_runs_http_called", default=False
)
# As the gateway's error messages quote a path: at most this much.
_MAX_PATH = 200
_MAX_VERB = 20
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


def called() -> None:
    """The request being answered has made a gRPC call, whose access line
    stands for the answer."""
    _CALLED.set(True)


def not_called() -> None:
    """The answer is the gateway's own after all (a bug's 500 after the call)."""
    _CALLED.set(False)


def peer(request: web.BaseRequest) -> str:
    """The HTTP client's address as grpc names a peer ("ipv4:1.2.3.4:5678")."""
    return transport_peer(request.transport)


def transport_peer(transport: asyncio.BaseTransport | None) -> str:
    where = transport.get_extra_info("peername") if transport else None
    if not isinstance(where, tuple) or len(where) < 2:
        return "unknown"
    host, port = where[0], where[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _escaped(found: re.Match[str]) -> str:
    point = ord(found.group())
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def _shown(text: str, limit: int) -> str:
    """`text` cut at `limit`, each unprintable or non-ASCII character (a
    space too: it separates the line's fields) escaped."""
    shown = _UNPRINTABLE.sub(_escaped, text[:limit])
    return shown + ("..." if len(text) > limit else "")


class HttpAccess:
    """Writes the lines; `trusted`: --trusted-proxies, whose X-Forwarded-For
    counts (as for the calls' forwarded_for: metadata.py)."""

    def __init__(self, trusted: tuple[Network, ...]) -> None:
        self._trusted = trusted

    def begin(self) -> float:
        """At a request's start (nothing called yet): the time it began."""
        _CALLED.set(False)
        return time.perf_counter()

    def answered(
        self, request: web.BaseRequest, response: web.StreamResponse, began: float
    ) -> None:
        """The line of `response`, unless a call's line stands for it. Its
        request id goes back in X-Request-Id, as a call's does."""
        if _CALLED.get():
            return
        request_id = request_id_for(request.headers.get(REQUEST_ID_KEY))
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        if not access_log.isEnabledFor(logging.INFO):
            return
        forwarded = request.headers.getall("X-Forwarded-For", [])
        chain = forwarded_chain(forwarded[-1] if forwarded else None, request.remote, self._trusted)
        line(
            f"{_shown(request.method, _MAX_VERB)} "
            f"{_shown(request.raw_path.partition('?')[0], _MAX_PATH)}",
            response,
            time.perf_counter() - began,
            peer(request),
            request_id,
            None if chain is None else _shown(chain, _MAX_PATH),
        )


def malformed(request: web.BaseRequest, response: web.StreamResponse, error: str) -> None:
    """The line of a request aiohttp could not parse (protocol.py): its verb
    and path are unknown ("-"), its headers not to be trusted (no request
    id of its own, no X-Forwarded-For); `error` names what was wrong."""
    request_id = request_id_for(None)
    response.headers["X-Request-Id"] = request_id
    if access_log.isEnabledFor(logging.INFO):
        line("-", response, 0.0, peer(request), request_id, request.remote, error=error)


def refused_head(transport: asyncio.BaseTransport, response: web.StreamResponse) -> str:
    """The line of a request whose head was refused before aiohttp parsed
    it (protocol.py), as malformed()'s; returns its request id."""
    request_id = request_id_for(None)
    if access_log.isEnabledFor(logging.INFO):
        where = transport_peer(transport)
        line("-", response, 0.0, where, request_id, None, error="HeadTooLarge")
    return request_id


def line(
    method: str,
    response: web.StreamResponse,
    seconds: float,
    where: str,
    request_id: str,
    forwarded_for: str | None,
    **more: str,
) -> None:
    if isinstance(response, StatusReply):
        code = response.code.name
    else:  # (a success, or an error without a Status: none the gateway gives)
        code = "OK" if response.status < 400 else "UNKNOWN"
    log_access(
        method, code, seconds, where, request_id, forwarded_for, http_status=response.status, **more
    )
