"""The demo workflows in the database: found by their unique names, made
unless there, each with a version holding the demo's definition."""

from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ..store.engine import WRITE_OPTION
from ..store.models import Workflow, WorkflowVersion
from .content import Demo, definition_hash, demos

DemoIds = list[tuple[Demo, tuple[str, str]]]  # each demo, its (workflow id, version id)


def ensure_workflows(engine: Engine, now: datetime) -> tuple[DemoIds, int]:
    """The demo workflows and versions (made unless there, in a transaction
    of their own) and how many workflows were made."""
    writer = engine.execution_options(**{WRITE_OPTION: True})
    with Session(writer, expire_on_commit=False) as session, session.begin():
        return workflows_in(session, now)


def demo_workflow_ids(session: Session) -> list[str]:
    """The ids of the demo workflows there are (none made), oldest first."""
    names = [demo.name for demo in demos()]
    chosen = select(Workflow.id).where(Workflow.name.in_(names)).order_by(Workflow._intid)
    return list(session.scalars(chosen))


def workflows_in(session: Session, now: datetime) -> tuple[DemoIds, int]:
    """ensure_workflows within the caller's transaction."""
    found = []
    created = 0
    for demo in demos():
        spec = demo.definition()
        workflow = session.scalars(select(Workflow).where(Workflow.name == demo.name)).first()
        if workflow is None:
            workflow = Workflow(
                name=demo.name,
                description=demo.description,
                definition=spec,
                created_at=now,
                updated_at=now,
            )
            session.add(workflow)
            session.flush()
            created += 1
        # The version with the demo's definition, as PySpur picks one
        # (pyspur.utils.workflow_version_utils): by definition hash, else a
        # new version after the latest (someone may have edited the demo).
        digest = definition_hash(spec)
        version = session.scalars(
            select(WorkflowVersion).where(
                WorkflowVersion.workflow_id == workflow.id,
                WorkflowVersion.definition_hash == digest,
            )
        ).first()
        if version is None:
            latest = session.scalar(
                select(func.max(WorkflowVersion.version)).where(
                    WorkflowVersion.workflow_id == workflow.id
                )
            )
            version = WorkflowVersion(
                version=(latest or 0) + 1,
                workflow_id=workflow.id,
                name=demo.name,
                description=demo.description,
                definition=spec,
                definition_hash=digest,
                created_at=now,
                updated_at=now,
            )
            session.add(version)
            session.flush()
        found.append((demo, (workflow.id, version.id)))
    return found, created
