"""Alembic migrations of spur-runs, usable without an alembic.ini (see
spur_runs.migrate). Our version is kept in its own table, apart from the
`alembic_version` table that PySpur's migrations use on the same database.
"""

from pathlib import Path

VERSION_TABLE = "spur_runs_alembic_version"
SCRIPT_LOCATION = Path(__file__).resolve().parent

# The PySpur tables our migrations create on an empty database (0001).
OUR_TABLES = frozenset({"workflows", "workflow_versions", "runs", "tasks"})

# PySpur's own version table on the same database, and the revisions of
# PySpur 0.1.18 (pyspur/models/management/alembic/versions), oldest first:
# the schema this build reads (docs/storage.md). PySpur migrates its
# database forward by itself; a revision beyond these is only warned about
# (store/migrate.py), since the columns we read are checked at start-up.
PYSPUR_VERSION_TABLE = "alembic_version"
PYSPUR_REVISIONS = ("000", "001", "002", "003", "004", "005", "006", "007", "008", "009", "010")
