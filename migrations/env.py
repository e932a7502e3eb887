from __future__ import annotations

from typing import Any, Literal

from alembic import context

from core.db import UTCDateTime, get_engine
from migrations.models import metadata

config = context.config


def render_item(kind: str, item: Any, autogen_context: Any) -> str | Literal[False]:
    # Migrations must not depend on application types that may change later.
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run() -> None:
    url = config.get_main_option("sqlalchemy.url") or None
    engine = get_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()


run()
