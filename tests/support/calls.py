"""Looking at a call's error: its code and google.rpc details, and the SQL
statements the server ran for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import event

from spur_runs.runtime.server import RunsServer


def call_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)  # type: ignore[operator]
    return raised.value


def bad_request_field(error: grpc.RpcError) -> str:
    """The field named by the google.rpc.BadRequest detail of an error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    (detail,) = status.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    (violation,) = bad.field_violations
    return str(violation.field)


@contextmanager
def count_statements(server: RunsServer) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith(("BEGIN", "SELECT 1", "PRAGMA")):
            statements.append(statement)

    event.listen(server.db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(server.db.engine, "before_cursor_execute", record)
