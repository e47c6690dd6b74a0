"""`spur-runs` as a user types it (the installed command, in a subprocess):
--version, --help with defaults and environment twins, one-line errors with
distinct exit codes, `migrate --sql`, and the ids `seed` gives the demo runs,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url

from databases import new_postgres_database
from spur_runs.config import ENV
from spur_runs.store.migrate import alembic_config, current_revision, head_revision
from spur_runs.store.models import Run, RunStatus
from spur_runs.store.schema_check import missing_indexes
from tools import spur_runs

pytestmark = pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")

COMMANDS = ("serve", "migrate", "seed", "demo", "backup")
# What `spur-runs seed` prints on a fresh database, after its first line
# (which has the time it took). README's examples use these ids.
SEED_OUTPUT = [
    "demo workflows: S1, S2, S3 (3 created, 0 reused)",
    "runs: R1 .. R20: 16 COMPLETED, 1 RUNNING, 1 PAUSED, 1 FAILED, 1 CANCELED",
    "batch run: R1 (children R2..R4)",
    "running run: R5",
    "paused run: R6",
    "failed run: R7",
    "canceled run: R8",
    "completed run: R9",
]


def one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    assert lines[0].startswith("spur-runs")
    return lines[0]


def flat(text: str) -> str:
    return " ".join(text.split())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version() -> None:
    result = spur_runs("--version")
    assert result.returncode == 0
    name, version = result.stdout.split()
    assert name == "spur-runs" and version[0].isdigit()


def test_every_help_shows_defaults_and_twins() -> None:
    top = spur_runs("--help")
    assert top.returncode == 0
    assert all(command in top.stdout for command in COMMANDS)
    assert "environment twin" in flat(top.stdout) and "exit codes" in top.stdout
    for name in COMMANDS:
        result = spur_runs(name, "--help")
        assert result.returncode == 0, result.stderr
        text = flat(result.stdout)
        assert "[default: sqlite:///spur-runs.db; env SPUR_RUNS_DATABASE_URL]" in text, name
        assert "[default: INFO; env SPUR_RUNS_LOG_LEVEL]" in text, name
    serve = flat(spur_runs("serve", "--help").stdout)
    for variable in ENV.values():
        assert f"env {variable}]" in serve, variable
    assert "[default: 127.0.0.1:50051; env SPUR_RUNS_GRPC_ADDRESS]" in serve
    assert "[default: on; env SPUR_RUNS_REFLECTION]" in serve
    seed = flat(spur_runs("seed", "--help").stdout)
    assert "batch run R1 (children R2..R4), running run R5" in seed
    assert "[default: none: the showcase put back, or 20 runs]" in seed


def test_migrate_help_says_what_it_adds_and_changes() -> None:
    text = flat(spur_runs("migrate", "--help").stdout)
    assert "On an empty database it creates PySpur's tables" in text
    assert "adds the indexes this service's queries need" in text
    assert "It changes no PySpur table" in text
    # What an interrupted migrate leaves (it said "on SQLite in one
    # transaction": the revisions before the interrupted one stay).
    assert "each revision recorded as it completes" in text
    assert "--sql" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["seed", "--runs", "-1"],
            "argument --runs: invalid non-negative integer (at most 10,000,000) value: '-1'",
        ),
        (
            ["seed", "--runs", "many"],
            "invalid non-negative integer (at most 10,000,000) value: 'many'",
        ),
        (["demo", "--step-seconds", "0"], "invalid positive number (at most 3,600) value: '0'"),
        (["frob"], "invalid choice: 'frob'"),
        ([], "the following arguments are required: COMMAND"),
        (["backup"], "the following arguments are required: DEST"),
        (
            ["serve", "--no-such-flag"],
            "spur-runs serve: unrecognized arguments: --no-such-flag (see spur-runs serve --help)",
        ),
        # No prefix of a flag stands for it (--max-connection-age-seconds).
        (["serve", "--max-conn", "300", "--grpc-address", "x"], "arguments: --max-conn 300"),
        (["seed", "--database-url", "mysql://x/y"], "scheme 'mysql' is not supported"),
        (["migrate", "--log-level", "LOUD"], "--log-level=LOUD: must be"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    one_line_error(spur_runs(*args), 2, fragment)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--log-level", "debug", "serve"],
            "spur-runs: --log-level goes after the command: spur-runs serve --log-level debug",
        ),
        (
            ["--database-url=sqlite:///x.db", "migrate", "--sql"],
            "spur-runs: --database-url goes after the command: "
            "spur-runs migrate --database-url=sqlite:///x.db --sql",
        ),
        (
            # A flag without a value, then one with a value that holds a space.
            ["--no-reflection", "--grpc-address", "a b", "serve", "--workers", "2"],
            "spur-runs: --no-reflection goes after the command: "
            "spur-runs serve --no-reflection --grpc-address 'a b' --workers 2",
        ),
        (["--sql", "migrate"], "spur-runs: --sql goes after the command: spur-runs migrate --sql"),
        (
            ["--log-level", "debug"],
            "spur-runs: --log-level goes after the command: spur-runs COMMAND --log-level debug "
            "(COMMAND: serve, migrate, seed, demo, backup)",
        ),
    ],
)
def test_a_commands_flag_before_the_command_says_where_it_goes(args: list[str], line: str) -> None:
    """As docker and git take global flags: argparse alone read the flag's
    value as the command ("invalid choice: 'debug'")."""
    assert one_line_error(spur_runs(*args), 2, line) == line


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("form", ["flag", "env"])
def test_a_bad_setting_is_named_as_it_was_given(name: str, form: str) -> None:
    """The flag or the environment twin, with its value as typed: the same
    words for every command and every setting (they were "--workers (env
    SPUR_RUNS_WORKERS)", "--log-level" or "grpc_address", whichever was set)."""
    args = [name, "--log-level", "LOUD"] if form == "flag" else [name]
    env = {"SPUR_RUNS_LOG_LEVEL": "LOUD"} if form == "env" else {}
    if name == "backup":
        args.append("copy.db")
    given = "--log-level=LOUD" if form == "flag" else "SPUR_RUNS_LOG_LEVEL=LOUD"
    line = f"spur-runs {name}: {given}: must be DEBUG, INFO, WARNING or ERROR"
    assert one_line_error(spur_runs(*args, env=env), 2, line) == line


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ["serve"],
            {"SPUR_RUNS_GRPC_ADDRESS": "bad"},
            "spur-runs serve: SPUR_RUNS_GRPC_ADDRESS=bad: must be HOST:PORT (a port of 0-65535)",
        ),
        (
            # Both: the flag wins, so the flag is what is wrong.
            ["serve", "--max-workers", "2.5"],
            {"SPUR_RUNS_MAX_WORKERS": "many"},
            "spur-runs serve: --max-workers=2.5: must be an integer",
        ),
        (
            ["serve", "--http-allowed-hosts", "a b"],
            {},
            "spur-runs serve: --http-allowed-hosts='a b': 'a b' is not a host name",
        ),
        (
            ["serve", "--grpc-address", "127.0.0.1:0"],
            {"SPUR_RUNS_WORKERS": "2"},
            "spur-runs serve: SPUR_RUNS_WORKERS=2, --grpc-address=127.0.0.1:0: several "
            "workers need a fixed port, not 0 (each would get its own)",
        ),
        (
            ["serve"],
            {"SPUR_RUNS_TLS_CERT": "server.pem"},
            "spur-runs serve: SPUR_RUNS_TLS_CERT=server.pem: needs --tls-key (env "
            "SPUR_RUNS_TLS_KEY) too: give both or neither",
        ),
        (
            # A certificate pasted where its path goes: still one line.
            ["serve", "--tls-key", "server.key"],
            {"SPUR_RUNS_TLS_CERT": "-----BEGIN CERTIFICATE-----\nMIIB"},
            "spur-runs serve: SPUR_RUNS_TLS_CERT='-----BEGIN CERTIFICATE-----\\nMIIB': "
            "cannot read the file: No such file or directory",
        ),
        (
            # A URL may hold a password: named, not shown.
            ["migrate"],
            {"SPUR_RUNS_DATABASE_URL": "mysql://u:s3cret@db/x"},
            "spur-runs migrate: SPUR_RUNS_DATABASE_URL: scheme 'mysql' is not supported "
            "(use sqlite:// or postgresql://)",
        ),
    ],
)
def test_settings_at_fault_are_named_as_they_were_given(
    args: list[str], env: dict[str, str], line: str
) -> None:
    assert one_line_error(spur_runs(*args, env=env), 2, line) == line


