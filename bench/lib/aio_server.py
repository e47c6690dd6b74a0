"""A minimal RunService (GetRun, ListRuns) on grpc.aio with SQLAlchemy's async
engine, and its sync twin, to compare the two server models (bench/aio_vs_sync.py).

    python bench/lib/aio_server.py --mode aio  --database-url URL --port P [--pool-size N]
    python bench/lib/aio_server.py --mode sync --database-url URL --port P [--pool-size N]
    python bench/lib/aio_server.py --mode inline --database-url URL --port P [--pool-size N]
    python bench/lib/aio_server.py --mode inline-frame --database-url URL --port P [--pool-size N]

aio: grpc.aio.server, create_async_engine (sqlite+aiosqlite or
postgresql+psycopg in its async form); each call opens one AsyncConnection,
begins a transaction and runs exactly what spur_runs.service.RunService does
inside its `with self._db.read_one()` / `read()` blocks through
`await conn.run_sync(fn)`, so store/runs.py and api/convert.py run unchanged (the
same SQL, the same rows to messages). Reads keep engine.py's semantics: GetRun's
one statement without a transaction (autocommit on PostgreSQL), ListRuns in
one transaction, rolled back (REPEATABLE READ on PostgreSQL); on SQLite
engine.py's connect PRAGMAs and its explicit BEGIN (sqlite_connect, sqlite_begin
below: engine.py's listeners are private, so these are written out here; they
leave out its statement watchdog, which the service's statements never reach).

Only public names of spur_runs: the sync side is RunService itself; the aio
side calls the same store and convert functions.

sync: grpc.server(ThreadPoolExecutor(max_workers=4)) serving
spur_runs.service.RunService(Database.from_url(url)) itself.

inline: grpc.aio.server serving that same sync RunService, each call run
on the event loop's own thread (`async def` wrappers that call the sync
methods): no thread hands a call to another, and a blocking read blocks the
whole server for its duration (on PostgreSQL the loop waits out every round
trip). It measures what the server model alone would buy spur-runs, not a
design to ship as is. inline-frame: the same, each call wrapped in the
interceptor chain of `spur-runs serve` (its hooks, metrics and access log, as
RunsServer builds them) with the gateway's LocalContext, on the loop's thread.

Apart from inline-frame, none has interceptors, health, reflection or channel options: the server
model is the only difference. Prints "ready PORT" once it listens; SIGTERM
stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, TypeVar

import grpc
import grpc.aio
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1 import run_service_pb2_grpc
from spur_runs.api import convert, filters, paging
from spur_runs.api.service import list_query, validate_run_id
from spur_runs.api.versions import VersionCache
from spur_runs.errors import ServiceError
from spur_runs.rpc.status import code_of
from spur_runs.store import engine as db
from spur_runs.store import runs as storage

T = TypeVar("T")

SYNC_WORKERS = 4  # spur-runs serve's default thread pool (Config.max_workers)


def sqlite_connect(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    """engine.py's PRAGMAs for every new SQLite connection (WAL, foreign keys),
    and no implicit transactions: sqlite_begin starts them."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.close()


def sqlite_begin(connection: Connection) -> None:
    """engine.py's BEGIN for reads of several statements; none for one statement
    (db.SINGLE_OPTION, Database.read_one)."""
    if not connection.get_execution_options().get(db.SINGLE_OPTION, False):
        connection.exec_driver_sql("BEGIN")


def next_run_token(scope: str, records: list[storage.RunRecord], more: bool) -> str:
    """RunService's next_page_token: the keyset cursor of the page's last run."""
    if not more or not records:
        return ""
    last = records[-1].row
    return paging.encode_run_cursor(scope, last.start_time, last._intid)


