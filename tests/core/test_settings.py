"""Settings come from `CLEARANCE_*` variables, with embedded defaults under the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No `CLEARANCE_*` variable set, and the working folder an empty temporary one."""
    for name in list(os.environ):
        if name.upper().startswith("CLEARANCE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_are_embedded_under_the_data_dir(clean_env: Path) -> None:
    """With nothing set: SQLite file, serverless SQLite broker and blob folder, all in ./var."""
    settings = Settings()

    data_dir = clean_env.resolve() / "var"
    assert settings.data_dir == data_dir
    assert settings.data_dir.is_absolute()
    assert settings.database_url is None
    assert settings.broker_url is None
    assert settings.db_url == f"sqlite:///{data_dir / 'clearance.db'}"
    assert settings.broker == f"sqla+sqlite:///{data_dir / 'broker.db'}"
    assert settings.blob_dir == data_dir / "blobs"
    assert settings.tiny_model_dir == data_dir / "models" / "tiny-flux"
    assert settings.matching.pdq_max_distance == 31
    assert settings.generation.allow_tiny_fallback is True


def test_data_dir_moves_every_embedded_location(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLEARANCE_DATA_DIR relocates the database, the broker, the blobs and the tiny model."""
    elsewhere = clean_env / "elsewhere" / "data"
    monkeypatch.setenv("CLEARANCE_DATA_DIR", str(elsewhere))

    settings = Settings()

    assert settings.data_dir == elsewhere.resolve()
    assert settings.db_url == f"sqlite:///{elsewhere.resolve() / 'clearance.db'}"
    assert settings.broker == f"sqla+sqlite:///{elsewhere.resolve() / 'broker.db'}"
    assert settings.blob_dir == elsewhere.resolve() / "blobs"
    assert settings.tiny_model_dir == elsewhere.resolve() / "models" / "tiny-flux"


def test_relative_data_dir_is_made_absolute(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative data folder is resolved once, so processes started elsewhere still agree."""
    monkeypatch.setenv("CLEARANCE_DATA_DIR", "relative/dir")

    settings = Settings()

    assert settings.data_dir == clean_env.resolve() / "relative" / "dir"


def test_database_and_broker_urls_override_the_defaults(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production URLs replace the embedded ones; the data folder still holds the blobs."""
    monkeypatch.setenv("CLEARANCE_DATA_DIR", str(clean_env / "data"))
    monkeypatch.setenv("CLEARANCE_DATABASE_URL", "postgresql+psycopg://db.example/clearance")
    monkeypatch.setenv("CLEARANCE_BROKER_URL", "redis://broker.example:6379/0")

    settings = Settings()

    assert settings.db_url == "postgresql+psycopg://db.example/clearance"
    assert settings.broker == "redis://broker.example:6379/0"
    assert settings.blob_dir == (clean_env / "data").resolve() / "blobs"


def test_nested_sections_use_a_double_underscore(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CLEARANCE_SECTION__FIELD` sets one field of a section and leaves its siblings alone."""
    monkeypatch.setenv("CLEARANCE_POLICY__BLOCKLIST", '["a b"]')
    monkeypatch.setenv("CLEARANCE_MATCHING__PDQ_MAX_DISTANCE", "12")
    monkeypatch.setenv("CLEARANCE_WORKER__CONCURRENCY", "3")

    settings = Settings()

    assert settings.policy.blocklist == ["a b"]
    assert settings.policy.review_terms == []
    assert settings.matching.pdq_max_distance == 12
    assert settings.worker.concurrency == 3
    assert settings.worker.max_tasks_per_child == 200


@pytest.mark.parametrize(
    ("variable", "value", "location"),
    [
        ("CLEARANCE_MATCHING__PDQ_MAX_DISTANCE", "999", ("matching", "pdq_max_distance")),
        ("CLEARANCE_MATCHING__PDQ_MAX_DISTANCE", "-1", ("matching", "pdq_max_distance")),
        ("CLEARANCE_MATCHING__PDQ_MAX_DISTANCE", "far", ("matching", "pdq_max_distance")),
        ("CLEARANCE_WORKER__CONCURRENCY", "0", ("worker", "concurrency")),
        ("CLEARANCE_WORKER__STAGE_TIME_LIMIT_S", "0", ("worker", "stage_time_limit_s")),
    ],
)
def test_invalid_values_are_refused_naming_the_field(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    location: tuple[str, ...],
) -> None:
    """An out-of-range or malformed value fails at start-up, and the error names the field."""
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError) as info:
        Settings()

    errors = info.value.errors()
    assert [error["loc"] for error in errors] == [location]
    assert location[-1] in str(info.value)
