"""stages 'chapters', 'mindmap' and 'translate': the LLM's notes, each a checkpointed stage

``tasks.stage`` and ``task_stages.stage`` are CHECKed against the list of stages.
SQLite cannot change a CHECK constraint in place: each table is rebuilt from its own
``CREATE TABLE`` text (as ``sqlite_master`` holds it, whatever columns earlier
migrations added) with the list replaced, the rows copied and the indexes made again,
with foreign keys off for the migration (``migrations/env.py``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 07:30:00
"""
import re
from collections.abc import Sequence

from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ('fetch', 'transcribe', 'polish', 'summarize', 'export')
AFTER = ('fetch', 'transcribe', 'polish', 'summarize', 'chapters', 'mindmap', 'translate',
         'export')
# table -> the CHECK constraint's name (db.models' naming convention)
CHECKS = {'tasks': 'ck_tasks_task_stage', 'task_stages': 'ck_task_stages_checkpoint_stage'}


def _sqlite_rebuild(table: str, constraint: str, listed: str) -> None:
    bind = op.get_bind()
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(f"rebuilding {table} with foreign keys on would delete the rows "
                           "that refer to it: run migrations through tingji's env.py")
    ddl = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).scalar()
    indexes = [row[0] for row in bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL", (table,))]
    check = re.compile(rf"CONSTRAINT {constraint} CHECK \(stage IN \([^)]*\)\)")
    if not check.search(ddl):
        raise RuntimeError(f"{table}: constraint {constraint} not found in its schema")
    rebuilt = check.sub(f"CONSTRAINT {constraint} CHECK (stage IN ({listed}))", ddl)
    rebuilt = re.sub(rf"^CREATE TABLE \"?{table}\"?", f"CREATE TABLE {table}_rebuilt", rebuilt)
    op.execute(rebuilt)
    op.execute(f"INSERT INTO {table}_rebuilt SELECT * FROM {table}")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {table}_rebuilt RENAME TO {table}")
    for index in indexes:
        op.execute(index)


def _stages(stages: Sequence[str]) -> None:
    listed = ", ".join(f"'{s}'" for s in stages)
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, constraint in CHECKS.items():
        if sqlite:
            _sqlite_rebuild(table, constraint, listed)
        else:
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} "
                       f"CHECK (stage IN ({listed}))")


def upgrade() -> None:
    _stages(AFTER)


def downgrade() -> None:
    # the notes' checkpoints go (the results keep what they produced); a task that is
    # in one of those stages now goes back to the stage before them
    op.execute("DELETE FROM task_stages WHERE stage IN ('chapters', 'mindmap', 'translate')")
    op.execute("UPDATE tasks SET stage = 'summarize' "
               "WHERE stage IN ('chapters', 'mindmap', 'translate')")
    _stages(BEFORE)
