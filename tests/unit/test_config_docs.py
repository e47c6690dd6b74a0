"""docs/configuration.md's table of settings is config.py's table rendered
(settings.py): a row missing or extra, or one whose range, twin, default or
meaning differs, fails and says which command regenerates it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spur_runs.cli import build_parser
from spur_runs.config import ENV, SETTINGS, flag
from spur_runs.settings import BEGIN, END, HEADER, docs_rows, main, markdown, shown_range
from tools import ROOT

DOCS = ROOT / "docs" / "configuration.md"
FIX = "run `python -m spur_runs.settings --write docs/configuration.md`"


def _documented(text: str) -> dict[str, tuple[str, ...]]:
    """The rows of the docs' generated block, by flag."""
    assert BEGIN in text and END in text, f"docs/configuration.md lost its settings table: {FIX}"
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    header = tuple(cell.strip() for cell in lines[0].strip("|").split("|"))
    assert header == HEADER, f"the table's columns are {header}, not {HEADER}: {FIX}"
    rows = {}
    for line in lines[2:]:
        cells = tuple(cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1])
        rows[cells[0].split("`")[1]] = cells
    return rows


def test_every_setting_has_one_row_and_no_row_is_extra() -> None:
    documented, expected = _documented(DOCS.read_text()), docs_rows()
    missing = [name for name in expected if name not in documented]
    extra = [name for name in documented if name not in expected]
    assert not missing, f"docs/configuration.md has no row for {missing}: {FIX}"
    assert not extra, f"docs/configuration.md has rows for no setting: {extra}: {FIX}"


def test_every_row_says_what_the_table_says() -> None:
    documented = _documented(DOCS.read_text())
    for name, row in docs_rows().items():
        for column, want, got in zip(HEADER, row, documented.get(name, ()), strict=False):
            assert got == want, (
                f"docs/configuration.md: {name}'s {column!r} is {got!r}, config.py's table "
                f"says {want!r}: {FIX}"
            )


def test_the_block_is_the_rendering_itself() -> None:
    """Order and layout too, once every row is right."""
    assert markdown() in DOCS.read_text(), f"docs/configuration.md is stale: {FIX}"


def test_the_command_rewrites_a_stale_block_and_nothing_else(tmp_path: Path) -> None:
    text = f"# Configuration\n\nProse before.\n\n{markdown()}\n\nProse after.\n"
    wrong = text.replace("`SPUR_RUNS_WORKERS` | `1` |", "`SPUR_RUNS_WORKERS` | `8` |")
    wrong = wrong.replace("| `--tls-key` |", "| `--tls-keys` |")
    documented = _documented(wrong)
    assert documented["--workers"][2] == "`8`" and "--tls-keys" in documented
    stale = tmp_path / "configuration.md"
    stale.write_text(wrong)
    assert main(["--write", str(stale)]) == 0
    assert stale.read_text() == text


def test_twins_are_spur_runs_and_the_flag_name() -> None:
    for name, variable in ENV.items():
        assert variable == "SPUR_RUNS_" + name.upper(), name


def test_helps_show_ranges_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, meta in SETTINGS.items():
        if meta.bounds or meta.choices:
            shown = f"({shown_range(name)}) [default: "
            assert shown in text, (flag(name), shown)