def test_a_command_reads_only_its_own_settings(tmp_path: Path) -> None:
    """`migrate` run with the server's environment (a Job beside the
    Deployment) in which a setting only `serve` uses is wrong: migrate
    neither uses nor checks it (it takes no --grpc-address), and logs JSON
    as the server does. `serve` is stopped by it."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {"SPUR_RUNS_GRPC_ADDRESS": "bad", "SPUR_RUNS_LOG_FORMAT": "json"}
    migrated = spur_runs("migrate", "--database-url", url, env=env)
    assert migrated.returncode == 0, migrated.stderr
    messages = [json.loads(line)["message"] for line in migrated.stderr.splitlines()]
    assert f"{url}: migrated from revision (none) to 0004" in messages
    line = "spur-runs serve: SPUR_RUNS_GRPC_ADDRESS=bad: must be HOST:PORT (a port of 0-65535)"
    assert one_line_error(spur_runs("serve", "--database-url", url, env=env), 2, line) == line


@pytest.mark.slow
@pytest.mark.parametrize("name", ["serve", "seed", "demo"])
def test_a_database_without_pyspur_tables_is_exit_2(database_url: str, name: str) -> None:
    """Retrying will not help, the fix is known: say it, do not serve
    "healthy" while every call fails."""
    args = [name, "--database-url", database_url]
    if name == "serve":
        args += ["--grpc-address", "127.0.0.1:0"]
    line = one_line_error(spur_runs(*args, timeout=60), 2, "run `spur-runs migrate")
    if database_url.startswith("sqlite"):
        path = Path(make_url(database_url).database or "")
        assert "does not exist" in line
        assert not path.exists(), "checking must not create the database file"
        path.touch()  # an empty file: SQLite's empty database
        line = one_line_error(spur_runs(*args, timeout=60), 2, "run `spur-runs migrate")
    assert "has no table runs, tasks, workflow_versions, workflows" in line


@pytest.mark.slow
def test_a_read_replica_without_pyspur_tables_is_exit_2(postgres_url: str) -> None:
    """A --read-database-url naming the wrong database (a typo, another
    application's) was served: health SERVING, every read INTERNAL."""
    from spur_runs.store.migrate import migrate

    migrate(postgres_url)
    with new_postgres_database() as empty:
        args = ["serve", "--grpc-address", "127.0.0.1:0", "--database-url", postgres_url]
        line = one_line_error(
            spur_runs(*args, "--read-database-url", empty, timeout=60),
            2,
            "has no table runs, tasks, workflow_versions, workflows",
        )
        assert line.startswith("spur-runs serve: --read-database-url: "), line
        assert "is it the right database?" in line, line


@pytest.mark.parametrize(
    ("make", "url", "fragment"),
    [
        (lambda p: p.write_bytes(b"\x8f" * 4096), "sqlite:///{p}", "file is not a database"),
        (lambda p: p.mkdir(), "sqlite:///{p}", "unable to open database file"),
        (lambda p: None, "sqlite:///", "names no database file"),
        (lambda p: None, "sqlite:", "not one SQLAlchemy can read"),
        (
            lambda p: [
                sqlite3.connect(p).execute(f"CREATE TABLE {t} (id TEXT)")
                for t in ("runs", "tasks", "workflows", "workflow_versions")
            ],
            "sqlite:///{p}",
            "lacks the column(s) runs._intid",
        ),
    ],
)
def test_a_database_that_can_never_serve_is_exit_2(
    tmp_path: Path, make: object, url: str, fragment: str
) -> None:
    """Not a SQLite file, a folder, no file at all, tables of another schema:
    one line and exit 2, not a server saying NOT_SERVING (or, for another
    schema, UNAVAILABLE on every call) forever."""
    path = tmp_path / "runs.db"
    make(path)  # type: ignore[operator]
    args = ["serve", "--grpc-address", "127.0.0.1:0", "--database-url", url.format(p=path)]
    one_line_error(spur_runs(*args, timeout=60), 2, fragment)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["migrate", "seed", "demo"])
