"""What WatchRun's poller logs across a database outage."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from spur_runs.api.watch import WatchHub
from spur_runs.errors import Unavailable
from spur_runs.telemetry.metrics import Metrics


class _DownDatabase:
    """A database whose every read is refused (health NOT_SERVING)."""

    @contextmanager
    def read(self) -> Iterator[Any]:
        raise Unavailable("the primary database is not answering (health NOT_SERVING)")
        yield  # pragma: no cover


def test_no_watcher_left_is_not_the_database_answering_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mid-outage, every new watch is refused and the watched ones end, so
    the poller has nothing to look at: it must not log that the database
    answers again (it said so within a second of a 30 s outage's start)."""
    hub = WatchHub(
        _DownDatabase(), versions=None, interval=0.02, max_watchers=10, metrics=Metrics()
    )  # type: ignore[arg-type]
    hub._by_run["R1"] = {object()}  # type: ignore[arg-type]  # one watched run: the poll asks
    caplog.set_level(logging.INFO, logger="spur_runs.api.watch")
    hub.start()
    try:
        deadline = time.monotonic() + 5
        while "retrying every" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "retrying every" in caplog.text
        hub._by_run.clear()  # the watch is gone; the database is still down
        time.sleep(0.2)  # ten polls with nothing to look at
        assert "answers again" not in caplog.text
    finally:
        hub.stop(grace=0.1)
