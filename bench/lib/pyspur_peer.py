"""The peer: PySpur's own Runs router (pyspur==0.1.18), served by uvicorn.

    SQLITE_OVERRIDE_DATABASE_URL=sqlite:///bench.db \
        python -m uvicorn pyspur_peer:app --app-dir bench/lib --port 8081

Runs in bench/.data/venv (pyspur installed --no-deps beside the packages its
router needs; see lib/tools.py), never in the project's venv. PySpur reads its
database from the environment at import (pyspur.database): either
SQLITE_OVERRIDE_DATABASE_URL, or POSTGRES_USER, POSTGRES_PASSWORD,
POSTGRES_HOST, POSTGRES_PORT and POSTGRES_DB. Every model module is imported
first, as PySpur's app does, so that the ORM's relationships resolve.
"""

import importlib
import pkgutil

import pyspur.models
from fastapi import FastAPI

for _module in pkgutil.walk_packages(pyspur.models.__path__, "pyspur.models."):
    importlib.import_module(_module.name)

from pyspur.api.run_management import router  # noqa: E402

app = FastAPI(title="PySpur runs router (benchmark peer)")
app.include_router(router, prefix="/run", tags=["runs"])
