"""Domain errors: what storage, validation and the service raise when a
request cannot be answered. They know nothing of gRPC or HTTP; rpc/status.py
is the one place that maps them to codes and statuses.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors a client may see (INTERNAL unless a subclass says
    otherwise in rpc/status.py's table)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request field has a value the service does not accept."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"invalid {field}: {description}")
        self.field = field
        self.description = description


class NotFound(ServiceError):
    pass


class FailedPrecondition(ServiceError):
    pass


class Unavailable(ServiceError):
    pass


class Aborted(ServiceError):
    """A write that met another writer's concurrent change: nothing was
    written, and the same call again may succeed."""


class DeadlineExceeded(ServiceError):
    pass


class ResourceExhausted(ServiceError):
    """A bound was reached (watchers, reflection streams); retry later."""


class DiskFull(ResourceExhausted):
    """The database's disk is full (SQLite's SQLITE_FULL, PostgreSQL's
    disk_full): writes fail until an operator frees space. Not UNAVAILABLE,
    which clients retry at once and which says nothing of the cause; gRPC's
    RESOURCE_EXHAUSTED names "perhaps the entire file system is out of
    space"."""


class DataLoss(ServiceError):
    """Stored data this service cannot represent faithfully (a workflow
    definition that is no JSON object, say): refused with what is wrong,
    rather than served changed or turned into an INTERNAL error."""
