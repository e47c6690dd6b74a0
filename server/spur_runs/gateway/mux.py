"""One HTTP request to one answer (grpc-gateway's runtime/mux.go and
handler.go): the path prefix, the gateway's own documents (/openapi.json,
/metrics), the route, the request message (transcode.py), the call through
a transport (transport.py), and the response rendered as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc.aio
from aiohttp import web
from google.rpc import code_pb2, status_pb2

from ..api.spliced import Spliced
from ..errors import InvalidArgument
from ..rpc.status import to_status
from ..telemetry.metrics import Metrics
from ..telemetry.metrics_http import METRICS_PATH, metrics_response
from ..trust import Network
from .access import called, not_called, peer
from .links import next_link, pages_by_link
from .metadata import TIMEOUT_HEADER, outgoing_metadata, parse_timeout
from .render import Renderer
from .replies import JSON, error, failed, not_allowed, response_headers
from .routes import Match, Route, Router, normalize_escapes
from .streaming import stream
from .transcode import RequestBuilder
from .transport import DONE_KEY, ChannelTransport, Transport, refused_unseen

OPENAPI_PATH = "/openapi.json"


class Endpoint:
    """One route, with what it takes to serve it."""

    def __init__(self, route: Route, renderer: Renderer) -> None:
        output = route.method.output_type
        self.route = route
        self.builder = RequestBuilder(route)
        # An empty response (DeleteRun's) is 204 No Content, not 200 "{}".
        self.no_content = not output.fields and not route.response_body
        self.render = renderer.response(output, route.response_body)
        # A bare list (PySpur's `GET /run/`): its next page goes in a Link header.
        self.links = pages_by_link(route.method, route.response_body)


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise InvalidArgument("body", f"is larger than {limit} bytes")
    chunks, size = [], 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            raise InvalidArgument("body", f"is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(
    endpoint: Endpoint,
    response: Any,
    headers: dict[str, str] | None,
    raw_path: str,
    query: str,
) -> web.Response:
    if endpoint.no_content:
        return web.Response(status=204, headers=headers)
    message = response.message if type(response) is Spliced else response
    if endpoint.links and message.next_page_token:
        headers = {
            **(headers or {}),
            "Link": next_link(raw_path, query, message.next_page_token),
        }
    return web.Response(body=endpoint.render(response), content_type=JSON, headers=headers)


class Mux:
    """The routes of the gateway; `bind` gives it its transports, once the
    event loop (and with it the channel) exists."""

    def __init__(
        self,
        routes: Sequence[Route],
        prefix: str,
        openapi_body: bytes,
        metrics: Metrics | None,
        max_body: int,
        trusted: tuple[Network, ...],
    ) -> None:
        # PySpur's paths (a response_body) answer PySpur's JSON forms.
        renderers = {False: Renderer(), True: Renderer(pyspur=True)}
        endpoints = [Endpoint(route, renderers[bool(route.response_body)]) for route in routes]
        self._router: Router[Endpoint] = Router([(e.route, e) for e in endpoints])
        self._prefix = prefix
        self._openapi_body = openapi_body
        self._metrics = metrics  # GET /metrics (metrics_http.py)
        self._max_body = max_body
        self._trusted = trusted
        self._unary: Transport | None = None
        self._streams: ChannelTransport | None = None

    def bind(self, unary: Transport, streams: ChannelTransport) -> None:
        self._unary = unary
        self._streams = streams

    async def respond(
        self, request: web.BaseRequest, extra: dict[str, str] | None = None
    ) -> web.StreamResponse:
        """The answer to `request`; a stream sends `extra` headers (app.py's
        CORS) with its own, as it sends them before returning."""
        raw_path, _, query = request.raw_path.partition("?")
        # "%61pi" is "api" to the prefix too, as to the routes (and PySpur).
        path = normalize_escapes(raw_path) if "%" in raw_path else raw_path
        if self._prefix:
            if path != self._prefix and not path.startswith(self._prefix + "/"):
                return error(
                    status_pb2.Status(
                        code=code_pb2.NOT_FOUND,
                        message=f"no route for {path[:200]}; every path starts with {self._prefix}",
                    )
                )
            path = path[len(self._prefix) :] or "/"
        # HEAD is GET without the body (RFC 9110 9.3.2; PySpur's Starlette
        # serves it so): aiohttp sends a HEAD answer's headers, its
        # Content-Length included, and leaves its body out.
        head = request.method == "HEAD"
        verb = "GET" if head else request.method
        if path == OPENAPI_PATH:
            if verb != "GET":
                return not_allowed(path, ["GET"])
            return web.Response(body=self._openapi_body, content_type=JSON)
        if path == METRICS_PATH and self._metrics is not None:
            if verb != "GET":
                return not_allowed(path, ["GET"])
            return await metrics_response(self._metrics)
        try:
            found = self._router.match(verb, path)
        except UnicodeDecodeError:
            return error(to_status(InvalidArgument("path", "is not UTF-8 once percent-decoded")))
        if found is None:
            return error(
                status_pb2.Status(code=code_pb2.NOT_FOUND, message=f"no route for {path[:200]}")
            )
        if isinstance(found, list):
            return not_allowed(path, found)
        if head and found.payload.route.streaming:
            # A stream's headers come when the call has started, and its end
            # when the run's does: a HEAD would hold a watch open for nothing.
            return not_allowed(path, ["GET"], head=False)
        try:
            return await self._call(request, found, raw_path, query, extra)
        except Exception as bug:  # noqa: BLE001 - a bug: a generic 500, the traceback to the log
            not_called()  # (the call's line, if any, does not say 500)
            return error(to_status(bug, found.payload.route.grpc_path))

    async def _call(
        self,
        request: web.BaseRequest,
        found: Match[Endpoint],
        raw_path: str,
        query: str,
        extra: dict[str, str] | None,
    ) -> web.StreamResponse:
        endpoint = found.payload
        route = endpoint.route
        try:
            timeout_header = request.headers.get(TIMEOUT_HEADER)
            timeout = parse_timeout(timeout_header) if timeout_header is not None else None
            metadata = tuple(
                outgoing_metadata(
                    request.headers.items(), request.remote, request.host, self._trusted
                )
            )
            body = await _read_body(request, self._max_body) if route.body else b""
            message = endpoint.builder.build(found.variables, query, body)
        except InvalidArgument as bad:
            return error(to_status(bad))
        # Cancelling this task (the client went away: handler_cancellation)
        # cancels the call, and the server sees its RPC cancelled.
        # From here the answer is the call's, and so is its access line.
        called()
        if route.streaming:
            assert self._streams is not None
            call = self._streams.stream(
                route.grpc_path, message, timeout=timeout, metadata=metadata
            )
            return await stream(request, endpoint.render, call, extra)
        assert self._unary is not None
        try:
            reply = await self._unary.unary(
                route.grpc_path, message, timeout=timeout, metadata=metadata, peer=peer(request)
            )
        except grpc.aio.AioRpcError as call_error:
            if refused_unseen(call_error):
                not_called()  # no call line stands for it: the gateway's own
            return failed(call_error)
        if reply.done is None:
            headers = response_headers(reply.initial, reply.trailing)
            return _answer(endpoint, reply.response, headers, raw_path, query)
        try:
            headers = response_headers(reply.initial, reply.trailing)
            answer = _answer(endpoint, reply.response, headers, raw_path, query)
        except BaseException:
            reply.done()  # no answer to write: the call ends now
            raise
        answer[DONE_KEY] = reply.done  # app.py ends it once the answer is written
        return answer
