"""The one mapping of domain errors (spur_runs.errors) to gRPC codes,
google.rpc.Status and HTTP statuses.

`to_status` turns any exception into a `google.rpc.Status`: domain errors keep
their code and message (plus a `google.rpc.BadRequest` detail naming the
field for invalid arguments), a database whose disk is full
RESOURCE_EXHAUSTED (as the domain error DiskFull), a database that cannot
be reached UNAVAILABLE, a transaction aborted for a concurrent one ABORTED, a lock wait
past the deadline DEADLINE_EXCEEDED, stored text that is not UTF-8 or JSON nested
deeper than Python recurses DATA_LOSS, and anything else
becomes INTERNAL with a generic message while the traceback goes to the log,
never to the client.
"""

from __future__ import annotations

import logging
import traceback

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from sqlalchemy import exc as sa_exc

from ..errors import (
    Aborted,
    DataLoss,
    DeadlineExceeded,
    DiskFull,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from ..store.faults import not_utf8_column

log = logging.getLogger(__name__)

# A subclass maps as its nearest listed base (TooManyWatchers as
# ResourceExhausted); a ServiceError listed nowhere is INTERNAL.
CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Aborted: grpc.StatusCode.ABORTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DataLoss: grpc.StatusCode.DATA_LOSS,
}


def code_of(error: ServiceError) -> grpc.StatusCode:
    """The gRPC code of a domain error."""
    for cls in type(error).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


# grpc-gateway's mapping (runtime/errors.go HTTPStatusFromCode), so that HTTP
# callers see the statuses that gateway users expect.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# Errors of the database driver that mean "the database cannot be reached or
# dropped the connection", as opposed to a bug in a query.
_DISCONNECTS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


# SQLSTATE of a statement cancelled by statement_timeout (db.py sets it from
# --db-timeout-seconds or the client's deadline), and SQLite's code for one
# that db.py's watchdog interrupted for the same reasons: the call ran out of
# time, the database is fine.
_QUERY_CANCELED = "57014"
_SQLITE_INTERRUPT = "SQLITE_INTERRUPT"


def _driver(error: BaseException, attribute: str) -> object:
    """An attribute of the driver's exception that SQLAlchemy wraps
    (psycopg's `sqlstate`, sqlite3's `sqlite_errorname`), or None."""
    return getattr(getattr(error, "orig", None), attribute, None)


def _is_timeout(error: BaseException) -> bool:
    return (
        _driver(error, "sqlstate") == _QUERY_CANCELED
        or _driver(error, "sqlite_errorname") == _SQLITE_INTERRUPT
    )


# A transaction the database gave up on for another's sake (PostgreSQL's
# deadlock_detected): nothing was written, and the same call again may
# succeed: ABORTED, which says so (not UNAVAILABLE). (serialization_failure,
# 40001, is what a hot standby's recovery conflict cancels a read with:
# UNAVAILABLE, which production.md's retry policy retries; our own
# transactions are READ COMMITTED and never fail so.)
_CONFLICTS = frozenset(("40P01",))
# SQLite's write lock still held by another writer after busy_timeout
# (--db-timeout-seconds, or less for a shorter deadline): the database is
# up, the call ran out of time waiting (configuration.md).
_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
# SQLite's generic error (no such table or column, too many SQL variables):
# a schema or a query that is wrong, which no retry mends.
_SQLITE_ERROR = "SQLITE_ERROR"


# A database out of disk space: SQLite's SQLITE_FULL ("database or disk is
# full": a write the file or its journal could not grow for) and
# PostgreSQL's disk_full. Both arrive as OperationalError, which read as
# UNAVAILABLE ("retry later") and hid the cause; retries do not mend it
# until someone frees space. (Class 53's other codes, too_many_connections
# and out_of_memory, pass and stay UNAVAILABLE.)
_SQLITE_FULL = "SQLITE_FULL"
_DISK_FULL = "53100"


def _is_disk_full(error: BaseException) -> bool:
    return (
        _driver(error, "sqlite_errorname") == _SQLITE_FULL
        or _driver(error, "sqlstate") == _DISK_FULL
    )


def _disk_full(error: BaseException, method: str) -> DiskFull:
    """The domain error for a full disk, logged at ERROR (once: it is what
    an operator must act on), with the driver's first line (which file,
    which tablespace; not the statement or its values); the traceback with
    --log-level DEBUG."""
    cause = getattr(error, "orig", None) or error
    said = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    log.error("the database's disk is full in %s: %s", method, said)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("the database error behind it", exc_info=error)
    return DiskFull("the database's disk is full; nothing was written, retry once space is freed")


