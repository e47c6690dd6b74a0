"""The HTTP server: aiohttp on its own thread and event loop, in front of
the RunsServer's gRPC server.

Whatever the gRPC server applies to a call (its interceptors: metrics and
access log, authentication, deadlines, errors; its threads and limits), it
applies to HTTP callers too, in one place. Unary calls run in process with
the server's own interceptors and threads (inprocess.py: a second gRPC hop
cost more than the call); server-streaming calls (WatchRun) go through the
gRPC server over a private unix socket, as grpc-gateway does over TCP. The
socket lives in a fresh 0700 directory, so only this user can reach it; the
HTTP port gets the gRPC port's TLS (tls.http_context), so mutual TLS guards
both alike.

    gateway = HttpGateway(config, services, grpc_server, metrics, local)
    grpc_server.start(); gateway.start()
    ...
    grace = gateway.stop(grace); grpc_server.stop(grace)
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from importlib import metadata as package_metadata
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import code_pb2, status_pb2

from .. import tls
from ..config import Config, parse_address
from ..errors import InvalidArgument
from ..rpc.status import HTTP_STATUS, grpc_code, to_status
from ..telemetry.metrics import Metrics
from ..telemetry.metrics_http import METRICS_PATH, metrics_response
from ..trust import parse_proxies
from .channels import ChannelPool, channel_count
from .comments import load_comments
from .connections import BACKLOG, ConnectionLimits, quiet_accept_errors
from .hosts import HostCheck
from .inprocess import LocalDispatch
from .links import next_link, pages_by_link
from .metadata import TIMEOUT_HEADER, outgoing_metadata, parse_timeout
from .openapi import build_openapi
from .probes import Probes, document_probes
from .protocol import Server
from .render import Renderer, dumps, status_json
from .routes import Match, Route, Router, routes_for
from .transcode import RequestBuilder, message_class

log = logging.getLogger(__name__)

OPENAPI_PATH = "/openapi.json"
# After the grace period, requests still running are cancelled (and with
# them their RPCs) within this many seconds.
_CANCEL_WITHIN = 1.0
# The reply of a gRPC error that came with no google.rpc.Status, i.e. from
# the channel rather than the service, by code: its own text may name the
# private socket.
_TRANSPORT_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; retry later",
    grpc.StatusCode.INTERNAL: "internal error",
    grpc.StatusCode.UNKNOWN: "internal error",
}
_DETAILS_KEY = "grpc-status-details-bin"
_REQUEST_ID = "x-request-id"
_JSON = "application/json"


class _Endpoint:
    """One route, with what it takes to serve it; `call` exists once the
    event loop (and with it the channel) does."""

    def __init__(self, route: Route, renderer: Renderer) -> None:
        output = route.method.output_type
        self.route = route
        self.builder = RequestBuilder(route)
        self.response_class = message_class(output)
        # An empty response (DeleteRun's) is 204 No Content, not 200 "{}".
        self.no_content = not output.fields and not route.response_body
        self.render = renderer.response(output, route.response_body)
        # A bare list (PySpur's `GET /run/`): its next page goes in a Link header.
        self.links = pages_by_link(route.method, route.response_body)
        self.call: Any = None


def _version() -> str:
    try:
        return package_metadata.version("spur-runs")
    except package_metadata.PackageNotFoundError:
        return "0"


def _listen(address: str, reuse_port: bool) -> socket.socket:
    host, port = parse_address(address, "http_address")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # --workers: the processes share the port, as for gRPC
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(where)
        except OSError:
            sock.close()
            raise
    except OSError as error:
        raise OSError(f"cannot listen on {address}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


def _error(
    status: status_pb2.Status, http_status: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    code = grpc_code(status)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        # HTTP's 401 must name a scheme to use; the tokens are bearer tokens.
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="spur-runs"'}
    return web.Response(
        status=http_status or HTTP_STATUS.get(code, 500),
        body=status_json(status),
        content_type=_JSON,
        headers=headers,
    )


def _status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carried (the server's interceptor
    always sends one), else one made of its code."""
    code = error.code()
    trailers: Any = error.trailing_metadata() or ()  # (key, value) pairs
    for key, value in trailers:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            if status.code == code.value[0]:
                return status
    message = _TRANSPORT_MESSAGES.get(code)
    if message is None:
        message = error.details() or code.name
    else:
        log.warning("gateway call failed: %s %s", code.name, error.details())
    return status_pb2.Status(code=code.value[0], message=message)


