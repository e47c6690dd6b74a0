"""README, executed: its first command, then every command of its first
session, in order, as written, against the demo server that command starts.

A README command is a line of a ```sh block under "Two commands" (the
first one), "A first session" or "Deleting runs" (last); the ```sh and
```python blocks of docs/api.md and docs/watch.md run between the two. A
trailing `# → TEXT` says what its answer shows: the test checks that TEXT
is in what the command printed, and that the command exited 0. A command
ending in `&` runs in the background until a later `wait`. The only
liberties taken: the first command's install steps (`python3 -m venv .venv
&& .venv/bin/pip install ...`) are checked, not run (`.venv` is this test's
own environment), and the ports 50051 and 8080 are replaced by free ones so
that the test can run beside a real demo server.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools import ROOT

INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[tools]' && "
EXPECT = " # → "
PYTHON = "#!python"  # marks a ```python block: run whole, by this Python


@dataclass
class Command:
    line: str  # as README writes it
    expect: str  # what its answer shows ("" when README says nothing)


def _sections(text: str) -> dict[str, list[str]]:
    """The ```sh blocks of each `## ` section, by title."""
    blocks: dict[str, list[str]] = {}
    title, inside = "", False
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("## ") and not inside:
            title = line[3:].strip()
        elif line.strip() in ("```sh", "```python"):
            inside, current = True, [PYTHON] if line.strip() == "```python" else []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.setdefault(title, []).append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


# Executed after README's first session and before its "Deleting runs": the
# docs' examples of the API, filters and watching. (docs/clients.md builds
# the clients; tests/system/test_*_client.py run them. docs/production.md's commands
# need a production database.)
DOCS = ("api.md", "watch.md")


def _commands(blocks: list[str]) -> list[Command]:
    commands = []
    for block in blocks:
        if block.startswith(PYTHON):
            expect = block.partition(EXPECT)[2].strip()
            commands.append(Command(block, expect))
            continue
        for raw in block.splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            line, _, expect = raw.partition(EXPECT)
            commands.append(Command(line.rstrip(), expect.strip()))
    return commands


def readme_commands() -> tuple[str, list[Command]]:
    readme = _sections((ROOT / "README.md").read_text())
    first = readme["Two commands"][0].strip()
    commands = _commands(readme["A first session"])
    for name in DOCS:
        for blocks in _sections((ROOT / "docs" / name).read_text()).values():
            commands += _commands(blocks)
    return first, commands + _commands(readme["Deleting runs"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, server: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the first command stopped"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on {port} after {timeout} s")


@pytest.mark.slow
def test_readme_first_command_then_every_example_as_written(tmp_path: Path) -> None:
    first, commands = readme_commands()
    assert first.startswith(INSTALL), f"README's first command no longer installs as {INSTALL!r}"
    assert commands, "README has no first session"
    grpc_port, http_port = _free_port(), _free_port()

    def ported(text: str) -> str:
        return text.replace("50051", str(grpc_port)).replace("8080", str(http_port))

    # .venv: this test's own environment, where the install put everything.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    for name in ("clients",):  # the client examples run from a clone's root
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SPUR_RUNS_DATABASE_URL", None)
    # The first command names no gRPC port (the default, 50051): its
    # environment twin moves it.
    env["SPUR_RUNS_GRPC_ADDRESS"] = f"127.0.0.1:{grpc_port}"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", ported(first[len(INSTALL) :])],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    background: list[tuple[Command, subprocess.Popen[str]]] = []
    try:
        _wait_for(grpc_port, server)
        _wait_for(http_port, server)
        for command in commands:
            line = ported(command.line)
            if line.startswith("export "):
                name, _, value = line[len("export ") :].partition("=")
                value = shlex.split(value)[0] if value else ""
                env[name] = value.replace("$PWD", str(tmp_path)).replace(
                    "$PATH", env.get("PATH", "")
                )
                continue
            if line == "wait":
                for started, process in background:
                    out, _ = process.communicate(timeout=120)
                    _check(started, process.returncode, out)
                background.clear()
                continue
            if line.endswith("&"):
                process = subprocess.Popen(
                    ["bash", "-c", line[:-1]],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                background.append((command, process))
                time.sleep(0.5)  # as a person would: the next command comes after it started
                continue
            argv = (
                [sys.executable, "-c", line.removeprefix(PYTHON)]
                if line.startswith(PYTHON)
                else ["bash", "-c", line]
            )
            result = subprocess.run(
                argv,
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            _check(command, result.returncode, result.stdout + result.stderr)
        assert not background, "a background command without a later `wait`"
    finally:
        for _, process in background:
            process.kill()
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        log.close()


def _check(command: Command, code: int, output: str) -> None:
    shown = output if len(output) < 3000 else output[:1500] + " ... " + output[-1500:]
    assert code == 0, f"{command.line}\nexit {code}\n{shown}"
    if command.expect:
        assert command.expect in output, f"{command.line}\nexpected {command.expect!r} in\n{shown}"


def test_every_walkthrough_command_says_what_it_shows() -> None:
    """A command whose answer README (or the docs) does not describe could
    drift unseen."""
    _, commands = readme_commands()
    silent = [
        c.line
        for c in commands
        if not c.expect and c.line != "wait" and not c.line.startswith("export ")
    ]
    assert not silent, f"README commands without `{EXPECT.strip()} what it shows`: {silent}"
    assert all(re.search(r"\S", c.expect) for c in commands if c.expect)


def test_watch_md_examples_end_on_a_fresh_demo_server(tmp_path: Path) -> None:
    """docs/watch.md's examples say runs that have ended send their state
    once and end; they watched R5, the demo's running run, which ended only
    after README's session had `spur-runs demo` complete it: on a freshly
    seeded server, the reader's `curl -sN .../run/R5/watch` never returned."""
    import grpc

    from servers import start_server
    from spur.runs.v1 import run_service_pb2 as pb
    from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
    from tools import spur_runs

    block = _sections((ROOT / "docs" / "watch.md").read_text())
    watched = sorted(
        {
            run_id
            for texts in block.values()
            for text in texts
            for line in text.splitlines()
            if "watch" in line.lower()
            for run_id in re.findall(r"\bR[0-9]+\b", line)
        }
    )
    assert watched, "docs/watch.md watches no run"
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    for args in (["migrate"], ["seed"]):
        done = spur_runs(*args, "--database-url", url)
        assert done.returncode == 0, done.stderr
    server = start_server(url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            for run_id in watched:
                request = pb.WatchRunRequest(run_id=run_id)
                try:
                    list(stub.WatchRun(request, timeout=5))
                except grpc.RpcError as error:  # R999: NOT_FOUND, also an end
                    assert error.code() == grpc.StatusCode.NOT_FOUND, (run_id, error.code())
    finally:
        server.stop(grace=1)