# A database that takes no writes: SQLite's file or folder not writable (a
# read-only volume, another owner: SQLITE_READONLY and its extended codes),
# or a PostgreSQL standby named as --database-url (read_only_sql_transaction).
# It read as UNAVAILABLE ("retry later"), logged with the error's class name
# only; no retry mends it until an operator does: FAILED_PRECONDITION, logged
# at ERROR with the driver's words.
_SQLITE_READONLY = "SQLITE_READONLY"
_READ_ONLY_TRANSACTION = "25006"


def _is_read_only(error: BaseException) -> bool:
    return (
        str(_driver(error, "sqlite_errorname") or "").startswith(_SQLITE_READONLY)
        or _driver(error, "sqlstate") == _READ_ONLY_TRANSACTION
    )


def _read_only(error: BaseException, method: str) -> status_pb2.Status:
    cause = getattr(error, "orig", None) or error
    said = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    log.error("the database takes no writes in %s: %s", method, said)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("the database error behind it", exc_info=error)
    return status_pb2.Status(
        code=code_pb2.FAILED_PRECONDITION,
        message="the database takes no writes (read-only); nothing was written",
    )


def _is_conflict(error: BaseException) -> bool:
    return _driver(error, "sqlstate") in _CONFLICTS


def _is_busy(error: BaseException) -> bool:
    name = _driver(error, "sqlite_errorname")
    return isinstance(name, str) and name.startswith(_SQLITE_BUSY)


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if _driver(error, "sqlite_errorname") == _SQLITE_ERROR:
        return False
    return isinstance(error, _DISCONNECTS)


def to_status(error: BaseException, method: str = "") -> status_pb2.Status:
    """The google.rpc.Status a client receives for `error`."""
    if _is_disk_full(error):
        error = _disk_full(error, method)
    if isinstance(error, ServiceError):
        status = status_pb2.Status(code=code_of(error).value[0], message=error.message)
        if isinstance(error, InvalidArgument):
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=error.field, description=error.description
                        )
                    ]
                )
            )
            status.details.append(detail)
        return status
    if _is_timeout(error):
        log.warning("database statement timed out in %s", method)
        return status_pb2.Status(
            code=code_pb2.DEADLINE_EXCEEDED,
            message="the database did not answer within the deadline; retry later",
        )
    column = not_utf8_column(error)
    if column is not None:
        where = f" (column {column})" if column else ""
        log.warning("stored text that is not UTF-8 in %s%s", method, where)
        return status_pb2.Status(
            code=code_pb2.DATA_LOSS,
            message=f"the database holds text that is not valid UTF-8{where}",
        )
    if isinstance(error, RecursionError):
        # Only stored JSON nests this deep (a broken or hostile writer of
        # PySpur's database): data no retry mends, not a bug, and its
        # traceback would be thousands of lines per call. Where it ran out
        # is logged, so that a recursion of our own would still show.
        frame = traceback.extract_tb(error.__traceback__)[-1:]
        where = f"{frame[0].filename}:{frame[0].lineno} {frame[0].name}" if frame else "?"
        log.warning("stored JSON nested too deeply to serve in %s (at %s)", method, where)
        return status_pb2.Status(code=code_pb2.DATA_LOSS, message=NESTED_TOO_DEEPLY)
    if _is_read_only(error):
        return _read_only(error, method)
    if _is_conflict(error):
        return _database(
            error,
            f"database transaction aborted by a conflict in {method}",
            code_pb2.ABORTED,
            "the database aborted the transaction for a concurrent one "
            "(nothing was written); retry",
        )
    if _is_busy(error):
        return _database(
            error,
            f"database lock wait ran out of time in {method}",
            code_pb2.DEADLINE_EXCEEDED,
            "another writer held the database's lock for longer than the deadline; retry later",
        )
    if _is_unavailable(error):
        return _database(
            error,
            f"database unavailable in {method}: {error.__class__.__name__}",
            code_pb2.UNAVAILABLE,
            "the database is unavailable; retry later",
        )
    log.error("unexpected error in %s", method, exc_info=error)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


NESTED_TOO_DEEPLY = "the database holds JSON nested too deeply for this service to serve"


def _database(error: BaseException, logged: str, code: int, message: str) -> status_pb2.Status:
    """A database failure a client may retry: one warning naming its kind,
    and with --log-level DEBUG the driver's own words and the traceback (the
    warning leaves them out: statements and their values may hold what the
    log should not)."""
    log.warning("%s", logged)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("the database error behind it", exc_info=error)
    return status_pb2.Status(code=code, message=message)


def grpc_code(status: status_pb2.Status) -> grpc.StatusCode:
    return _CODES[status.code]


_CODES = {code.value[0]: code for code in grpc.StatusCode}