def _response_headers(
    metadata: Iterable[Any] | None, trailers: Iterable[Any] | None = None
) -> dict[str, str] | None:
    """The call's metadata as grpc-gateway shows it (initial metadata as
    Grpc-Metadata-*, trailing as Grpc-Trailer-*), plus the request id under
    its usual HTTP name (unary calls send it in their trailers)."""
    headers: dict[str, str] = {}
    for prefix, pairs in (("Grpc-Metadata-", metadata), ("Grpc-Trailer-", trailers)):
        for key, value in pairs or ():
            if isinstance(value, str) and not key.startswith("grpc-"):
                headers[prefix + key] = value
                if key == _REQUEST_ID:
                    headers["X-Request-Id"] = value
    return headers or None


def _peer(request: web.BaseRequest) -> str:
    """The HTTP client's address as grpc names a peer ("ipv4:1.2.3.4:5678")."""
    where = request.transport.get_extra_info("peername") if request.transport else None
    if not isinstance(where, tuple) or len(where) < 2:
        return "unknown"
    host, port = where[0], where[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


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


class HttpGateway:
    """HTTP/JSON routes of `services`, served by calling `grpc_server`."""

    def __init__(
        self,
        config: Config,
        services: Sequence[ServiceDescriptor],
        grpc_server: grpc.Server,
        metrics: Metrics | None = None,
        local: LocalDispatch | None = None,
    ) -> None:
        assert config.http_address is not None
        self._metrics = metrics  # GET /metrics (metrics_http.py)
        # Unary calls in process when given (inprocess.py), else over the socket.
        self._local = local
        routes = routes_for(services)
        renderer = Renderer()
        self._endpoints = [_Endpoint(route, renderer) for route in routes]
        self._router: Router[_Endpoint] = Router([(e.route, e) for e in self._endpoints])
        served = dict.fromkeys(r.method.containing_service.full_name for r in routes)
        title = ", ".join(served) or "no annotated services"
        # --http-path-prefix: every path, ours included, lives under it.
        self._prefix = config.http_path_prefix
        self.openapi = build_openapi(routes, load_comments(), title, _version(), self._prefix)
        document_probes(self.openapi)  # GET /healthz, /readyz (probes.py)
        self._openapi_body = dumps(self.openapi)
        self._grace = config.grace_seconds
        self._max_body = config.max_request_bytes
        self._channel_count = channel_count(config)
        self._ssl = tls.http_context(config)
        # The port's bounds and trust (connections.py, hosts.py, metadata.py).
        self._limits = ConnectionLimits.from_config(config)
        self._hosts = HostCheck.from_config(config)
        self._trusted = parse_proxies(config.trusted_proxies)
        self._probes: Probes | None = None

        self._socket_dir = tempfile.mkdtemp(prefix="spur-runs-")  # mode 0700
        self._target = f"unix:{os.path.join(self._socket_dir, 'grpc.sock')}"
        try:
            if grpc_server.add_insecure_port(self._target) == 0:
                raise OSError(f"cannot listen on {self._target}")
            self._sock = _listen(config.http_address, reuse_port=config.workers > 1)
        except BaseException:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise
        self.port: int = self._sock.getsockname()[1]

        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._closing = False
        self._inflight = 0
        self._drained: asyncio.Event | None = None

    # --- life cycle (called from the owner's thread) ---

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http-gateway", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        host = self._sock.getsockname()[0]
        where = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        # The address, not only the port: 127.0.0.1 and 0.0.0.0 differ a lot.
        log.info("serving HTTP/JSON on %s%s", where, " with TLS" if self._ssl else "")

    def stop(self, grace: float) -> float:
        """Stop taking requests, let those in flight finish within `grace`
        seconds, then cancel the rest. Returns the grace left over."""
        started = time.monotonic()
        if self._thread is not None and self._thread.is_alive():
            assert self._loop is not None and self._stop_requested is not None
            self._grace = grace
            self._loop.call_soon_threadsafe(self._stop_requested.set)
            self._thread.join()
        self._sock.close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        return max(0.0, grace - (time.monotonic() - started))

    # --- the event loop's thread ---

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve_forever())
        except BaseException as error:  # noqa: BLE001 - reported to start()
            self._failure = error
            log.exception("the HTTP gateway stopped")
        finally:
            self._ready.set()
            loop.close()

    async def _serve_forever(self) -> None:
        self._stop_requested = asyncio.Event()
        self._drained = asyncio.Event()
        channel = ChannelPool(  # connections enough for every WatchRun (channels.py)
            self._target,
            count=self._channel_count,
            options=[
                # The HTTP client sets no gRPC size limit; the server's own
                # --max-response-bytes applies.
                ("grpc.max_receive_message_length", -1),
                # Neither is of use on a local socket, and both cost per call.
                ("grpc.enable_retries", 0),
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        for endpoint in self._endpoints:
            endpoint.call = (
                channel.unary_stream if endpoint.route.streaming else channel.unary_unary
            )(
                endpoint.route.grpc_path,
                request_serializer=endpoint.builder.message_class.SerializeToString,
                response_deserializer=endpoint.response_class.FromString,
            )
        self._probes = Probes(channel, self._prefix)
        # protocol.Server: unparsable requests get a JSON 4xx, not text and a
        # traceback; each connection is held to self._limits.
        quiet_accept_errors(asyncio.get_running_loop())
        server = Server(
            self._handle, self._limits, tls=self._ssl, handler_cancellation=True, access_log=None
        )
        runner = web.ServerRunner(server, shutdown_timeout=_CANCEL_WITHIN)
        await runner.setup()
        site = web.SockSite(runner, self._sock, backlog=BACKLOG)  # (TLS: in Server)
        await site.start()
        self._ready.set()
        try:
            await self._stop_requested.wait()
            self._closing = True
            await site.stop()
            server.pre_shutdown()  # close keep-alive connections once idle
            if self._inflight:
                try:
                    await asyncio.wait_for(self._drained.wait(), self._grace)
                except TimeoutError:
                    log.warning("%d HTTP requests still running: cancelling them", self._inflight)
        finally:
            await runner.cleanup()
            await channel.close(grace=None)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        early = self._hosts.refusal(request)
        if early is None and self._probes is not None:
            early = await self._probes.answer(request, self._closing)
        if early is not None:
            return early
        self._inflight += 1
        try:
            return await self._respond(request)
        finally:
            self._inflight -= 1
            if self._closing and not self._inflight:
                assert self._drained is not None
                self._drained.set()

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._closing:
            return _error(
                status_pb2.Status(code=code_pb2.UNAVAILABLE, message="the server is shutting down"),
                headers={"Connection": "close"},
            )
        raw_path, _, query = request.raw_path.partition("?")
        path = raw_path
        if self._prefix:
            if path != self._prefix and not path.startswith(self._prefix + "/"):
                return _error(
                    status_pb2.Status(
                        code=code_pb2.NOT_FOUND,
                        message=f"no route for {path[:200]}; every path starts with {self._prefix}",
                    )
                )
            path = path[len(self._prefix) :] or "/"
        verb = request.method
        if path == OPENAPI_PATH:
            if verb != "GET":
                return self._not_allowed(path, ["GET"])
            return web.Response(body=self._openapi_body, content_type=_JSON)
        if path == METRICS_PATH and self._metrics is not None:
            if verb != "GET":
                return self._not_allowed(path, ["GET"])
            return await metrics_response(self._metrics)
        try:
            found = self._router.match(verb, path)
        except UnicodeDecodeError:
            return _error(to_status(InvalidArgument("path", "is not UTF-8 once percent-decoded")))
        if found is None:
            return _error(
                status_pb2.Status(code=code_pb2.NOT_FOUND, message=f"no route for {path[:200]}")
            )
        if isinstance(found, list):
            return self._not_allowed(path, found)
        try:
            return await self._call(request, found, raw_path, query)
        except Exception as error:  # noqa: BLE001 - a bug: a generic 500, the traceback to the log
            return _error(to_status(error, found.payload.route.grpc_path))

    @staticmethod
    def _not_allowed(path: str, allowed: list[str]) -> web.Response:
        status = status_pb2.Status(
            code=code_pb2.UNIMPLEMENTED,
            message=f"method not allowed for {path[:200]}; use {', '.join(allowed)}",
        )
        # grpc-gateway answers 501 here; 405 with Allow is what HTTP means.
        return _error(status, 405, {"Allow": ", ".join(allowed)})

    async def _call(
        self, request: web.BaseRequest, found: Match[_Endpoint], raw_path: str, query: str
    ) -> web.StreamResponse:
        endpoint = found.payload
        try:
            timeout_header = request.headers.get(TIMEOUT_HEADER)
            timeout = parse_timeout(timeout_header) if timeout_header is not None else None
            metadata = outgoing_metadata(
                request.headers.items(), request.remote, request.host, self._trusted
            )
            body = await _read_body(request, self._max_body) if endpoint.route.body else b""
            message = endpoint.builder.build(found.variables, query, body)
        except InvalidArgument as error:
            return _error(to_status(error))
        if self._local is not None and not endpoint.route.streaming:
            try:
                response, initial, trailing = await self._local.call(
                    endpoint.route.grpc_path, message, timeout, tuple(metadata), _peer(request)
                )
            except grpc.aio.AioRpcError as error:
                return _error(
                    _status_of(error),
                    headers=_response_headers(error.initial_metadata(), error.trailing_metadata()),
                )
            headers = _response_headers(initial, trailing)
            return self._answer(endpoint, response, headers, raw_path, query)
        # Cancelling this task (the client went away: handler_cancellation)
        # cancels the call, and the server sees its RPC cancelled.
        call = endpoint.call(message, timeout=timeout, metadata=metadata)
        if endpoint.route.streaming:
            return await _stream(request, endpoint, call)
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            return _error(
                _status_of(error),
                headers=_response_headers(error.initial_metadata(), error.trailing_metadata()),
            )
        headers = _response_headers(await call.initial_metadata(), await call.trailing_metadata())
        return self._answer(endpoint, response, headers, raw_path, query)

    @staticmethod
    def _answer(
        endpoint: _Endpoint,
        response: Any,
        headers: dict[str, str] | None,
        raw_path: str,
        query: str,
    ) -> web.Response:
        if endpoint.no_content:
            return web.Response(status=204, headers=headers)
        if endpoint.links and response.next_page_token:
            headers = {
                **(headers or {}),
                "Link": next_link(raw_path, query, response.next_page_token),
            }
        return web.Response(body=endpoint.render(response), content_type=_JSON, headers=headers)


# --- server streaming (WatchRun) ---

NDJSON = "application/x-ndjson"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # (grpc-stubs lack it)
EVENT_STREAM = "text/event-stream"


def accepts_event_stream(accept: str) -> bool:
    """Whether an Accept header names text/event-stream (parameters aside)."""
    return any(part.split(";", 1)[0].strip().lower() == EVENT_STREAM for part in accept.split(","))


def _frame(body: bytes, events: bool, error: bool = False) -> bytes:
    """One message of the stream. Newline-delimited JSON in grpc-gateway's
    shape: a line `{"result": <message>}`, or `{"error": <google.rpc.Status>}`
    last. Server-sent events: `data: <message>`, or an `error` event whose
    data is the Status. (The JSON holds no raw newline: orjson escapes them.)"""
    if events:
        return (b"event: error\ndata: " if error else b"data: ") + body + b"\n\n"
    return (b'{"error":' if error else b'{"result":') + body + b"}\n"


async def _stream(request: web.BaseRequest, endpoint: _Endpoint, call: Any) -> web.StreamResponse:
    """Answer a server-streaming call message by message. An error before the
    first message is an ordinary error reply (404 for an unknown run, 400 for
    a bad id...); once the 200 is sent, an error is the stream's last frame.
    The client going away cancels this task, and with it the call."""
    events = accepts_event_stream(request.headers.get("Accept", ""))
    try:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as error:
            return _error(
                _status_of(error),
                headers=_response_headers(error.initial_metadata(), error.trailing_metadata()),
            )
        response = web.StreamResponse(
            headers={
                **(_response_headers(await call.initial_metadata()) or {}),
                "Content-Type": EVENT_STREAM if events else NDJSON,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies (nginx): pass each message on at once
            }
        )
        await response.prepare(request)
        try:
            while message is not _EOF:
                await response.write(_frame(endpoint.render(message), events))
                message = await call.read()
        except grpc.aio.AioRpcError as error:
            await response.write(_frame(status_json(_status_of(error)), events, error=True))
        await response.write_eof()
        return response
    finally:
        call.cancel()  # (a no-op once the call has ended)
