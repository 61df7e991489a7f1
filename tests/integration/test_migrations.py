"""The migrations build exactly the schema the models declare (tables, columns, indexes), on
both backends: an index added to a model without a migration (or the reverse) fails here."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from daemon.store import db
from daemon.store.models import Base


async def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        await db.migrate(engine)
        async with engine.connect() as conn:
            diffs: list[Any] = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
            indexes = await conn.run_sync(
                lambda sync: {i["name"] for i in sync.dialect.get_indexes(sync, "posts")}
            )
    finally:
        await engine.dispose()
    assert diffs == []
    assert {"ix_posts_brand_state_due", "ix_posts_scheduled"} <= indexes
