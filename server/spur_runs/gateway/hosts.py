"""Against DNS rebinding: a web page on evil.example whose name then resolves
to 127.0.0.1 can make the browser send requests to a server on loopback, and
read the answers (same origin, as far as the browser knows). Such requests
carry `Host: evil.example`. A server with tokens is safe (the page has
none); one without tokens, on loopback, answers only its own names.

421 Misdirected Request, not 403: the request is not forbidden to its
sender, it names an authority this server is not configured to answer for,
which is what RFC 9110 (15.5.20) gives 421 for. The body is a
google.rpc.Status, as for every other error.
"""

from __future__ import annotations

from aiohttp import web
from google.rpc import code_pb2, status_pb2

from ..config import Config, parse_address
from ..trust import LOOPBACK_HOSTS, host_name, is_loopback_bind, parse_hosts
from .replies import error


class HostCheck:
    def __init__(self, allowed: frozenset[str] | None) -> None:
        self.allowed = allowed  # None: any Host

    @classmethod
    def from_config(cls, config: Config) -> HostCheck:
        assert config.http_address is not None
        tokens = config.reader_tokens_file or config.admin_tokens_file
        bind, _port = parse_address(config.http_address, "http_address")
        if tokens or not is_loopback_bind(bind):
            return cls(None)
        return cls(LOOPBACK_HOSTS | parse_hosts(config.http_allowed_hosts))

    def refusal(self, request: web.BaseRequest, authority: str | None) -> web.Response | None:
        """None if the request's Host may be answered, else the answer. An
        `authority` from an absolute-form target (target.py) is checked, and
        the Host header beside it too: RFC 9112 has the target's win, but
        an intermediary may pass on either, so both must be ours."""
        if self.allowed is None:
            return None
        names = [n for n in (authority, request.headers.get("Host")) if n is not None]
        refused = [n for n in names if host_name(n) not in self.allowed]
        if not refused:  # (none at all: HTTP/1.0 without Host, no browser's)
            return None
        header = refused[0]
        status = status_pb2.Status(
            code=code_pb2.PERMISSION_DENIED,
            message=f"this server does not answer for Host {header[:100]!r}: without tokens, "
            "on loopback, it answers localhost, 127.0.0.1, [::1] and --http-allowed-hosts",
        )
        return error(status, 421)