def create_async_db_engine(url: str, pool_size: int) -> AsyncEngine:
    """db.create_db_engine's settings, on the async drivers."""
    parsed = db.normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        busy = 5.0
        engine = create_async_engine(
            parsed.set(drivername="sqlite+aiosqlite"),
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"check_same_thread": False, "timeout": busy},
            json_deserializer=db.load_json,
        )
        # engine.py's PRAGMAs and explicit BEGIN, on the sync facade (they run
        # inside run_sync's greenlet).
        event.listen(
            engine.sync_engine,
            "connect",
            lambda connection, _record: sqlite_connect(connection, int(busy * 1000)),
        )
        event.listen(engine.sync_engine, "begin", sqlite_begin)
        return engine
    # normalize_url picked postgresql+psycopg: SQLAlchemy uses psycopg's
    # AsyncConnection for it under create_async_engine.
    engine = create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=5,
        connect_args={"connect_timeout": 3},
        json_deserializer=db.load_json,
    )
    return engine


class AioRunService(run_service_pb2_grpc.RunServiceServicer):
    """GetRun and ListRuns of spur_runs.service.RunService, awaited."""

    def __init__(self, engine: AsyncEngine) -> None:
        # The binds of db.Database: a snapshot (REPEATABLE READ on PostgreSQL)
        # for reads of several statements, autocommit (no BEGIN) for one.
        postgres = engine.dialect.name == "postgresql"
        self._engine = (
            engine.execution_options(isolation_level="REPEATABLE READ") if postgres else engine
        )
        self._single = engine.execution_options(
            **({"isolation_level": "AUTOCOMMIT"} if postgres else {db.SINGLE_OPTION: True})
        )
        # One event loop thread: run_sync's functions never run concurrently,
        # so the cache is only ever touched from that thread.
        self._versions = VersionCache()

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        """db.Database.read(): one transaction, rolled back at the end."""
        async with self._engine.connect() as conn, conn.begin() as transaction:
            result = await conn.run_sync(fn)
            await transaction.rollback()
        return result

    async def _read_one(self, fn: Callable[[Connection], T]) -> T:
        """db.Database.read_one(): one statement, no transaction around it."""
        async with self._single.connect() as conn:
            return await conn.run_sync(fn)

    def _load_versions(self, conn: Connection, keys: Iterable[tuple[str, str] | None]) -> None:
        missing = self._versions.missing(keys)
        if missing:
            self._versions.add(storage.get_versions(conn, missing))

    async def GetRun(  # type: ignore[override]
        self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRunResponse:
        try:
            run_id = validate_run_id(request.run_id)
            basic = filters.is_basic(request.view)

            def read(conn: Connection) -> storage.RunRecord:
                # The bench's runs have 6 tasks: never MoreStatementsNeeded.
                record = storage.get_run(conn, run_id, with_tasks=not basic, single_statement=True)
                self._load_versions(conn, [record.version_key])
                return record

            record = await self._read_one(read)
        except ServiceError as error:  # the sync server's errors.ErrorHook, in short
            await context.abort(code_of(error), error.message)
        response = pb.GetRunResponse()
        convert.fill_run(response.run, record, self._versions, basic=basic)
        return response

    async def ListRuns(  # type: ignore[override]
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRunsResponse:
        try:
            query = list_query(request)

            def read(conn: Connection) -> tuple[list[storage.RunRecord], bool, int | None]:
                records, more = storage.list_runs(
                    conn,
                    limit=query.size,
                    after=query.after,
                    offset=query.offset,
                    filters=query.where,
                    with_tasks=not query.basic,
                )
                self._load_versions(conn, (r.version_key for r in records))
                total = None
                if request.include_total_size:
                    total = min(storage.count_runs(conn, query.where), 2**31 - 1)
                return records, more, total

            records, more, total = await self._read(read)
        except ServiceError as error:
            await context.abort(code_of(error), error.message)
        response = pb.ListRunsResponse(
            next_page_token=next_run_token(query.scope, records, more), total_size=total
        )
        for record in records:
            convert.fill_run(response.runs.add(), record, self._versions, basic=query.basic)
        return response


async def serve_until_stopped(server: grpc.aio.Server, port: int) -> None:
    """Listen on `port`, say "ready PORT", serve until SIGTERM or SIGINT, stop."""
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


async def serve_aio(url: str, port: int, pool_size: int) -> None:
    engine = create_async_db_engine(url, pool_size)
    server = grpc.aio.server()
    # Only the two RPCs the bench loads: the others answer UNIMPLEMENTED (the base class).
    servicer = AioRunService(engine)  # type: ignore[abstract]
    run_service_pb2_grpc.add_RunServiceServicer_to_server(servicer, server)
    await serve_until_stopped(server, port)
    await engine.dispose()


def serve_sync(url: str, port: int, pool_size: int) -> None:
    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database

    database = Database.from_url(url, pool_size=pool_size)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS))
    # Errors surface as UNKNOWN without errors.ErrorHook: the bench only
    # sends valid requests.
    run_service_pb2_grpc.add_RunServiceServicer_to_server(RunService(database), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"ready {bound}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timed wait: the signal handler always gets to run
        pass
    server.stop(1).wait()
    database.dispose()


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


async def serve_inline(url: str, port: int, pool_size: int, frame: bool) -> None:
    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database

    database = Database.from_url(url, pool_size=pool_size)
    servicer = RunService(database)
    call: Callable[[str, Any, Any], Any]

    if not frame:

        async def call(method: str, request: Any, context: Any) -> Any:
            return getattr(servicer, method)(request, context)

    else:
        from spur_runs.config import Config
        from spur_runs.gateway.inprocess import LocalContext, recorded_handlers
        from spur_runs.runtime.server import RunsServer

        # The very chain of hooks `spur-runs serve` wraps every call in (observe:
        # metrics, access log, request ids; auth; deadlines; errors; decode), as
        # RunsServer builds it; RunsServer's own gRPC server is never started.
        chain = RunsServer(Config(grpc_address="127.0.0.1:0"), database).chain
        handlers = recorded_handlers(
            lambda target: run_service_pb2_grpc.add_RunServiceServicer_to_server(servicer, target)
        )

        def lookup(details: grpc.HandlerCallDetails) -> Any:
            return next(h for h in (g.service(details) for g in handlers) if h is not None)

        async def call(method: str, request: Any, context: Any) -> Any:
            # As the gateway's in-process road runs a call (gateway/inprocess.py),
            # but on this thread: the chain's hooks see a LocalContext.
            metadata = tuple(context.invocation_metadata() or ())
            local = LocalContext(metadata, context.time_remaining(), context.peer())
            handler = chain.intercept_service(
                lookup, _Details(f"/spur.runs.v1.RunService/{method}", metadata)
            )
            response = None
            try:
                response = handler.unary_unary(request, local)
            except Exception:
                if local.status_code is None:  # not an abort: a bug, let grpc say so
                    raise
            finally:
                local.terminate()
            if local.status_code not in (None, grpc.StatusCode.OK):
                await context.abort(
                    local.status_code, local.status_details or "", tuple(local.trailing)
                )
            context.set_trailing_metadata(tuple(local.trailing))
            return response

    # Only the two RPCs the bench loads: the others answer UNIMPLEMENTED (the base class).
    class InlineRunService(run_service_pb2_grpc.RunServiceServicer):
        async def GetRun(self, request: Any, context: Any) -> Any:  # type: ignore[override]
            return await call("GetRun", request, context)

        async def ListRuns(self, request: Any, context: Any) -> Any:  # type: ignore[override]
            return await call("ListRuns", request, context)

    server = grpc.aio.server()
    run_service_pb2_grpc.add_RunServiceServicer_to_server(InlineRunService(), server)  # type: ignore[abstract]
    await serve_until_stopped(server, port)
    database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=("sync", "aio", "inline", "inline-frame"), default="aio")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--pool-size", type=int, default=16, help="engine pool (default 16, as spur-runs serve)"
    )
    args = parser.parse_args()
    if args.mode == "sync":
        serve_sync(args.database_url, args.port, args.pool_size)
    elif args.mode in ("inline", "inline-frame"):
        frame = args.mode == "inline-frame"
        asyncio.run(serve_inline(args.database_url, args.port, args.pool_size, frame))
    else:
        asyncio.run(serve_aio(args.database_url, args.port, args.pool_size))


if __name__ == "__main__":
    main()