def test_an_unreachable_postgres_is_one_line_and_exit_1(name: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/pyspur"
    line = one_line_error(spur_runs(name, "--database-url", url), 1, "Connection refused")
    assert "--log-level DEBUG" in line
    debug = spur_runs(name, "--database-url", url, "--log-level", "DEBUG")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith(f"spur-runs {name}: ")


def _tables(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _run_script(url: str, sql: str) -> None:
    """Run what `migrate --sql` printed, as an operator would (psql, sqlite3)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(make_url(url).database or "") as db:
            db.executescript(sql)
        return
    # psql sends each statement alone, as CREATE INDEX CONCURRENTLY needs
    # (it cannot run inside the implicit transaction of a multi-statement query).
    result = subprocess.run(
        [
            "psql",
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
        ],
        input=sql,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_migrate_sql_prints_what_is_left_and_runs_nothing(database_url: str) -> None:
    fresh = spur_runs("migrate", "--sql", "--database-url", database_url)
    assert fresh.returncode == 0, fresh.stderr
    assert "(empty): revisions (none) -> 0004" in fresh.stdout.splitlines()[0]
    assert "CREATE TABLE runs" in fresh.stdout
    assert "ix_spur_runs_tasks_run_id" in fresh.stdout
    if database_url.startswith("sqlite"):
        assert not Path(make_url(database_url).database or "").exists()
    else:
        assert _tables(database_url) == set()

    # Part way: only what is left, and still nothing run.
    command.upgrade(alembic_config(database_url), "0002")
    left = spur_runs("migrate", "--sql", "--database-url", database_url)
    assert left.returncode == 0, left.stderr
    assert "(at revision 0002): revisions 0002 -> 0004" in left.stdout
    assert "CREATE TABLE" not in left.stdout
    assert "ix_spur_runs_tasks_run_id" not in left.stdout
    assert "ix_spur_runs_runs_workflow_start_time" in left.stdout
    assert current_revision(database_url) == "0002"

    # What it printed is what migrate would do: run it, and the database is
    # at head with every index.
    _run_script(database_url, left.stdout)
    assert current_revision(database_url) == head_revision()
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        assert missing_indexes(engine) == []
    finally:
        engine.dispose()
    done = spur_runs("migrate", "--sql", "--database-url", database_url)
    assert "already at revision 0004, nothing to run" in done.stdout


@pytest.mark.slow
def test_migrate_sql_adds_lost_indexes_again(database_url: str) -> None:
    """At our newest revision but without an index it adds (PySpur made its
    tables again, or someone dropped it), `migrate` adds it again; so does
    the script `migrate --sql` prints, which said "nothing to run"."""
    assert spur_runs("migrate", "--database-url", database_url).returncode == 0
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_spur_runs_tasks_run_id"))
        script = spur_runs("migrate", "--sql", "--database-url", database_url)
        assert script.returncode == 0, script.stderr
        assert (
            "(at revision 0004 but without indexes it adds: ix_spur_runs_tasks_run_id): "
            "revisions 0001 -> 0004 again" in script.stdout.splitlines()[0]
        )
        assert missing_indexes(engine) == ["ix_spur_runs_tasks_run_id"]  # nothing run
        _run_script(database_url, script.stdout)
        assert missing_indexes(engine) == []
    finally:
        engine.dispose()
    assert current_revision(database_url) == head_revision()
    done = spur_runs("migrate", "--sql", "--database-url", database_url)
    assert "already at revision 0004, nothing to run" in done.stdout


@pytest.mark.slow
def test_migrate_sql_of_an_empty_database_makes_the_schema(sqlite_url: str) -> None:
    _run_script(sqlite_url, spur_runs("migrate", "--sql", "--database-url", sqlite_url).stdout)
    assert current_revision(sqlite_url) == head_revision()
    assert spur_runs("seed", "--database-url", sqlite_url).returncode == 0


@contextmanager
def fresh_database(kind: str, tmp_path: Path, n: int) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'fresh{n}.db'}"
    else:
        with new_postgres_database() as url:
            yield url


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_seed_gives_the_demo_runs_the_same_ids_every_time(kind: str, tmp_path: Path) -> None:
    outputs = []
    for n in range(2):
        with fresh_database(kind, tmp_path, n) as url:
            assert spur_runs("migrate", "--database-url", url).returncode == 0
            result = spur_runs("seed", "--database-url", url)
            assert result.returncode == 0, result.stderr
            lines = result.stdout.strip().splitlines()
            assert lines[0].startswith("seeded 20 runs (120 tasks, 3 of them child runs) in ")
            outputs.append(lines[1:])
            # The ids printed are the rows'.
            engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
            try:
                with engine.connect() as conn:
                    runs = {
                        row.id: row
                        for row in conn.execute(
                            select(Run.id, Run.status, Run.run_type, Run.parent_run_id)
                        )
                    }
            finally:
                engine.dispose()
            assert runs["R1"].run_type == "batch" and runs["R1"].parent_run_id is None
            children = {rid for rid, row in runs.items() if row.parent_run_id == "R1"}
            assert children == {"R2", "R3", "R4"}
            expected = {
                "R5": RunStatus.RUNNING,
                "R6": RunStatus.PAUSED,
                "R7": RunStatus.FAILED,
                "R8": RunStatus.CANCELED,
                "R9": RunStatus.COMPLETED,
            }
            for rid, status in expected.items():
                assert runs[rid].status is status and runs[rid].parent_run_id is None, rid
            assert [rid for rid, row in runs.items() if row.status is RunStatus.RUNNING] == ["R5"]
    assert outputs[0] == outputs[1] == SEED_OUTPUT


@pytest.mark.slow
def test_a_database_locked_at_start_up_is_served_once_free(sqlite_url: str) -> None:
    """Locked by another writer (PySpur migrating, say) is not "can never
    serve": start-up waits, warns, and serves once the lock is gone."""
    import grpc
    from grpc_health.v1 import health_pb2

    from servers import free_port, wait_health
    from tools import tool

    assert spur_runs("migrate", "--database-url", sqlite_url).returncode == 0
    path = make_url(sqlite_url).database or ""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("PRAGMA journal_mode=DELETE")  # as PySpur leaves a file
    locker.execute("BEGIN EXCLUSIVE")
    port = free_port()
    server = subprocess.Popen(
        [tool("spur-runs"), "serve", "--database-url", sqlite_url, "--grpc-address",
         f"127.0.0.1:{port}", "--db-timeout-seconds", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        try:  # past start-up's 5 s busy timeout: the check gives up, and goes on
            server.wait(timeout=6.5)
        except subprocess.TimeoutExpired:
            pass
        locker.execute("ROLLBACK")
        locker.close()
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_serve_names_revisions_this_build_does_not_know_and_serves(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A newer spur-runs migrated the database (0005: this older build is a
    rollback) and a newer PySpur too (011): serve starts, health SERVING,
    with one WARNING for each naming the revision found and the newest this
    build knows. Refusing would turn a rollback into an outage; the
    columns it reads are checked as always."""
    import grpc
    from grpc_health.v1 import health_pb2

    from servers import free_port, wait_health
    from tools import tool

    assert spur_runs("migrate", "--database-url", sqlite_url).returncode == 0
    with sqlite3.connect(make_url(sqlite_url).database or "") as db:
        db.execute("UPDATE spur_runs_alembic_version SET version_num = '0005'")
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('011')")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [tool("spur-runs"), "serve", "--database-url", sqlite_url, "--grpc-address",
             f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log, text=True,
        )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    warnings = [line for line in log_path.read_text().splitlines() if " WARNING " in line]
    ours = [line for line in warnings if "spur-runs schema revision" in line]
    pyspur = [line for line in warnings if "PySpur schema revision" in line]
    assert len(ours) == 1 and len(pyspur) == 1, warnings
    assert "revision 0005 is unknown to this build, whose newest is 0004" in ours[0]
    assert "serving it as it is" in ours[0]
    assert "revision 011 is unknown to this build, whose newest is 010" in pyspur[0]
