"""gRPC server reflection (grpc.reflection.v1alpha) that documents and that no
client can use to take the server's threads.

What it serves: the file descriptors of the registered services and their
imports, and of the error details the services send (DETAIL_FILES), with
our protos' source info (comments) taken from
generated/spur/runs/v1/descriptor_set.binpb, which the _pb2 modules leave
out (the paths of its locations index the same elements: both come from one
protoc run of the same files); so `grpcurl describe` shows the protos'
comments. Every symbol of those files is found (messages, nested types,
enums and their values, services, methods, fields, extensions), so `grpcurl describe
spur.runs.v1.RunService.ListRuns` works; grpcio-reflection looks symbols up
in the descriptor pool, which finds no method.

How it is served: ServerReflectionInfo is a bidirectional stream, and grpc
has no way to wait for a client's next request without a thread. grpcio-
reflection's servicer waits on one of the RPC threads, so four idle streams
(four clients that send nothing) stopped every other call. Here the method
is grpc's non-blocking form: the RPC thread only hands the stream to this
module's own pool of REFLECTION_STREAMS threads and returns. When all of
them are busy, a new stream gets RESOURCE_EXHAUSTED at once (no queue), and
a stream that sends nothing for IDLE_SECONDS, or that lasts MAX_SECONDS, is
cancelled. A grpcurl command takes one stream for well under a second.
One client address holds at most REFLECTION_STREAMS_PER_ADDRESS of them:
one client re-opening its streams held all four, and every other got
RESOURCE_EXHAUSTED (a review, 2026-12-04).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2

from ..errors import InvalidArgument, ResourceExhausted, Unavailable
from ..trust import AddressCounts, address_of

log = logging.getLogger(__name__)

SERVICE_NAME = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
METHOD = "ServerReflectionInfo"
# Reflection streams served at once, per process (each holds a thread of
# this module's pool while it waits for its client's next request).
REFLECTION_STREAMS = 4
REFLECTION_STREAMS_PER_ADDRESS = 2
# A stream whose client sends nothing this long, or that is this old, is
# cancelled: grpcurl sends its requests at once and closes within a second.
IDLE_SECONDS = 10.0
MAX_SECONDS = 60.0
# Descriptor sets with source info, (package, resource): protos/generate.py.
SOURCE_INFO = (("spur.runs.v1", "descriptor_set.binpb"),)
# Files no service imports that clients need all the same: the types an
# error carries in grpc-status-details-bin (google.rpc.Status, and the
# BadRequest of every INVALID_ARGUMENT). Without them grpcurl printed the
# detail as "google.rpc.BadRequest is not recognized" (a review, 2026-12-03).
DETAIL_FILES = (status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR)

_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


class TooManyReflectionStreams(ResourceExhausted):
    pass


def _source_info(sets: Iterable[tuple[str, str]]) -> dict[str, descriptor_pb2.SourceCodeInfo]:
    """File name -> its source info (comments), from descriptor sets."""
    found: dict[str, descriptor_pb2.SourceCodeInfo] = {}
    for package, name in sets:
        try:
            data = resources.files(package).joinpath(name).read_bytes()
        except (FileNotFoundError, ModuleNotFoundError) as error:
            log.warning("reflection serves the protos without comments: %s", error)
            continue
        for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
            found[file.name] = file.source_code_info
    return found


def _symbols(file: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    """The full names of everything a file defines."""
    prefix = f"{file.package}." if file.package else ""

    def message(proto: descriptor_pb2.DescriptorProto, scope: str) -> Iterator[str]:
        name = scope + proto.name
        yield name
        yield from (f"{name}.{f.name}" for f in proto.field)
        yield from (f"{name}.{f.name}" for f in proto.extension)
        yield from (f"{name}.{o.name}" for o in proto.oneof_decl)
        for nested in proto.nested_type:
            yield from message(nested, name + ".")
        for nested_enum in proto.enum_type:
            yield from enum(nested_enum, name + ".")

    def enum(proto: descriptor_pb2.EnumDescriptorProto, scope: str) -> Iterator[str]:
        yield scope + proto.name
        # Enum values are scoped like siblings of their enum (C++ rules).
        yield from (scope + v.name for v in proto.value)

    for proto in file.message_type:
        yield from message(proto, prefix)
    for proto_enum in file.enum_type:
        yield from enum(proto_enum, prefix)
    for service in file.service:
        yield prefix + service.name
        yield from (f"{prefix}{service.name}.{m.name}" for m in service.method)
    yield from (prefix + e.name for e in file.extension)


class Descriptors:
    """The answers of reflection: files, by name and by symbol."""

    def __init__(
        self,
        services: Iterable[ServiceDescriptor],
        sets: Iterable[tuple[str, str]] = SOURCE_INFO,
        pool: descriptor_pool.DescriptorPool | None = None,
        files: Iterable[FileDescriptor] = DETAIL_FILES,
    ) -> None:
        services = list(services)
        self.service_names = sorted(s.full_name for s in services)
        self._pool = pool or descriptor_pool.Default()
        comments = _source_info(sets)
        # Every file the services need, with its imports, once.
        self._deps: dict[str, list[str]] = {}
        self._files: dict[str, bytes] = {}
        self._by_symbol: dict[str, str] = {}
        pending = [s.file for s in services] + list(files)
        while pending:
            file = pending.pop()
            if file.name in self._files:
                continue
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            # The descriptor as the _pb2 module has it, plus its comments
            # (the set's own descriptor differs: protoc adds json_name to
            # every field there, which would change grpcurl's JSON names).
            if file.name in comments:
                proto.source_code_info.CopyFrom(comments[file.name])
            self._files[file.name] = proto.SerializeToString()
            self._deps[file.name] = [d.name for d in file.dependencies]
            for symbol in _symbols(proto):
                self._by_symbol.setdefault(symbol, file.name)
            pending.extend(file.dependencies)

    def answer(self, request: reflection_pb2.ServerReflectionRequest) -> Any:
        response = reflection_pb2.ServerReflectionResponse(original_request=request)
        kind = request.WhichOneof("message_request")
        found: str | None = None
        if kind == "list_services":
            response.list_services_response.service.extend(
                reflection_pb2.ServiceResponse(name=name) for name in self.service_names
            )
            return response
        if kind == "file_by_filename":
            found = request.file_by_filename if request.file_by_filename in self._files else None
        elif kind == "file_containing_symbol":
            found = self._by_symbol.get(request.file_containing_symbol)
        elif kind == "file_containing_extension":
            found = self._extension_file(request.file_containing_extension)
        elif kind == "all_extension_numbers_of_type":
            numbers = self._extension_numbers(request.all_extension_numbers_of_type)
            if numbers is not None:
                reply = response.all_extension_numbers_response
                reply.base_type_name = request.all_extension_numbers_of_type
                reply.extension_number.extend(numbers)
                return response
        else:
            response.error_response.error_code = _INVALID
            response.error_response.error_message = "no request in the message"
            return response
        if found is None:
            response.error_response.error_code = _NOT_FOUND
            response.error_response.error_message = "not found"
            return response
        response.file_descriptor_response.file_descriptor_proto.extend(self._closure(found))
        return response

    def _closure(self, name: str) -> list[bytes]:
        """The file, then every file it imports, transitively (what grpc's
        reflection sends too: the client needs them all to use it)."""
        order: list[str] = []
        pending = [name]
        while pending:
            current = pending.pop(0)
            if current not in order:
                order.append(current)
                pending.extend(self._deps.get(current, ()))
        return [self._files[n] for n in order if n in self._files]

    def _extension_file(self, request: reflection_pb2.ExtensionRequest) -> str | None:
        try:
            message = self._pool.FindMessageTypeByName(request.containing_type)
            extension = self._pool.FindExtensionByNumber(message, request.extension_number)
        except KeyError:
            return None
        file: FileDescriptor = self._pool.FindFileContainingSymbol(extension.full_name)
        return file.name if file.name in self._files else None

    def _extension_numbers(self, containing_type: str) -> list[int] | None:
        try:
            message = self._pool.FindMessageTypeByName(containing_type)
        except KeyError:
            return None
        return sorted(e.number for e in self._pool.FindAllExtensions(message))


class _Stream:
    __slots__ = ("context", "started", "active")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.started = time.monotonic()
        self.active = self.started  # when its client last sent a request


class Reflection:
    """The ServerReflection service: register() it on a grpc server."""

    def __init__(self, services: Iterable[ServiceDescriptor]) -> None:
        self.descriptors = Descriptors(services)
        self._slots = threading.BoundedSemaphore(REFLECTION_STREAMS)
        self._threads = futures.ThreadPoolExecutor(
            REFLECTION_STREAMS, thread_name_prefix="reflection"
        )
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        # Streams open per client address, each within its bound.
        self._by_address = AddressCounts(REFLECTION_STREAMS_PER_ADDRESS)
        self._stopped = threading.Event()
        # Started with the first stream: a server that fails to start, or
        # that nobody asks, has no such thread.
        self._reaper: threading.Thread | None = None

    @property
    def stream_count(self) -> int:
        """Streams being served now (each on one of this module's threads)."""
        with self._lock:
            return len(self._streams)

    def register(self, server: grpc.Server) -> None:
        # Requests arrive as bytes (no deserializer): bytes that do not parse
        # get INVALID_ARGUMENT here instead of grpc's INTERNAL.
        handler = grpc.stream_stream_rpc_method_handler(
            self.serve,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD: handler}),)
        )

    def serve(
        self, requests: Iterator[bytes], context: grpc.ServicerContext, send_response_callback: Any
    ) -> None:
        """Hand the stream to a reflection thread, or refuse it at once."""
        address = address_of(context.peer())
        with self._lock:
            if not self._by_address.take(address):
                raise TooManyReflectionStreams(
                    f"this client address has {REFLECTION_STREAMS_PER_ADDRESS} reflection "
                    "streams open already; close one or retry later"
                )
        if not self._slots.acquire(blocking=False):
            self._leave(address)
            raise TooManyReflectionStreams(
                f"{REFLECTION_STREAMS} reflection streams are open already; retry later"
            )
        try:
            self._threads.submit(self._serve, requests, context, send_response_callback, address)
        except RuntimeError:  # the pool is shut: the server is stopping
            self._slots.release()
            self._leave(address)
            raise Unavailable("the server is shutting down") from None

    # grpc calls it with a send callback and frees its thread when it returns.
    serve.experimental_non_blocking = True  # type: ignore[attr-defined]

    def _leave(self, address: str) -> None:
        with self._lock:
            self._by_address.release(address)

    def _serve(
        self, requests: Iterator[bytes], context: grpc.ServicerContext, send: Any, address: str
    ) -> None:
        stream = _Stream(context)
        with self._lock:
            self._streams.add(stream)
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="reflection-idle", daemon=True
                )
                self._reaper.start()
        try:
            for data in requests:
                stream.active = time.monotonic()
                try:
                    request = reflection_pb2.ServerReflectionRequest.FromString(data)
                except DecodeError as error:
                    send(InvalidArgument("request", f"is not a valid protobuf message: {error}"))
                    return
                send(self.descriptors.answer(request))
            send(None)  # the client is done: OK
        except grpc.RpcError:
            pass  # cancelled (by its client, its deadline or the reaper)
        except Exception as error:  # noqa: BLE001 - the stream's status, via the interceptors
            send(error)
        finally:
            with self._lock:
                self._streams.discard(stream)
            self._slots.release()
            self._leave(address)

    def _reap(self) -> None:
        while not self._stopped.wait(1.0):
            now = time.monotonic()
            with self._lock:
                stale = [
                    s
                    for s in self._streams
                    if now - s.active > IDLE_SECONDS or now - s.started > MAX_SECONDS
                ]
            for stream in stale:
                stream.context.cancel()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """When the server stops: cancel the open streams (a grpcurl command
        is retried in a moment; an idle stream must not hold the shutdown
        for its grace period) and refuse new ones (UNAVAILABLE)."""
        self._stopped.set()
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.context.cancel()  # type: ignore[no-untyped-call]
