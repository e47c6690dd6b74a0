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
    if os.geteuid() != 0:
        reason = "mounting a small tmpfs needs root"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


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
    if os.geteuid() != 0:
        reason = "a read-only bind mount needs root"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    subprocess.run(
        ["mount", "--bind", "-o", "ro", str(folder), str(folder)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)
