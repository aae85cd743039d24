"""Alembic environment: runs migrations through the same async engines as tingji.

The URL comes from ``config.attributes["url"]`` (set by ``tingji db``) or else from
the ``TINGJI_*`` settings, so `alembic upgrade head` and `tingji db upgrade` agree.
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from db.engine import make_engine
from db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return url
    from tingji.settings import Settings

    return Settings.from_env().database_url


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _include_object(sqlite: bool):  # noqa: ANN202
    def include(obj: object, name: str | None, type_: str, reflected: bool,
                compare_to: object) -> bool:
        # SQLite's reflection drops the DESC of the claim index's first column, so
        # autogenerate would see a difference that is not there.
        return not (sqlite and type_ == "index" and name == "ix_tasks_claim")
    return include


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # A migration that rebuilds a table (the only way to change a constraint on
        # SQLite) must not cascade its DROP to the rows that refer to it: foreign keys
        # are off for migrations, and checked before the transaction commits.  The
        # pragma only takes effect outside a transaction: hence the driver's cursor.
        connection.connection.dbapi_connection.cursor().execute("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        compare_type=True,
        render_item=_render_item,
        include_object=_include_object(sqlite),
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")


async def _run_async() -> None:
    engine = make_engine(_url())
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_configure)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=_url().startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    else:
        asyncio.run(_run_async())
