"""A small file system of its own, to fill: a real full disk (ENOSPC),
which SQLite reports as SQLITE_FULL."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from databases import IN_CI


@contextmanager
def small_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """`folder` (created) on a tmpfs of `size` of its own (mount needs root:
    skipped without it, but in CI), unmounted at the end."""
    _need_root("mounting a small tmpfs needs root")
    folder.mkdir()
    with _mounted(folder, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs"):
        yield folder


def fill(disk: Path) -> Path:
    """Write a file until the file system has no byte left."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * 65536
        while True:
            try:
                out.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    return filler


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """`folder` (as it is; or a file) made read-only by a read-only bind
    mount over it: unlike chmod, it holds for root too (mount needs root:
    skipped without it, but in CI)."""
    _need_root("a read-only bind mount needs root")
    with _mounted(folder, "--bind", "-o", "ro", str(folder)):
        yield folder


def _need_root(reason: str) -> None:
    """Skip without root, but fail in CI, which has it."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def _mounted(target: Path, *source: str) -> Iterator[None]:
    """`mount SOURCE... TARGET` for the block, lazily unmounted after it."""
    subprocess.run(["mount", *source, str(target)], check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)
