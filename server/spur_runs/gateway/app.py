"""The HTTP server: aiohttp on its own thread and event loop, in front of
the RunsServer's gRPC server. This module is its life cycle (the listening
socket, the thread, the drain at stop); mux.py answers each request.

Whatever the gRPC server applies to a call (its interceptors: metrics and
access log, authentication, deadlines, errors; its threads and limits), it
applies to HTTP callers too, in one place. The gateway calls its server
through a transport (transport.py). Unary calls run in process with the
server's own interceptors and threads (inprocess.InProcessTransport: a
second gRPC hop cost more than the call); server-streaming calls (WatchRun)
go through the gRPC server over a private unix socket
(transport.ChannelTransport), as grpc-gateway does over TCP. The socket
lives in a fresh 0700 directory, so only this user can reach it; the HTTP
port gets the gRPC port's TLS (tls.http_context), so mutual TLS guards both
alike.

    gateway = HttpGateway(config, services, grpc_server, metrics, in_process)
    grpc_server.start(); gateway.start()
    ...
    grace = gateway.stop(grace); grpc_server.stop(grace)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib import metadata as package_metadata

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import code_pb2, status_pb2

from .. import tls
from ..api.rules import REQUEST_RULES
from ..config import Config, parse_address
from ..telemetry.metrics import Metrics
from ..trust import parse_proxies
from .access import HttpAccess
from .channels import ChannelPool, channel_count
from .comments import load_comments
from .connections import BACKLOG, ConnectionLimits, quiet_accept_errors
from .cors import Cors, add_headers
from .hosts import HostCheck
from .mux import Mux
from .openapi import build_openapi
from .probes import Probes, document_probes
from .protocol import Server
from .render import dumps
from .replies import error
from .routes import routes_for
from .target import origin_form
from .transport import DONE_KEY, ChannelTransport, Transport
from .writes import Writes

log = logging.getLogger(__name__)

# After the grace period, requests still running are cancelled (and with
# them their RPCs) within this many seconds.
_CANCEL_WITHIN = 1.0


def _version() -> str:
    try:
        return package_metadata.version("spur-runs")
    except package_metadata.PackageNotFoundError:
        return "0"


# Tries at a port the system picks (":0") that turns out to be taken.
_ANY_PORT_TRIES = 5


def _listen(address: str, reuse_port: bool) -> socket.socket:
    host, port = parse_address(address, "http_address")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        for tried in range(1, _ANY_PORT_TRIES + 1):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:  # --workers: the processes share the port, as for gRPC
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(where)
                # Here, not when the site starts: with SO_REUSEADDR, Linux may
                # give port 0 a port that an outgoing connection holds, which
                # only listen() refuses (EADDRINUSE; seen once in CI). Such a
                # port is given back and another one picked.
                sock.listen(BACKLOG)
                break
            except OSError as error:
                sock.close()
                if not (port == 0 and error.errno == errno.EADDRINUSE and tried < _ANY_PORT_TRIES):
                    raise
    except OSError as error:
        raise OSError(f"cannot listen on {address}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


class HttpGateway:
    """HTTP/JSON routes of `services`, served by calling `grpc_server`."""

    def __init__(
        self,
        config: Config,
        services: Sequence[ServiceDescriptor],
        grpc_server: grpc.Server,
        metrics: Metrics | None = None,
        in_process: Transport | None = None,
    ) -> None:
        assert config.http_address is not None
        # Unary calls in process when given (inprocess.py), else through the
        # socket, as streams always are (transport.py).
        self.in_process = in_process
        routes = routes_for(services)
        self._methods = list(dict.fromkeys(route.method for route in routes))
        served = dict.fromkeys(r.method.containing_service.full_name for r in routes)
        title = ", ".join(served) or "no annotated services"
        # --http-path-prefix: every path, ours included, lives under it.
        self._prefix = config.http_path_prefix
        self.openapi = build_openapi(
            routes, load_comments(), title, _version(), self._prefix, REQUEST_RULES
        )
        document_probes(self.openapi)  # GET /healthz, /readyz (probes.py)
        trusted = parse_proxies(config.trusted_proxies)
        self._mux = Mux(
            routes,
            self._prefix,
            dumps(self.openapi),
            metrics,  # GET /metrics (metrics_http.py)
            config.max_request_bytes,
            trusted,
        )
        self._access = HttpAccess(trusted)  # the access lines of answers without a call
        self._grace = config.grace_seconds
        self._channel_count = channel_count(config)
        self._ssl = tls.http_context(config)
        # The port's bounds and trust (connections.py, hosts.py, metadata.py).
        self._limits = ConnectionLimits.from_config(config)
        # Answers being written; a connection whose answer stops moving is cut.
        self._writes = Writes(config.http_idle_timeout_seconds)
        self._hosts = HostCheck.from_config(config)
        self._cors = Cors.from_setting(config.http_cors_origins)  # None: off
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
        except BaseException as failure:  # noqa: BLE001 - reported to start()
            self._failure = failure
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
        through_socket = ChannelTransport(channel, self._methods)
        self._mux.bind(self.in_process or through_socket, through_socket)
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
        checker = asyncio.create_task(self._writes.check_forever())
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
            checker.cancel()
            await runner.cleanup()
            await channel.close(grace=None)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        began = self._access.begin()
        request, authority = origin_form(request)
        response = await self._respond(request, authority)
        done = response.get(DONE_KEY)
        try:
            self._access.answered(request, response, began)  # (unless a call's line has it)
            if done is not None:
                # An in-process call's answer: written here, so that its
                # call, and the bytes charged to this client until then
                # (rpc/unread.py), end once aiohttp has handed it to the
                # socket; not while a client that reads nothing holds it
                # (nor for ever: writes.py cuts an answer that stops moving).
                await self._writes.write(request, response)
        finally:
            if done is not None:
                done()
        return response

    async def _respond(self, request: web.BaseRequest, authority: str | None) -> web.StreamResponse:
        refused = self._hosts.refusal(request, authority)
        if refused is not None:
            return refused
        if self._cors is None:
            return await self._answer(request, None)
        preflight = self._cors.preflight(request)
        if preflight is not None:
            return preflight
        cors = self._cors.headers(request)
        response = await self._answer(request, cors)
        if not response.prepared:  # (a stream has sent them with its headers)
            add_headers(response, cors)
        return response

    async def _answer(
        self, request: web.BaseRequest, cors: dict[str, str] | None
    ) -> web.StreamResponse:
        if self._probes is not None:
            probe = await self._probes.answer(request, self._closing)
            if probe is not None:
                return probe
        self._inflight += 1
        try:
            if self._closing:
                return error(
                    status_pb2.Status(
                        code=code_pb2.UNAVAILABLE, message="the server is shutting down"
                    ),
                    headers={"Connection": "close"},
                )
            return await self._mux.respond(request, cors)
        finally:
            self._inflight -= 1
            if self._closing and not self._inflight:
                assert self._drained is not None
                self._drained.set()
