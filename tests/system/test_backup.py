"""`spur-runs backup DEST` (the installed command) of a SQLite database that
a real server serves while another process writes: the copy opens cleanly
and holds every run committed before the backup began."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url

from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from tools import spur_runs, tool

pytestmark = pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")


@pytest.mark.slow
def test_backup_while_serving_and_writing(sqlite_url: str, tmp_path: Path) -> None:
    for args in (["migrate"], ["seed", "--runs", "20000"]):
        assert spur_runs(*args, "--database-url", sqlite_url).returncode == 0
    server = start_server(sqlite_url)
    # The writer: `spur-runs demo`, another process, starting a run every
    # few milliseconds; a "started" line is printed once its run committed.
    writer = subprocess.Popen(
        [tool("spur-runs"), "demo", "--database-url", sqlite_url,
         "--step-seconds", "0.005", "--concurrent", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    committed: list[str] = []
    seen_enough = threading.Event()

    def read() -> None:
        assert writer.stdout is not None
        for line in writer.stdout:
            if line.endswith(": started\n") or ": started (" in line:
                committed.append(line.split(":")[0])
                if len(committed) >= 20:
                    seen_enough.set()

    reader = threading.Thread(target=read)
    reader.start()
    dest = tmp_path / "copy.db"
    calls = 0
    try:
        assert seen_enough.wait(60), "the writer started no runs"
        before = list(committed)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            backup = subprocess.Popen(
                [tool("spur-runs"), "backup", str(dest), "--database-url", sqlite_url],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            while backup.poll() is None:  # the server answers meanwhile
                stub.ListRuns(pb.ListRunsRequest(page_size=5), timeout=10)
                calls += 1
            out, err = backup.communicate()
        assert backup.returncode == 0, err
        assert out.startswith(f"backed up {make_url(sqlite_url).database} to {dest} (")
        after = len(committed)
    finally:
        writer.terminate()
        writer.wait(timeout=20)
        reader.join(timeout=20)
        server.stop(grace=1)
    assert writer.returncode == 0 and calls >= 1
    assert len(committed) > len(before), "the writer went on writing during the backup"

    copy = sqlite3.connect(dest)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("PRAGMA foreign_key_check").fetchall() == []
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        ids = {row[0] for row in copy.execute("SELECT id FROM runs")}
        per_run = dict(copy.execute("SELECT run_id, count(*) FROM tasks GROUP BY run_id"))
    finally:
        copy.close()
    assert set(before) <= ids  # every run committed before it began
    assert {f"R{n}" for n in range(1, 20_001)} <= ids
    assert len(ids) <= 20_000 + after + 8  # (8: started, not yet printed)
    assert set(per_run.values()) == {6} and set(per_run) == ids  # whole runs only
    assert not list(tmp_path.glob(".copy.db*")), "no partial file left behind"

    # The copy serves.
    restored = start_server(f"sqlite:///{dest}")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{restored.port}") as channel:
            run = RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id="R1"), timeout=10).run
            assert run.id == "R1" and run.task_count == 6
    finally:
        restored.stop(grace=1)


@pytest.mark.slow
def test_backup_refusals_are_one_line_and_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    assert spur_runs("migrate", "--database-url", sqlite_url).returncode == 0
    taken = tmp_path / "taken.db"
    taken.write_text("keep me")
    cases = [
        (["backup", str(taken), "--database-url", sqlite_url], "exists already"),
        (["backup", str(tmp_path / "no" / "x.db"), "--database-url", sqlite_url], "folder"),
        (["backup", str(tmp_path / "x.db"), "--database-url", f"{sqlite_url}.gone"], "not exist"),
        (
            ["backup", str(tmp_path / "x.db"), "--database-url", "postgresql://u@h/pyspur"],
            "use pg_dump",
        ),
    ]
    for args, fragment in cases:
        result = spur_runs(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert taken.read_text() == "keep me"
    assert not (tmp_path / "x.db").exists()


def test_a_dest_made_while_the_backup_runs_is_kept(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEST appears between the check and the end of the copy (another
    backup, any writer): it is kept, and the backup refused, where
    os.replace overwrote it."""
    from spur_runs.config import ConfigError
    from spur_runs.store import backup as backup_module
    from spur_runs.store.migrate import migrate

    migrate(sqlite_url)
    dest = tmp_path / "dest.db"
    real_connect = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        if str(args[0]).endswith(".partial"):  # the copy starts: DEST appears
            dest.write_text("written meanwhile")
        return real_connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_module.sqlite3, "connect", connect)
    with pytest.raises(ConfigError, match="created while the backup ran"):
        backup_module.backup(sqlite_url, str(dest))
    assert dest.read_text() == "written meanwhile"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


@pytest.mark.parametrize("made", ["folder", "folder/", "no-such-folder/", "dangling link"])
def test_a_dest_that_is_no_new_file_is_refused(sqlite_url: str, tmp_path: Path, made: str) -> None:
    """A folder (with or without its "/") is not where the copy goes: DEST
    is its file name. `backup no-such-folder/` wrote a file named
    no-such-folder. A symlink to nowhere exists already (it was read as
    "created while the backup ran")."""
    assert spur_runs("migrate", "--database-url", sqlite_url).returncode == 0
    (tmp_path / "folder").mkdir()
    (tmp_path / "dangling link").symlink_to(tmp_path / "nowhere")
    dest = f"{tmp_path / made.rstrip('/')}{'/' if made.endswith('/') else ''}"
    before = sorted(tmp_path.iterdir())
    result = spur_runs("backup", dest, "--database-url", sqlite_url)
    assert result.returncode == 2, result.stderr
    expected = (
        f"spur-runs backup: {dest} exists already: backup never overwrites a file"
        if made == "dangling link"
        else f"spur-runs backup: {dest} is a folder: DEST is the copy's file name "
        f"(e.g. {Path(dest) / 'spur-runs.db'})"
    )
    assert result.stderr.strip().splitlines() == [expected]
    assert sorted(tmp_path.iterdir()) == before
