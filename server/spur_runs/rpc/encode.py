"""Answers that are api.spliced.Spliced are serialized by themselves.

The servicer answers GetRun, ListRuns and GetChildRuns with a Spliced when
runtime/server.py asks it to (`RunService(splice=True)`): the message
without its runs' workflow versions, which its SerializeToString puts in as
cached bytes. The methods' own serializers (the generated
`Response.SerializeToString`) take messages only: this hook wraps them, once
per method, so that a Spliced serializes itself and a message as before.

It also holds answers to `--max-response-bytes`, for gRPC callers and the
HTTP gateway's in-process calls alike. grpc refuses a larger message only
once the behavior has returned, in its transport: the call then counted as
OK in the access log and the metrics while the client got
RESOURCE_EXHAUSTED, with grpc's own words (a review, 2026-12-03). Measured
here, in the chain, it is an error like any other (errors.py): its status,
its message, its trailers, counted as what the client got. A Spliced is
measured by making its bytes, which its serializer then sends as they are.

The bound is the API's: it holds the answers of the services given
(RunService), whose size follows from the stored data. Reflection's and
health's answers are fixed by the protos (the largest, the file of
run_service.proto with its imports and comments, is some 36 KB): a
`--max-response-bytes 32768` made every grpcurl command fail with
RESOURCE_EXHAUSTED (a review, 2026-12-04). They are not measured here, and
grpc's own bound (rpc/limits.py) is never below FIXED_ANSWER_BYTES.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..api.spliced import Spliced
from ..errors import ResourceExhausted
from .chain import Call, Handler, Hook, Serializer


def _either(serializer: Serializer) -> Serializer:
    def serialize(response: Any) -> bytes:
        if type(response) is Spliced:
            return response.SerializeToString()
        return serializer(response)

    return serialize


class EncodeHook(Hook):
    def __init__(self, max_bytes: int, services: Iterable[str]) -> None:
        self.max_bytes = max_bytes
        # The methods' names of the services bounded: "/package.Service/".
        self._bounded = tuple(f"/{service}/" for service in services)

    def serializer(self, handler: Handler, serializer: Serializer) -> Serializer:
        # Unary answers only: no streaming method answers a Spliced.
        return serializer if handler.response_streaming else _either(serializer)

    def sent(self, call: Call, state: Any, response: Any) -> None:
        if not call.method.startswith(self._bounded):
            return
        error = self._too_large(response)
        if error is not None:
            raise error

    def send(self, call: Call, state: Any, item: Any) -> Any:
        # A stream's message (WatchRun): the stream ends with the error
        # (errors.py's hook, outside this one, sends it as the status).
        if item is None or isinstance(item, BaseException):
            return item
        if not call.method.startswith(self._bounded):
            return item
        return self._too_large(item) or item

    def _too_large(self, response: Any) -> ResourceExhausted | None:
        if type(response) is Spliced:
            size = len(response.SerializeToString())
        else:
            size = response.ByteSize()
        if size > self.max_bytes:
            return ResourceExhausted(f"the response is larger than {self.max_bytes} bytes")
        return None
