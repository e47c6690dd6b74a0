"""A run and its descendants (DeleteRun's tree), walked so that bad data
cannot make the walk endless.

runs.parent_run_id is PySpur's column, and nothing in the database stops it
from forming a cycle (R2 -> R2, or R2 -> R3 -> R2). A recursive query that
appends every child it finds (UNION ALL) then never ends: SQLite ran one at
100% CPU, growing by 60 MB/s. UNION instead drops the rows it has already
produced, on both databases, so the walk ends once every run of the tree
is found, cycle or not; the cycle is then named from the rows it read.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from ..errors import Aborted, FailedPrecondition
from .models import Run

# (id, parent_run_id) of a run and of every run below it. Each run has one
# parent, so a row repeats exactly when its run was reached again.
_ROOT = select(Run.id, Run.parent_run_id).where(Run.id == bindparam("run_id"))
_TREE_CTE = _ROOT.cte("tree", recursive=True)
_TREE_CTE = _TREE_CTE.union(
    select(Run.id, Run.parent_run_id).join(_TREE_CTE, Run.parent_run_id == _TREE_CTE.c.id)
)
_TREE = select(_TREE_CTE.c.id, _TREE_CTE.c.parent_run_id)

# Runs of a cycle named in full in its message; a longer one is shortened.
_SHOWN = 8


# Runs locked per statement (lock_subtree): far below every driver's limit
# of bound parameters.
LOCK_CHUNK = 1000


def lock_subtree(conn: Connection, run_id: str) -> list[str]:
    """The ids of `run_id` and of all its descendants, each after its parent
    (an empty list when there is no such run), every run of them locked
    (FOR UPDATE) until the caller's transaction ends: DeleteRun's tree.

    FailedPrecondition when `run_id` is its own ancestor: such rows are
    damaged data, and deleting them would destroy what an operator needs to
    see to repair them.

    The walk reads committed rows and locks nothing (PostgreSQL allows no
    FOR UPDATE in a recursive query). A run that PySpur moved out of the
    tree meanwhile (an UPDATE of its parent_run_id, committed while the
    delete ran) was still deleted by its id: data outside the tree, lost.
    Locking the rows the walk found waits for such a writer, and gives the
    rows as it left them: a run with another parent ends the delete with
    Aborted (retry), before anything is deleted; a run gone (another
    DeleteRun) is left out. Once locked, no
    writer can move them, delete them, or add a row that points at them.
    SQLite needs none of it: its write transaction (BEGIN IMMEDIATE) holds
    the one write lock of the whole file before the walk."""
    parents = _parents(conn, run_id)
    ordered = _ordered(parents, run_id)
    if not ordered or conn.dialect.name == "sqlite":
        return ordered
    locked: dict[str, str | None] = {}
    for start in range(0, len(ordered), LOCK_CHUNK):
        chunk = ordered[start : start + LOCK_CHUNK]
        rows = conn.execute(
            select(Run.id, Run.parent_run_id).where(Run.id.in_(chunk)).with_for_update()
        )
        locked.update((row.id, row.parent_run_id) for row in rows)
    if run_id not in locked:
        # The run itself was deleted while we waited for its lock (another
        # DeleteRun of it, or of a run above it): NotFound, as on SQLite and
        # as a retry would answer; ABORTED would ask for a retry that can
        # only fail.
        return []
    # A run gone meanwhile was deleted with all of its runs below (the
    # foreign key on parent_run_id lets no row point at a deleted run): the
    # rest of the tree is deleted, as SQLite, where one delete comes after
    # the other, does. One with another parent was moved: it is no longer
    # ours to delete, nor are the runs below it.
    moved = [run for run in ordered if run in locked and locked[run] != parents[run]]
    if moved:
        raise Aborted(
            f"run {run_id}: run {moved[0]} of its tree was moved while the tree "
            "was being deleted (PySpur is still writing to it); nothing was deleted. Retry."
        )
    return [run for run in ordered if run in locked]


def _parents(conn: Connection, run_id: str) -> dict[str, str | None]:
    """run id -> parent_run_id, for `run_id` and every run below it."""
    return {row.id: row.parent_run_id for row in conn.execute(_TREE, {"run_id": run_id})}


def _ordered(parents: dict[str, str | None], run_id: str) -> list[str]:
    """The runs of `parents`, breadth first from `run_id`."""
    if run_id not in parents:
        return []
    # A cycle reachable downwards from run_id passes through run_id itself:
    # walking up from any run of it stays in it, and walking up from a
    # descendant reaches run_id. So run_id's parent is in its own tree
    # exactly when the tree holds a cycle.
    if parents[run_id] in parents:
        raise FailedPrecondition(
            f"run {run_id} is its own ancestor ({_describe(parents, run_id)}); nothing "
            "was deleted: set parent_run_id of one run of the cycle to NULL first"
        )
    # Breadth first from run_id: every run after its parent (delete_run
    # deletes in the reverse order), whatever order the rows came in.
    children: dict[str | None, list[str]] = {}
    for run, parent in parents.items():
        if run != run_id:
            children.setdefault(parent, []).append(run)
    ordered = [run_id]
    for run in ordered:  # grows as it goes
        ordered += children.get(run, ())
    return ordered


def _describe(parents: dict[str, str | None], run_id: str) -> str:
    """The cycle through run_id, upwards: "R2 -> R3 -> R2"."""
    chain = [run_id]
    parent = parents[run_id]
    while parent is not None and parent != run_id and len(chain) <= len(parents):
        chain.append(parent)
        parent = parents.get(parent)
    chain.append(run_id)
    if len(chain) > _SHOWN + 1:
        hidden = len(chain) - _SHOWN
        chain = [*chain[: _SHOWN // 2], f"... ({hidden} more)", *chain[-_SHOWN // 2 :]]
    return " -> ".join(chain)
