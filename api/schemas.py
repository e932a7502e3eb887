from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from generation.schemas import MAX_IMAGES_PER_JOB, MAX_SEED
from generation.variants import VARIANTS

# Literal of the catalogue's names, so the OpenAPI schema lists the valid variants.
VariantName = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    variant: VariantName = "schnell"  # type: ignore[valid-type]
    use: Literal["commercial", "non-commercial"] = "commercial"
    width: int = 1024
    height: int = 1024
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n_images: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_JOB)


class StageOut(BaseModel):
    stage: str
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None
    outcome: str | None


class DecisionOut(BaseModel):
    stage: str
    decision: str
    reasons: list[dict[str, Any]]
    created_at: datetime


class ImageOut(BaseModel):
    id: str
    index: int
    seed: int
    sha256: str
    width: int
    height: int
    released: bool
    url: str | None
    matches: list[dict[str, Any]]


class JobOut(BaseModel):
    id: str
    state: str
    prompt: str
    variant: str
    use: str
    width: int
    height: int
    seed: int
    n_images: int
    model: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    stages: list[StageOut]
    decisions: list[DecisionOut]
    images: list[ImageOut]


class ErrorOut(BaseModel):
    error: str
    detail: str
    field: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
