"""Cross-origin calls from browser pages (--http-cors-origins), as the
Fetch standard's CORS protocol has them.

PySpur's UI calls its Runs API on its own origin, which needs none of this;
a UI served from another origin (PySpur's dev server, a dashboard) does.
Off by default. When on:

- a preflight (OPTIONS with Origin and Access-Control-Request-Method) from
  an allowed origin is answered 204 with the methods this API has and the
  request headers the page asked for, echoed (Access-Control-Allow-Headers);
  from another origin, or asking for headers that are no header names
  (RFC 9110 tokens) or more than MAX_REQUEST_HEADERS of them, 403.
  Headers are not limited to those the gateway reads (Authorization,
  Content-Type, Grpc-Timeout, X-Request-Id, Grpc-Metadata-*): the others are
  ignored, harmlessly, and browser SDKs add their own (X-Requested-With,
  OpenTelemetry's traceparent and tracestate, Sentry's sentry-trace and
  baggage), which were refused (a review, 2026-12-04). PySpur's own app
  allows any header. The list is echoed rather than answered with `*`,
  which is no wildcard for a request with credentials;
- every other answer to an allowed origin carries Access-Control-Allow-Origin
  and exposes Link (the next page of a bare list) and X-Request-Id.

No Access-Control-Allow-Credentials: callers authenticate with a token in
Authorization, which a page sends explicitly; cookies never authenticate
here, so letting pages send them would only widen what a page can do.
"""

from __future__ import annotations

import re

from aiohttp import web
from google.rpc import code_pb2, status_pb2

from ..trust import parse_origins
from .replies import error

_METHODS = "GET, HEAD, DELETE"
# A header name (RFC 9110's token), and how many names, of what length, a
# preflight may ask for: a page sends a few; the echo stays small.
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]{1,100}")
MAX_REQUEST_HEADERS = 64
_EXPOSED = "Link, X-Request-Id"
_MAX_AGE = "600"


class Cors:
    def __init__(self, origins: frozenset[str]) -> None:
        self._any = "*" in origins
        self._origins = origins

    @classmethod
    def from_setting(cls, text: str | None) -> Cors | None:
        origins = parse_origins(text)
        return cls(origins) if origins else None

    def _allowed(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin for `origin`, or None."""
        if self._any:
            return "*"
        return origin if origin.lower() in self._origins else None

    def preflight(self, request: web.BaseRequest) -> web.Response | None:
        """The answer to a preflight, or None for any other request."""
        origin = request.headers.get("Origin")
        method = request.headers.get("Access-Control-Request-Method")
        if request.method != "OPTIONS" or origin is None or method is None:
            return None
        allowed = self._allowed(origin)
        # Each name once, in the order asked (the Fetch standard sends them
        # lowercased and sorted).
        asked = list(
            dict.fromkeys(
                name.strip().lower()
                for name in request.headers.get("Access-Control-Request-Headers", "").split(",")
                if name.strip()
            )
        )
        refused = [name for name in asked if not _NAME.fullmatch(name)]
        why: str | None = None
        if allowed is None:
            why = f"origin {origin[:100]!r} may not call this API (--http-cors-origins)"
        elif refused:
            why = f"request headers {', '.join(refused)[:200]!r} are no header names"
        elif len(asked) > MAX_REQUEST_HEADERS:
            why = f"more than {MAX_REQUEST_HEADERS} request headers asked for"
        if allowed is None or why is not None:
            return error(
                status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=why or ""),
                403,
                {"Vary": "Origin"},
            )
        headers = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Max-Age": _MAX_AGE,
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }
        if asked:
            headers["Access-Control-Allow-Headers"] = ", ".join(asked)
        return web.Response(status=204, headers=headers)

    def headers(self, request: web.BaseRequest) -> dict[str, str]:
        """The headers an answer to `request` carries for CORS."""
        origin = request.headers.get("Origin")
        allowed = self._allowed(origin) if origin is not None else None
        if allowed is None:
            return {"Vary": "Origin"}  # an answer that differs by Origin
        return {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Expose-Headers": _EXPOSED,
            "Vary": "Origin",
        }


def add_headers(response: web.StreamResponse, headers: dict[str, str]) -> None:
    """Put `headers` on a response not yet sent, Vary merged with its own."""
    for name, value in headers.items():
        present = response.headers.get(name) if name == "Vary" else None
        response.headers[name] = f"{present}, {value}" if present else value
