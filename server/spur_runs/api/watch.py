"""WatchRun: one shared poller ("hub") per server process, whatever the
number of watchers.

PySpur's engine writes runs and tasks from another process and tells nobody,
on SQLite as on PostgreSQL, so changes are found by polling. Polling per
watcher would cost the database one query per watcher per interval; the hub
instead looks at ALL watched runs every `--watch-interval` seconds in one
read transaction: one fingerprint statement per 1,000 runs
(watch_sql.fingerprints), then, only for the runs whose fingerprint
moved, their full rows in a few batched statements (watch_sql.load_runs,
the queries of GetRun and ListRuns). A run watched by many clients is looked
at once.

No thread is held per watcher either: WatchRun is a grpc "non-blocking"
handler (as grpc's own health Watch). It validates, reads the run's current
state and sends it on one of the server's threads, registers the watcher and
returns; later messages are sent by a small pool of sender threads. What the
handler or the hub raise reaches the client through the interceptors
(rpc.errors.ErrorHook maps an exception passed to the send callback
to its status; observe and auth apply as to any RPC).

A watcher ends:
- after the message that shows a terminal status (COMPLETED, FAILED,
  CANCELED), with OK, at once if the run already has one;
- with NOT_FOUND when its run is deleted;
- when its client cancels or its deadline passes (a termination callback
  unregisters it);
- with UNAVAILABLE when the server stops (stop()): "watch again", possibly
  on another replica; OK would wrongly say that the run has ended.

Messages are coalesced per watcher (watcher.py): a client that reads slower
than its run changes gets the latest state when it is ready for one, not a
backlog; the terminal state is always the last message. A sender blocked on
a client that does not read is given up, with the other streams of its
connection (senders.py, checked every 0.1 s on a thread of its own), so that
such clients cannot hold the sender threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter, Gauge
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb

from ..errors import DataLoss, NotFound, ResourceExhausted, ServiceError, Unavailable
from ..store import runs, watch_sql
from ..store.db import Database
from ..store.faults import not_utf8_column
from ..telemetry.metrics import Metrics
from ..trust import AddressCounts
from . import convert
from .senders import NonReaders, Stream
from .versions import VersionCache
from .watcher import Send, Watcher, cancel_call, comparable_run, watch_response

log = logging.getLogger(__name__)

TERMINAL = frozenset((run_pb2.Run.COMPLETED, run_pb2.Run.FAILED, run_pb2.Run.CANCELED))
# Threads that write messages to clients. grpc's send blocks until the
# transport took the message (flow control), so a few, not one per watcher;
# senders.py gives up the sends of clients that read nothing.
SENDERS = 8


class TooManyWatchers(ResourceExhausted):
    pass


# What one run's own rows raise as they are read (GetRun answers them with
# an error too): a value that does not decode (ValueError: JSON, text;
# LookupError: an enum name; text not UTF-8, faults.py), one too large (SQLite's length limit, a
# DataError; the size bound), DataLoss. Anything else (the database down, a
# timeout) fails the whole poll, which is tried again.
_RUN_FAULTS = (ValueError, LookupError, sa_exc.DataError, DataLoss, ResourceExhausted)
_Broken = dict[str, ServiceError]


R = TypeVar("R")


def _is_run_fault(error: Exception) -> bool:
    return isinstance(error, _RUN_FAULTS) or not_utf8_column(error) is not None


def _unless_a_run_fault(
    read: Callable[[Any, list[str]], R], conn: Any, run_ids: list[str]
) -> R | None:
    """read(conn, run_ids), or None when one run's rows spoiled it."""
    try:
        return read(conn, run_ids)
    except Exception as error:
        if _is_run_fault(error):
            return None
        raise


def _changed(
    groups: dict[str, list[Watcher]], found: dict[str, watch_sql.Fingerprint]
) -> list[str]:
    """The runs of `found` whose fingerprint moved for any of their watchers."""
    return [
        run_id
        for run_id, fingerprint in found.items()
        if any(w.fingerprint != fingerprint for w in groups[run_id])
    ]


