"""Assemble the gRPC server: RunService, health, reflection, interceptors.

    server, port = create_server(Config(grpc_address="127.0.0.1:0"))
    server.start()
    ...
    server.stop(grace=5)

Tests bind to port 0 and read the port back.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from spur.runs.v1 import run_service_pb2, run_service_pb2_grpc

from .. import tls
from ..api.service import RunService
from ..api.versions import VersionCache
from ..api.watch import WatchHub
from ..config import Config, parse_address
from ..gateway import HttpGateway
from ..gateway.inprocess import InProcessTransport, recorded_handlers
from ..rpc import auth, limits
from ..rpc.arrival import ArrivalInterceptor, RequestWaits
from ..rpc.chain import ChainInterceptor, Interceptor
from ..rpc.decode import DecodeHook
from ..rpc.encode import EncodeHook
from ..rpc.errors import ErrorHook, last_resort
from ..rpc.observe import ObserveHook
from ..rpc.unread import UnreadAnswers
from ..store.db import Database
from ..store.engine import shown_url
from ..store.schema_check import warn_missing_indexes
from ..telemetry.metrics import Metrics
from .health import DatabaseHealth
from .probe import ProbeListener
from .reflection import Reflection

log = logging.getLogger(__name__)

RUN_SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
# How long past its grace period stop() waits for grpc's transport to shut down.
STOP_SECONDS = 2.0
# Stored text per byte of --max-response-bytes beyond which a read is refused
# unread (create_server).
TEXT_PER_RESPONSE_BYTE = 4
# How long before grpc cancels the calls still running the database refuses
# their writes (Database.cut): a write that commits is answered OK, never
# CANCELLED, and a cancelled one never commits.
CUT_LEAD_SECONDS = 0.1


class RunsServer:
    """A started-or-not gRPC server with the resources it owns."""

    def __init__(self, config: Config, db: Database, metrics: Metrics | None = None) -> None:
        self.config = config
        self.db = db
        # Token and certificate files are read (and checked) here, before
        # anything listens: a bad one stops start-up (config.ConfigError).
        self.tokens = auth.Tokens.from_config(config)
        tls_files = tls.load(config)
        self.metrics = metrics or Metrics()
        for role, engine in db.engines.items():
            self.metrics.watch_pool(role, engine, db.kept.get(role))
        self.health = DatabaseHealth(
            db,
            config.health_interval,
            config.max_health_watchers,
            self.metrics.registry,
            config.max_health_watchers_per_address,
        )
        # One pool of threads and one interceptor for gRPC callers
        # and, in process, for the HTTP gateway's unary calls. Its size,
        # --max-workers, defaults to 4 (config.py), from measurement
        # (docs/performance.md, "Threads"): GetRun under 16 calls in flight
        # on 2 cores served 1,089 / 1,239 / 1,295 / 1,261 calls/s with 1 / 2 /
        # 4 / 8 threads (server CPU per call 895 / 785 / 760 / 730 µs). Measured
        # again 2026-12-02 (3 rounds each): on PostgreSQL 4 threads serve 1.3-
        # 1.6x the list pages of 1 (they overlap the database's round trips);
        # on SQLite 1 thread spends 0.6-0.85x the CPU per page of 4 (handing
        # the interpreter lock between threads costs context switches), but
        # would queue every call behind the slowest one (a deep page-number
        # page of 1M runs takes ~0.4 s). More than 4 gain nothing and hold
        # more database connections.
        # The threads of both pools are recorded as they start (by the
        # pools' initializer): the calls' threads, which the process waits
        # for after the drain and leaves behind when they do not end
        # (serve.py). grpc starts them from its own daemon thread, so they
        # are daemon threads: that flag does not tell them apart.
        self._call_threads: list[threading.Thread] = []
        self._call_threads_lock = threading.Lock()
        self.executor = futures.ThreadPoolExecutor(
            max_workers=config.max_workers,
            thread_name_prefix="rpc",
            initializer=self._record_call_thread,
        )
        # HTTP's in-process calls get threads of their own, as many: in one
        # pool they queued behind gRPC calls that hold threads waiting for
        # their messages, and two connections re-sending such calls made
        # every HTTP request time out (a review, 2026-12-04). Each side's
        # load still runs on --max-workers threads.
        self.http_executor = (
            None
            if config.http_address is None
            else futures.ThreadPoolExecutor(
                max_workers=config.max_workers,
                thread_name_prefix="http-rpc",
                initializer=self._record_call_thread,
            )
        )
        # Answers sent and not yet read, by client address (rpc/unread.py).
        self.unread = UnreadAnswers(config.max_unread_bytes_per_address, config.max_unread_bytes)
        # Its hooks (rpc/chain.py), outermost first: observe sees the final
        # code of every call (refusals included), auth refuses before any
        # work is done, and errors become statuses innermost.
        self.chain = ChainInterceptor(
            [
                ObserveHook(self.metrics),
                auth.AuthHook(self.tokens),
                limits.DeadlineHook(),
                ErrorHook(),
                DecodeHook(),  # unparsable bytes: INVALID_ARGUMENT, not INTERNAL
                # A spliced answer (below) serializes itself; no answer of
                # RunService is larger than --max-response-bytes (those of
                # reflection and health are fixed by the protos: not bounded).
                EncodeHook(config.max_response_bytes, [RUN_SERVICE], self.unread),
            ],
            last_resort=last_resort,
        )
        # Outermost, for gRPC callers only: a call's thread waits for its
        # request message for a bounded time (rpc/arrival.py).
        self.request_waits = RequestWaits(
            config.grpc_request_timeout_seconds, stalled_max=max(1, config.max_workers // 2)
        )
        interceptors: list[Interceptor] = [self.chain]
        self.grpc = grpc.server(
            self.executor,
            interceptors=[
                ArrivalInterceptor(self.request_waits, self.chain.refuses),
                *interceptors,
            ],
            options=limits.server_options(config),
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        versions = VersionCache()
        # WatchRun's poller (one per process, started with the server).
        self.watch_hub = WatchHub(
            db,
            versions,
            config.watch_interval,
            config.max_watchers,
            self.metrics,
            max_per_address=config.max_watchers_per_address,
        )
        # Runs' workflow versions spliced in as bytes (api/spliced.py):
        # EncodeHook serializes such answers, the gateway renders them.
        # Reads whose cost grows with the table: half the RPC threads at
        # most (api/service.py HEAVY_OFFSET), as writes (Database.write).
        self.runs = servicer = RunService(
            db, versions, self.watch_hub, splice=True, heavy_reads=max(1, config.max_workers // 2)
        )
        run_service_pb2_grpc.add_RunServiceServicer_to_server(servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.grpc)
        # Every service this server registers: what reflection lists, and
        # what auth.METHOD_SCOPES must cover (checked, so that a new service
        # or RPC cannot be served without a policy).
        self.services = [
            run_service_pb2.DESCRIPTOR.services_by_name["RunService"],
            health_pb2.DESCRIPTOR.services_by_name["Health"],
        ]
        # Reflection (reflection.py): with the protos' comments, and on
        # threads of its own, so that idle streams hold no RPC thread.
        self.reflection: Reflection | None = None
        if config.reflection:
            self.services.append(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
            self.reflection = Reflection(self.services)
            self.reflection.register(self.grpc)
        auth.check_coverage(self.services)
        try:
            if tls_files is None:
                self.port = self.grpc.add_insecure_port(config.grpc_address)
            else:
                self.port = self.grpc.add_secure_port(
                    config.grpc_address, tls.server_credentials(tls_files)
                )
        except RuntimeError:  # grpc's "Failed to bind": port taken, no such address
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on {config.grpc_address} (in use, or not an address here)"
            )
        # --health-address: Check alone, in plaintext, for the kubelet (probe.py).
        self.probe = (
            None if config.health_address is None else ProbeListener(config, self.health.servicer)
        )
        self.probe_port = None if self.probe is None else self.probe.port
        # HTTP/JSON from the services' google.api.http rules, through this server.
        # Its unary calls run in process (gateway/inprocess.py), with the same
        # interceptor on the same threads; WatchRun goes through the socket.
        local = InProcessTransport(
            recorded_handlers(
                lambda target: run_service_pb2_grpc.add_RunServiceServicer_to_server(
                    servicer, target
                )
            ),
            interceptors,
            self.http_executor or self.executor,
            config.max_concurrent_rpcs,
        )
        self.http = (
            None
            if config.http_address is None
            else HttpGateway(config, self.services, self.grpc, self.metrics, local)
        )
        self.http_port = None if self.http is None else self.http.port

    def _record_call_thread(self) -> None:
        with self._call_threads_lock:
            self._call_threads.append(threading.current_thread())

    def call_threads(self) -> list[threading.Thread]:
        """After stop(): the threads that ran calls (gRPC's and HTTP's),
        their pools shut down so that the idle ones end; the process waits
        for these (runtime/serve.py)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.http_executor is not None:
            self.http_executor.shutdown(wait=False, cancel_futures=True)
        with self._call_threads_lock:
            return list(self._call_threads)

    def start(self) -> None:
        warn_missing_indexes(self.db.engine)
        self.health.start()
        self.watch_hub.start()
        self.request_waits.start()
        self.grpc.start()
        if self.probe is not None:
            self.probe.start()
        if self.http is not None:
            self.http.start()
        host = parse_address(self.config.grpc_address, "grpc_address")[0]
        log.info(
            "serving gRPC on %s:%d (database %s)",
            f"[{host}]" if ":" in host else host,
            self.port,
            shown_url(self.db.engine.url),
        )
        if self.db.read_engine is not None:
            log.info(
                "read RPCs go to the replica %s",
                shown_url(self.db.read_engine.url),
            )
        log.info(
            "gRPC %s; authentication %s",
            "with mutual TLS"
            if self.config.tls_client_ca
            else "with TLS"
            if self.config.tls_cert
            else "in plaintext",
            f"on ({len(self.tokens.entries)} tokens)" if self.tokens.enabled else "OFF",
        )
        if not self.tokens.enabled:
            log.warning(
                "no --reader-tokens-file or --admin-tokens-file: every caller may call every "
                "RPC, DeleteRun included"
            )

    def stop(self, grace: float | None = None) -> bool:
        """Graceful stop: health NOT_SERVING, end WatchRun streams
        (UNAVAILABLE), refuse new calls, let in-flight calls finish within
        `grace` seconds, then release the database. False when grpc's
        transport had not shut down STOP_SECONDS after the grace period."""
        self.health.shutdown()
        grace = self.config.grace_seconds if grace is None else grace
        # Open WatchRun streams would last the whole grace period (and keep
        # their HTTP requests running): end them first, with UNAVAILABLE.
        started = time.monotonic()
        self.watch_hub.stop(grace)
        grace = max(0.0, grace - (time.monotonic() - started))
        if self.reflection is not None:
            self.reflection.close()
        if self.http is not None:  # first: its requests finish through gRPC
            grace = self.http.stop(grace)
        # grpc's shutdown waits for its connections: one a client floods
        # with header frames kept it up for as long as the flood (56 s, a
        # review, 2026-12-04). The caller leaves without it (serve.py).
        # grpc cancels the calls still running CUT_LEAD_SECONDS after the
        # grace period; at its end, the database refuses their writes and
        # interrupts SQLite's statements (Database.cut): a delete waiting
        # for SQLite's write lock was committed seconds after its caller
        # heard UNAVAILABLE (a review, 2026-12-04).
        stopping = self.grpc.stop(grace + CUT_LEAD_SECONDS)
        stopping.wait(grace)
        if not stopping.is_set():
            log.warning(
                "gRPC not stopped at the end of the grace period: the writes of the calls "
                "still running roll back"
            )
        self.db.cut()
        stopped = stopping.wait(CUT_LEAD_SECONDS + STOP_SECONDS)
        if not stopped:
            log.warning("gRPC's transport still busy %.0f s after the grace period", STOP_SECONDS)
        self.request_waits.stop()
        if self.probe is not None:  # (NOT_SERVING all along the drain)
            self.probe.stop()
        self.health.close()
        self.db.dispose()
        return stopped

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def create_server(
    config: Config, db: Database | None = None, metrics: Metrics | None = None
) -> tuple[RunsServer, int]:
    db = db or Database.from_url(
        config.database_url,
        config.pool_size,
        read_url=config.read_database_url,
        timeout_seconds=config.db_timeout_seconds,
        dead_peer_seconds=config.db_dead_peer_seconds,
        # One kept connection per RPC thread for single reads (store/held.py),
        # gRPC's and HTTP's (RunsServer).
        held_limit=config.max_workers * (1 if config.http_address is None else 2),
        # Writes that wait for a lock hold their threads: half of them at
        # most, the rest for reads (Database.write).
        writers=max(1, config.max_workers // 2),
        # A read whose rows hold more text than this cannot fit one response
        # (stored JSON is at most ~3.5x its message's bytes: \uXXXX escapes
        # of PySpur's json.dumps, escaped again in SQLite's packed rows), and
        # is refused before its rows are decoded.
        # (SQLite takes the bound as a C int.)
        max_text=min(TEXT_PER_RESPONSE_BYTE * config.max_response_bytes, 2**31 - 1),
    )
    try:
        server = RunsServer(config, db, metrics)
    except BaseException:
        db.dispose()
        raise
    return server, server.port
