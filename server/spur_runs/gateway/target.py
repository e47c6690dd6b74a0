"""A request target in absolute-form, `GET http://host:8080/run/R1 HTTP/1.1`.

RFC 9112 (3.2.2) has a server accept it, although clients send it only to
proxies, and take the host from it, ignoring the Host header. aiohttp
parses it but leaves it whole in `raw_path`, which the router matches, so
every such request was a 404. It is turned here into the origin-form
request it stands for (aiohttp's public `clone`), its authority as the host
that the Host check (hosts.py) and `x-forwarded-host` see.
"""

from __future__ import annotations

import re

from aiohttp import web
from yarl import URL

# scheme "://" authority, then the path and query (RFC 3986's hier-part).
_ABSOLUTE = re.compile(r"(?i:https?)://([^/?#]*)([^#]*)")


def origin_form(request: web.BaseRequest) -> tuple[web.BaseRequest, str | None]:
    """The request in origin-form and the authority its target named (None:
    it named none, its Host header is the authority)."""
    found = _ABSOLUTE.fullmatch(request.raw_path)
    if found is None:
        return request, None
    authority, rest = found.groups()
    if not rest.startswith("/"):
        rest = "/" + rest  # "http://h" and "http://h?q" mean the path "/"
    return request.clone(rel_url=URL(rest, encoded=True), host=authority), authority
