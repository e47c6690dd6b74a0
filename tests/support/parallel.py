"""What keeps tests apart on pytest-xdist's workers (tests/conftest.py wires
it in; docs/development.md says how the suite runs).

- `turn`: a test marked `exclusive` (a bound on wall-clock time that the other
  workers' load would stretch) runs while no other test runs. Every test
  holds a shared lock for its whole run (setup, call, teardown), an exclusive
  one holds it alone; a second lock, taken by everyone on the way in, is a
  turnstile: an exclusive test waiting keeps it, so new tests queue behind
  it instead of starving it. Serially there is nothing to lock.
- `locked`: one process at a time in a block (a build into a shared folder).

Not `@pytest.mark.xdist_group` with `--dist loadgroup`: with pytest 9.2 it
no longer groups anything, silently (pytest-xdist issue #1386); the locks do
not depend on how tests are scheduled.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _lock_dir(config: pytest.Config) -> Path | None:
    """A folder every worker of this run shares: the run's base temporary
    folder (each worker's own is a folder in it); None when serial."""
    if not hasattr(config, "workerinput") or not config.option.basetemp:
        return None
    return Path(config.option.basetemp).parent


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """`path` locked exclusively (flock) while in the block: one process at a
    time, whichever worker or run it belongs to."""
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@contextmanager
def turn(config: pytest.Config, exclusive: bool) -> Iterator[None]:
    """Hold the shared lock (or, exclusive, the lock alone) while a test runs."""
    folder = _lock_dir(config)
    if folder is None:
        yield
        return
    with (
        open(folder / "tests.turnstile", "a") as turnstile,
        open(folder / "tests.lock", "a") as lock,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
