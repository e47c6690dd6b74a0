"""Logging set-up: `--log-format text` for people, `json` (one object per
line) for log pipelines. Every record logged while an RPC runs carries its
request id, so the lines of one call can be found together.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from ..config import Config

# The id of the RPC the current thread is serving (observe.py sets it).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "spur_runs_request_id", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Workers write to one stderr: the pid tells their lines apart.
WORKERS_TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; whatever else a record holds came from
# `extra=` and becomes a field of the JSON line.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class MetadataEncodingFilter(logging.Filter):
    """grpc logs a metadata value that is not UTF-8 as an ERROR, with a
    traceback and the value itself ("Invalid encoding on b'Bearer ...'"):
    on every such call, before authentication, any client could fill the
    log with its bytes and put a token in it. One warning without the
    value instead (grpc reads the value as Latin-1 and the call goes on)."""

    PREFIX = "Invalid encoding on"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.PREFIX):
            record.msg = "a call's metadata holds a value that is not UTF-8 (not logged)"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, pid, the
    record's extra fields, and the traceback (server side only) if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup(config: Config) -> None:
    """Route every logger to stderr in the configured format, once."""
    # grpc's core writes its own lines to stderr, in neither format: one
    # INFO line per failed TLS handshake (a plaintext client, a client
    # without a certificate, a port scan), as many as any client causes.
    # Its errors only, unless the operator asks for more; read when grpc is
    # first imported, which is after this (and inherited by --workers').
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    handler = logging.StreamHandler(sys.stderr)
    text = WORKERS_TEXT_FORMAT if config.workers > 1 else TEXT_FORMAT
    handler.setFormatter(
        JsonFormatter() if config.log_format == "json" else logging.Formatter(text)
    )
    handler.addFilter(RequestIdFilter())
    # On the logger: its records are mended before any handler sees them.
    logging.getLogger("grpc._cython.cygrpc").addFilter(MetadataEncodingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
