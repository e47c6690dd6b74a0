"""README's test command is the one CI runs."""

from __future__ import annotations

from tools import ROOT


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    command = ci[-1]
    assert "pytest" in command
    assert f"\n{command}\n" in (ROOT / "README.md").read_text()
