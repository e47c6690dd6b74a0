"""Alembic migrations of spur-runs, usable without an alembic.ini (see
spur_runs.migrate). Our version is kept in its own table, apart from the
`alembic_version` table that PySpur's migrations use on the same database.
"""

from pathlib import Path

VERSION_TABLE = "spur_runs_alembic_version"
SCRIPT_LOCATION = Path(__file__).resolve().parent

# The PySpur tables our migrations create on an empty database (0001).
OUR_TABLES = frozenset({"workflows", "workflow_versions", "runs", "tasks"})