def _unreadable(run_id: str, error: Exception) -> ServiceError:
    """The error that ends the watches of a run that cannot be read."""
    if isinstance(error, ServiceError):
        return error
    if not_utf8_column(error) is not None:
        return DataLoss(f"run {run_id}: the database holds text of it that is not valid UTF-8")
    if isinstance(error, sa_exc.DataError):
        return ResourceExhausted(
            f"run {run_id}: a stored value is larger than any response may carry "
            "(--max-response-bytes)"
        )
    return DataLoss(f"run {run_id} holds a value this service cannot read")


class WatchHub:
    """The registry of watchers and the thread that polls for their runs."""

    def __init__(
        self,
        db: Database,
        versions: VersionCache,
        interval: float,
        max_watchers: int,
        metrics: Metrics | None = None,
        max_per_address: int | None = None,
    ) -> None:
        self._db = db
        self._versions = versions
        self.interval = interval
        self.max_watchers = max_watchers
        # One client address's share of them (under self._lock): without it
        # one client could hold every watch, with no token when tokens are off.
        self._by_address = AddressCounts(max_per_address or max_watchers)
        self._lock = threading.Lock()
        # Watchers being polled for, by run; and all live ones (from their
        # first look at the run to their end), which the limit counts.
        self._by_run: dict[str, set[Watcher]] = {}
        self._all: set[Watcher] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._senders = futures.ThreadPoolExecutor(SENDERS, thread_name_prefix="watch-send")
        self._non_readers = NonReaders(SENDERS, "WatchRun")
        registry = None if metrics is None else metrics.registry
        self._watchers_gauge = Gauge(
            "spur_runs_watchers", "Open WatchRun streams.", registry=registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.polls = Counter(
            "spur_runs_watch_polls", "Looks of the WatchRun poller at the watched runs.",
            registry=registry,
        )  # fmt: skip
        self.statements = Counter(
            "spur_runs_watch_statements",
            "SQL statements of the WatchRun poller (fingerprints and changed runs).",
            registry=registry,
        )
        self.changes = Counter(
            "spur_runs_watch_changes", "Runs the WatchRun poller found changed.",
            registry=registry,
        )  # fmt: skip

    # --- life cycle ---

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watch-hub", daemon=True)
        self._thread.start()
        self._non_readers.start(self._sender_states, self._stopped)

    def stop(self, grace: float = 5.0) -> None:
        """End every stream with UNAVAILABLE and refuse new ones; stop the
        poller. Streams whose client does not take the end within `grace`
        seconds are cancelled."""
        deadline = time.monotonic() + grace
        self._stopped.set()
        # The poller is not waited for: its poll may be stuck in a database
        # that does not answer (a lock on `runs`; the statement is cut once
        # the grace period is over: runtime/serve.py). Waiting for it held
        # the streams open, and the server's taking of new calls, up to the
        # whole grace period. What it finds after this is not sent: a
        # watcher's end, once queued, is the last thing it gets.
        with self._lock:
            watchers = list(self._all)
        for watcher in watchers:
            self._deliver(watcher, Unavailable("the server is shutting down; watch again"))
        while self.watcher_count and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            watchers = list(self._all)
        for watcher in watchers:
            cancel_call(watcher.context)
        self._senders.shutdown(wait=True)

    @property
    def watcher_count(self) -> int:
        with self._lock:
            return len(self._all)

    # --- a new watcher (on one of the server's threads) ---

    def watch(self, run_id: str, context: grpc.ServicerContext, send: Send) -> None:
        """Send the run's current state and register the watcher, or raise
        (NotFound, TooManyWatchers, Unavailable...) before anything is sent."""
        watcher = Watcher(run_id, context, send)
        with self._lock:
            if self._stopped.is_set():
                raise Unavailable("the server is shutting down; watch again")
            if len(self._all) >= self.max_watchers:
                raise TooManyWatchers(
                    f"this server already has {self.max_watchers} open watches; retry later"
                )
            if not self._by_address.take(watcher.address):
                raise TooManyWatchers(
                    f"this client address already holds {self._by_address.limit} open "
                    "watches; close one first"
                )
            self._all.add(watcher)
            self._watchers_gauge.inc()
        try:
            with self._db.read() as conn:
                record = runs.get_run(conn, run_id)
                self._versions.load(conn, [record.version_key])
                fingerprint = watch_sql.fingerprints(conn, [run_id]).get(run_id)
            message = convert.run_to_message(record, self._versions)
        except BaseException:
            self._release(watcher)
            raise
        watcher.fingerprint = fingerprint
        # Unregister however the call ends (cancel, deadline, our own end).
        if not context.add_callback(lambda: self._release(watcher)):
            self._release(watcher)  # the call is over already
            return
        self._deliver(watcher, watch_response(message), final=message.status in TERMINAL)
        if message.status not in TERMINAL:
            watcher.last = comparable_run(message)
            with self._lock:
                stopped = self._stopped.is_set()
                if not watcher.closed and not stopped:
                    self._by_run.setdefault(run_id, set()).add(watcher)
            if stopped:  # stop() may have missed it
                self._deliver(watcher, Unavailable("the server is shutting down; watch again"))

    def _release(self, watcher: Watcher) -> None:
        with self._lock:
            if watcher.closed:
                return
            watcher.closed = True
            self._all.discard(watcher)
            self._by_address.release(watcher.address)
            self._watchers_gauge.dec()
            self._unpoll(watcher)

    def _unpoll(self, watcher: Watcher) -> None:
        """Stop polling for `watcher` (under self._lock)."""
        group = self._by_run.get(watcher.run_id)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._by_run[watcher.run_id]

    # --- the poller's thread ---

    def _run(self) -> None:
        failing = False
        while not self._stopped.wait(self.interval):
            try:
                # Only a poll that asked the database says it answers: with
                # no watcher left (every new watch refused while health is
                # NOT_SERVING) it asks nothing, and logging "answers again"
                # then, in the middle of an outage, misled whoever read it.
                if self.poll() and failing:
                    log.info("WatchRun poller: the database answers again")
                    failing = False
            except Exception as error:  # noqa: BLE001 - keep polling; watchers wait
                if not failing:
                    log.warning("WatchRun poller: %s; retrying every %ss", error, self.interval)
                failing = True

    def poll(self) -> bool:
        """One look at every watched run; pushes what changed. False when
        there was nothing to look at (the database was not asked)."""
        with self._lock:
            groups = {run_id: list(group) for run_id, group in self._by_run.items()}
        if not groups:
            return False
        self.polls.inc()
        found: dict[str, watch_sql.Fingerprint] | None = None
        records: list[runs.RunRecord] | None = None
        changed: list[str] = []
        with self._db.read() as conn:
            event.listen(conn, "before_cursor_execute", self._count_statement)
            try:
                found = _unless_a_run_fault(watch_sql.fingerprints, conn, list(groups))
                if found is not None:
                    changed = _changed(groups, found)
                    records = _unless_a_run_fault(self._load, conn, changed)
            finally:
                event.remove(conn, "before_cursor_execute", self._count_statement)
                if self._stopped.is_set():
                    # stop() did not wait for this poll: the server may have
                    # disposed of its pool meanwhile, which would keep this
                    # connection, given back to it, open for good.
                    conn.invalidate()
        if self._stopped.is_set():
            return True  # every watcher has its end queued: nothing more to read or send
        # One run's rows spoiled a batch: read each run alone (_each), and end
        # the watches of those that cannot be read.
        broken: _Broken = {}
        if found is None:
            found = {}
            for part in self._each(list(groups), watch_sql.fingerprints, broken):
                found.update(part)
            changed = _changed(groups, found)
        if records is None:
            records = [r for part in self._each(changed, self._load, broken) for r in part]
        self.changes.inc(len(changed))
        gone: set[Watcher] = set()  # their run was deleted, its id maybe given to another
        for run_id, watchers in groups.items():
            now = found.get(run_id)
            for watcher in watchers:
                before = watcher.fingerprint
                if run_id in broken:
                    gone.add(watcher)
                    self._deliver(watcher, broken[run_id])
                elif now is None or (before is not None and not watch_sql.same_run(before, now)):
                    gone.add(watcher)
                    self._deliver(watcher, NotFound(f"run {run_id} not found (deleted)"))
        for record in records:
            run_id = record.row.id
            try:
                message = convert.run_to_message(record, self._versions)
            except ServiceError as error:
                # A run this service cannot serve (DATA_LOSS: a number no
                # double holds): its watchers get the error; the other runs
                # of the poll are delivered as usual.
                for watcher in groups[run_id]:
                    if watcher not in gone:
                        self._deliver(watcher, error)
                continue
            comparable = comparable_run(message)
            final = message.status in TERMINAL
            for watcher in groups[run_id]:
                if watcher.fingerprint == found[run_id] or watcher in gone:
                    continue
                watcher.fingerprint = found[run_id]
                # A fingerprint can move with nothing a client sees (a JSON
                # value rewritten as it was): send only real changes.
                if final or comparable != watcher.last:
                    watcher.last = comparable
                    self._deliver(watcher, watch_response(message), final=final)
        return True

    def _load(self, conn: Any, run_ids: list[str]) -> list[runs.RunRecord]:
        """The runs of `run_ids`, with their workflow versions in the cache."""
        records = watch_sql.load_runs(conn, run_ids) if run_ids else []
        self._versions.load(conn, (r.version_key for r in records))
        return records

    def _each(
        self, run_ids: list[str], read: Callable[[Any, list[str]], R], broken: _Broken
    ) -> list[R]:
        """read(conn, [run_id]) for each run alone, each in a transaction of
        its own (PostgreSQL's first may have been aborted); a run whose read
        fails with a _RUN_FAULTS goes to `broken`, with the error that ends
        its watches. Such a run used to fail every poll: every watch of every
        run went silent until its deadline, the run's own too."""
        results: list[R] = []
        for run_id in run_ids:
            if run_id in broken:
                continue
            try:
                with self._db.read() as conn:
                    results.append(read(conn, [run_id]))
            except Exception as error:
                if not _is_run_fault(error):
                    raise
                log.warning("WatchRun: run %s cannot be read, its watches end: %s", run_id, error)
                broken[run_id] = _unreadable(run_id, error)
        return results

    def _count_statement(self, *_args: Any) -> None:
        self.statements.inc()

    # --- sending (coalesced per watcher, ordered) ---

    def _deliver(
        self,
        watcher: Watcher,
        item: pb.WatchRunResponse | BaseException,
        final: bool = False,
    ) -> None:
        """Queue `item` (a message, or an exception that ends the stream with
        its status) for `watcher`; `final`: end with OK after the message."""
        if isinstance(item, BaseException) or final:
            with self._lock:  # no more polling for it
                self._unpoll(watcher)
        if not watcher.queue(item, final):
            return
        try:
            self._senders.submit(self._drain, watcher)
        except RuntimeError:  # shutting down: send on this thread
            self._drain(watcher)

    def _drain(self, watcher: Watcher) -> None:
        while True:
            item, final = watcher.take()
            if item is None:
                return
            try:
                watcher.send(item)
                if final and not isinstance(item, BaseException):
                    watcher.send(None)
            except Exception:  # noqa: BLE001 - one stream's failure is its own
                log.exception("WatchRun: sending to a watcher of %s failed", watcher.run_id)
                cancel_call(watcher.context)
                return

    def _sender_states(self) -> list[Stream]:
        """Every stream, as the senders' check sees it (senders.py)."""
        with self._lock:
            watchers = list(self._all)
        return [(w.context, w.peer, w.in_send_since, w.waiting) for w in watchers]
