"""The migrations build exactly the tables the models describe, on SQLite and PostgreSQL,
and can be undone."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.db import get_engine
from core.settings import Settings
from migrations.config import alembic_config, upgrade
from migrations.models import metadata


def test_migrations_match_the_models(settings: Settings) -> None:
    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_migrations_downgrade_and_upgrade_again(settings: Settings) -> None:
    command.downgrade(alembic_config(), "base")
    upgrade()
    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
