"""One WatchRun stream, as the hub (watch.py) keeps it: a `Watcher` holds
what the poller compares (the run's fingerprint, the last state sent) and
its send state, through which messages are coalesced (a newer one replaces
one not yet sent) and sent in order, the end last. And the helpers on a
watcher's messages and call: the response that carries a run, the run as
compared with the last one sent, and cancelling the call from the server's
side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb

from ..store import watch_sql
from ..trust import caller_address

# grpc's send callback of a non-blocking handler: a message; an exception,
# the end with its status; None, the end with OK.
Send = Callable[[Any], None]


class Watcher:
    """One WatchRun stream. Its fields are guarded by the hub's lock, but for
    the send state, guarded by its own."""

    __slots__ = (
        "run_id", "context", "peer", "address", "_send", "fingerprint", "last", "closed",
        "_lock", "_pending", "_final", "_draining", "in_send_since",
    )  # fmt: skip

    def __init__(self, run_id: str, context: grpc.ServicerContext, send: Send) -> None:
        self.run_id = run_id
        self.context = context
        self.peer = context.peer()  # its connection (senders.py)
        # Its client (an HTTP watch's, through the gateway): the per-address bound.
        self.address = caller_address(self.peer, context.invocation_metadata())
        self._send = send
        self.fingerprint: watch_sql.Fingerprint | None = None
        self.last: run_pb2.Run | None = None  # last state sent, duration cleared
        self.closed = False
        self._lock = threading.Lock()
        # What is still to be sent: a message, or an exception (the end).
        self._pending: pb.WatchRunResponse | BaseException | None = None
        self._final = False  # after _pending is sent, end the stream
        self._draining = False  # a drain is queued or running for it
        # When the send a sender thread is in began (None: no thread is in
        # one; a drain waiting for a thread is not).
        self.in_send_since: float | None = None

    # The send state, for the hub's senders: queue() and take() hand items
    # over under the watcher's own lock, so that a drain sends them in order.

    def queue(self, item: pb.WatchRunResponse | BaseException, final: bool) -> bool:
        """Make `item` the next to send (it replaces one not yet sent); True
        when no drain is running and the caller must start one."""
        with self._lock:
            if self._final:
                return False  # the end is queued already; nothing goes after it
            self._pending = item
            self._final = final or isinstance(item, BaseException)
            if self._draining:
                return False  # the running drain sends it next
            self._draining = True
            return True

    def take(self) -> tuple[pb.WatchRunResponse | BaseException | None, bool]:
        """The item to send now and whether it is the last; (None, False)
        when there is none, and the drain ends."""
        with self._lock:
            item, self._pending = self._pending, None
            if item is None:
                self._draining = False
                return None, False
            return item, self._final

    @property
    def waiting(self) -> bool:
        """A message of it waits for a sender (senders.py; read without the
        lock: a hint for the jam check, which runs again 0.1 s later)."""
        return self._draining and self.in_send_since is None

    def send(self, item: pb.WatchRunResponse | BaseException | None) -> None:
        self.in_send_since = time.monotonic()
        try:
            self._send(item)
        finally:
            self.in_send_since = None


def watch_response(run: run_pb2.Run) -> pb.WatchRunResponse:
    # Not WatchRunResponse(run=run): protobuf merges that by parsing the
    # run's bytes, which refuses JSON nested ~49 levels or more (upb's depth
    # limit of 100) that GetRun serves; CopyFrom does not parse.
    response = pb.WatchRunResponse()
    response.run.CopyFrom(run)
    return response


def comparable_run(run: run_pb2.Run) -> run_pb2.Run:
    """The run without `duration`, which moves with the clock alone."""
    copy = run_pb2.Run()
    copy.CopyFrom(run)
    copy.ClearField("duration")
    return copy


def cancel_call(context: grpc.ServicerContext) -> None:
    """Cancel the call from the server's side: a send blocked on it returns,
    its termination callbacks run (the client sees CANCELLED)."""
    context.cancel()  # type: ignore[no-untyped-call]
