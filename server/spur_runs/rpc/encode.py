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

The size measured is also charged to the caller's address until its call
ends (unread.py): answers grpc holds for clients that do not read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..api.spliced import Spliced
from ..errors import ResourceExhausted
from .chain import Call, Handler, Hook, Serializer
from .unread import UnreadAnswers


def _either(serializer: Serializer) -> Serializer:
    def serialize(response: Any) -> bytes:
        if type(response) is Spliced:
            return response.SerializeToString()
        return serializer(response)

    return serialize


class EncodeHook(Hook):
    def __init__(
        self, max_bytes: int, services: Iterable[str], unread: UnreadAnswers | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.unread = unread
        # The methods' names of the services bounded: "/package.Service/".
        self._bounded = tuple(f"/{service}/" for service in services)

    def serializer(self, handler: Handler, serializer: Serializer) -> Serializer:
        # Unary answers only: no streaming method answers a Spliced.
        return serializer if handler.response_streaming else _either(serializer)

    def enter(self, call: Call) -> Any:
        # An address refused for its unread answers is refused at once
        # until it reads (unread.py); `full` is empty but for such clients.
        unread = self.unread
        if unread is not None and unread.full and call.method.startswith(self._bounded):
            error = unread.refusal_before(call.context)
            if error is not None:
                raise error
        return None

    def sent(self, call: Call, state: Any, response: Any) -> None:
        if not call.method.startswith(self._bounded):
            return
        size = _size(response)
        if size > self.max_bytes:
            raise self._too_large()
        if self.unread is not None:
            error = self.unread.charge(call.context, size)
            if error is not None:
                raise error

    def send(self, call: Call, state: Any, item: Any) -> Any:
        # A stream's message (WatchRun): the stream ends with the error
        # (errors.py's hook, outside this one, sends it as the status).
        if item is None or isinstance(item, BaseException):
            return item
        if not call.method.startswith(self._bounded):
            return item
        # (Not charged to unread.py: WatchRun's senders bound a stream
        # that does not read, api/senders.py.)
        return self._too_large() if _size(item) > self.max_bytes else item

    def _too_large(self) -> ResourceExhausted:
        return ResourceExhausted(f"the response is larger than {self.max_bytes} bytes")


def _size(response: Any) -> int:
    if type(response) is Spliced:
        return len(response.SerializeToString())
    return int(response.ByteSize())
