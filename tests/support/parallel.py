"""How the suite runs on pytest-xdist's workers, and what keeps tests apart
there (tests/conftest.py wires these in; docs/development.md says how to run it).

- `use_workers`: `pytest` alone (or given a folder) runs on WORKERS workers,
  `--dist worksteal` (a worker that runs out of tests takes some of
  another's, so that no long test is left queued at the end behind another);
  given only files or tests it stays in one process. `-n N` or `-n 0`
  chooses, and `-p no:xdist` runs serially.
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

# Measured on the 2-core machines this project runs on (docs/development.md):
# most tests wait on processes, sockets and the database, so more workers than
# cores pay; past three, the extra load bought no time.
WORKERS = 3


def use_workers(config: pytest.Config) -> None:
    """Parallel by default: WORKERS workers unless -n (or --tx, or --pdb) says
    otherwise, or the run names only files or tests (workers take seconds to
    start: `pytest tests/unit/test_x.py` stays in this process); worksteal
    unless --dist says otherwise. Called before xdist reads the options."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return  # -p no:xdist, or a worker (its controller distributes)
    option = config.option
    default = not option.tx and not option.usepdb and not _only_files(config)
    if option.numprocesses is None and default:
        option.numprocesses = WORKERS
    if option.numprocesses and option.dist == "no":
        option.dist = "worksteal"


def _only_files(config: pytest.Config) -> bool:
    """Whether the command line names test files or tests, and no folder."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return False  # the testpaths, or the current folder
    where = config.invocation_params.dir
    return all((where / arg.partition("::")[0]).is_file() for arg in config.args)


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
