"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, settings pointed at a
fresh data folder, and the rule for tests that need a server: they skip with a message
naming it, except under CI=true, where they fail."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings

os.environ["HF_HUB_OFFLINE"] = "1"

POSTGRES_URL = os.environ.get(
    "CLEARANCE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CLEARANCE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def server_missing(what: str, error: Exception) -> None:
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true, so this test must run, not skip")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as e:
        server_missing(f"PostgreSQL at {POSTGRES_URL}", e)
    finally:
        engine.dispose()
    return POSTGRES_URL


@contextlib.contextmanager
def _throwaway_database(server: str, template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (empty, or a copy of `template`), dropped afterwards."""
    import sqlalchemy as sa

    from core.db import dispose_engines

    name = f"clearance_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    try:
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    with _throwaway_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_template(postgres_server: str) -> Iterator[str]:
    """A PostgreSQL database migrated once per run; tests get copies of it."""
    import sqlalchemy as sa

    from core.db import dispose_engines, get_engine
    from migrations.config import upgrade

    name = f"clearance_template_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    get_engine(url).dispose()  # a template must have no open connections to be copied
    dispose_engines()
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def migrated_postgres(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test (a copy of the template)."""
    with _throwaway_database(postgres_server, template=postgres_template) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per run; tests get copies of the file."""
    import sqlite3

    from core.db import dispose_engines, get_engine
    from migrations.config import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "clearance.db"
    upgrade(f"sqlite:///{path}")
    get_engine(f"sqlite:///{path}").dispose()
    dispose_engines()
    # Fold the write-ahead log into the file, so a copy of the file alone is complete.
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(scope="session")
def redis_server() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as e:
        server_missing(f"Redis at {REDIS_URL}", e)
    return REDIS_URL


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny pipeline folder for the whole run; each worker process still loads it once."""
    from generation.tiny import ensure_tiny_flux

    return ensure_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture(scope="session")
def broker_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded broker file for all in-process tests: the Celery app keeps its broker
    connection pool for the life of the process, as it does in production."""
    return tmp_path_factory.mktemp("broker") / "broker.db"


def _broker_sql(path: Path, statement: str) -> int:
    import sqlite3

    with sqlite3.connect(path) as connection:
        try:
            row = connection.execute(statement).fetchone()
        except sqlite3.OperationalError:  # no tables yet: nothing was ever sent
            return 0
    return int(row[0]) if row else 0


def purge_broker(path: Path) -> None:
    _broker_sql(path, "DELETE FROM kombu_message")


def queued_messages(path: Path) -> int:
    """Messages waiting in the embedded broker (kombu's SQLAlchemy transport tables)."""
    return _broker_sql(path, "SELECT count(*) FROM kombu_message WHERE visible")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database for one test, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        import shutil

        shutil.copy(request.getfixturevalue("sqlite_template"), tmp_path / "clearance.db")
        return f"sqlite:///{tmp_path / 'clearance.db'}"
    url: str = request.getfixturevalue("migrated_postgres")
    return url


def reset_caches() -> None:
    from core.db import dispose_engines
    from core.settings import get_settings
    from pipeline.stages import default_context

    dispose_engines()
    get_settings.cache_clear()
    default_context.cache_clear()


@pytest.fixture
def settings(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    tiny_model_dir: Path,
    broker_file: Path,
) -> Iterator[Settings]:
    """Settings for one test: its own data folder, a migrated database (SQLite and
    PostgreSQL), the embedded broker emptied; the Celery app pointed at it."""
    from core import celery_app
    from core.settings import get_settings

    monkeypatch.setenv("CLEARANCE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CLEARANCE_DATABASE_URL", database_url)
    monkeypatch.setenv("CLEARANCE_BROKER_URL", f"sqla+sqlite:///{broker_file}")
    purge_broker(broker_file)
    monkeypatch.setenv("CLEARANCE_GENERATION__TINY_MODEL_DIR", str(tiny_model_dir))
    # No random quality sample: a test knows which jobs a person must see.
    monkeypatch.setenv("CLEARANCE_ROUTING__SAMPLE_RATE", "0")
    reset_caches()
    celery_app.configure(get_settings())
    yield get_settings()
    reset_caches()


class TenantKeys:
    """A tenant with one API key per role."""

    def __init__(self, tenant_id: str, name: str, keys: dict[str, str]) -> None:
        self.id = tenant_id
        self.name = name
        self.keys = keys

    def headers(self, role: str = "requester") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


def make_tenant(name: str) -> TenantKeys:
    from api import auth
    from api.models import ROLES
    from core.db import session_scope

    with session_scope() as session:
        tenant = auth.create_tenant(session=session, name=name, actor="test")
        keys = {
            role: auth.create_key(session=session, tenant=tenant, role=role, actor="test")
            for role in ROLES
        }
        return TenantKeys(tenant.id, name, keys)


@pytest.fixture
def tenant(settings: Settings) -> TenantKeys:
    return make_tenant("acme")
