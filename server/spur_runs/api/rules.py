"""What the RunService accepts in its requests' fields, stated once.

The checks (service.py, filters.py) apply these rules, and the gateway's
OpenAPI document states them (gateway/openapi.py, keyed by REQUEST_RULES),
so that a client generated from the document, or a fuzzer, knows what the
server refuses before it is refused. tests/integration/test_openapi.py sends
values just inside and just outside each stated rule to a real server, so
the two cannot drift apart.

Only what one field's value decides is here. What depends on two fields
(`page` beyond 1 with a `page_token`, `start_time_before` not after
`start_time_after`) or on the server's state (a token's checksum, a time's
range in the database) is left to the fields' descriptions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from spur.runs.v1 import run_service_pb2 as pb

from ..errors import InvalidArgument
from .convert import STORED_RUN_STATUS
from .paging import INTID_MAX


@dataclass(frozen=True)
class Text:
    """A string field whose value must match `pattern` whole and hold at
    most `max_length` characters. `pattern` is written in what Python's re
    and ECMA-262 (JSON Schema's regular expressions) read alike: no \\d (a
    Unicode digit to Python), no look-behind, no named groups."""

    pattern: str
    max_length: int
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))

    def matches(self, value: str) -> bool:
        return len(value) <= self.max_length and self.regex.fullmatch(value) is not None


@dataclass(frozen=True)
class Count:
    """A proto3 `optional` integer field: `default` when unset (None), else
    at least `minimum` and, when `maximum` is set, at most that (None: the
    field's type bounds it, which the gateway checks as it parses)."""

    minimum: int
    default: int
    maximum: int | None = None

    def check(self, value: int | None, field: str) -> int:
        if value is None:
            return self.default
        if self.maximum is None:
            if value < self.minimum:
                raise InvalidArgument(field, f"must be at least {self.minimum}, got {value}")
        elif not self.minimum <= value <= self.maximum:
            raise InvalidArgument(
                field, f"must be between {self.minimum} and {self.maximum}, got {value}"
            )
        return value


@dataclass(frozen=True)
class Choice:
    """An enum field that takes only some of its enum's numbers (the others
    are INVALID_ARGUMENT)."""

    numbers: frozenset[int]


Rule = Text | Count | Choice

# Ids are computed by the database as a letter || _intid, a 64-bit integer
# (from 1 in PySpur, any in a row another tool wrote).
_INTID_DIGITS = len(str(INTID_MAX))
# A run's: so R0 and R-3 may be listed, and asked for.
RUN_ID = Text(rf"R(?:0|-?[1-9][0-9]{{0,{_INTID_DIGITS - 1}}})", len("R-") + _INTID_DIGITS)
# A workflow's, as a filter: PySpur's own ones only (from S1). Empty is the
# filter left unset, as proto3 cannot tell the two apart.
WORKFLOW_ID = Text(rf"(?:S[1-9][0-9]{{0,{_INTID_DIGITS - 1}}})?", len("S") + _INTID_DIGITS)
# PySpur's run types are short words ("interactive", "batch", "openai"): the
# bound keeps a filter from being a way to send the database a megabyte, and
# PostgreSQL text cannot hold NUL (no run type has a control character).
RUN_TYPE = Text(r"[^\x00-\x1f\x7f]*", 100)

# PySpur's `page`, from 1; its top is int32's.
PAGE = Count(minimum=1, default=1)
# Page sizes: an explicit 0 is out of range, as the seed's `min: 1` says.
LIST_PAGE_SIZE = Count(minimum=1, default=10, maximum=100)
# 1000 holds every task of a typical run in one page.
TASKS_PAGE_SIZE = Count(minimum=1, default=1000, maximum=1000)
CHILDREN_PAGE_SIZE = Count(minimum=1, default=100, maximum=100)

# ListRuns' status filter: the statuses a stored run can have, so not
# STATUS_UNSPECIFIED, which no run has.
RUN_STATUS_FILTER = Choice(frozenset(STORED_RUN_STATUS))


def _field(request: type[Message], name: str) -> str:
    return str(request.DESCRIPTOR.fields_by_name[name].full_name)


# Request field (full name) -> its rule: what the OpenAPI document states.
REQUEST_RULES: Mapping[str, Rule] = {
    # Every RPC's run_id (validate_run_id, service.py).
    **{
        method.input_type.fields_by_name["run_id"].full_name: RUN_ID
        for method in pb.DESCRIPTOR.services_by_name["RunService"].methods
        if "run_id" in method.input_type.fields_by_name
    },
    _field(pb.ListRunsRequest, "page"): PAGE,
    _field(pb.ListRunsRequest, "page_size"): LIST_PAGE_SIZE,
    _field(pb.ListRunsRequest, "workflow_id"): WORKFLOW_ID,
    _field(pb.ListRunsRequest, "status"): RUN_STATUS_FILTER,
    _field(pb.ListRunsRequest, "run_type"): RUN_TYPE,
    _field(pb.GetRunTasksRequest, "page_size"): TASKS_PAGE_SIZE,
    _field(pb.GetChildRunsRequest, "page_size"): CHILDREN_PAGE_SIZE,
}
