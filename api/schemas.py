from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from generation.schemas import LORA_SCALE_RANGE, MAX_IMAGES_PER_JOB, MAX_LORAS_PER_JOB, MAX_SEED
from generation.variants import VARIANTS

# Literal of the catalogue's names, so the OpenAPI schema lists the valid variants.
VariantName = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]


class LoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scale: float = Field(default=1.0, ge=LORA_SCALE_RANGE[0], le=LORA_SCALE_RANGE[1])


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    variant: VariantName = "schnell"  # type: ignore[valid-type]
    use: Literal["commercial", "non-commercial"] = "commercial"
    width: int = 1024
    height: int = 1024
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n_images: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_JOB)
    # Default: the variant's own number of denoising steps.
    steps: int | None = Field(default=None, ge=1)
    project: str = Field(default="", max_length=100, pattern=r"^[A-Za-z0-9._-]*$")
    # Kontext variants: the id of an image from POST /v1/uploads.
    input_image: str | None = None
    loras: list[LoraRequest] = Field(default_factory=list, max_length=MAX_LORAS_PER_JOB)


class ProgressOut(BaseModel):
    step: int
    total: int
    text: str


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
    cost_usd: Decimal | None


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
    steps: int | None
    project: str
    input_image_sha256: str | None
    loras: list[dict[str, Any]]
    model: str | None
    error: str | None
    progress: ProgressOut | None
    estimated_cost_usd: Decimal
    cost_usd: Decimal
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


class UploadOut(BaseModel):
    id: str
    sha256: str
    width: int
    height: int


class UsageLineOut(BaseModel):
    project: str
    variant: str
    kind: str
    images: int
    gpu_seconds: float
    amount_usd: Decimal


class BudgetOut(BaseModel):
    project: str
    monthly_usd: Decimal
    spent_usd: Decimal
    remaining_usd: Decimal


class UsageOut(BaseModel):
    month: str
    total_usd: Decimal
    lines: list[UsageLineOut]
    budgets: list[BudgetOut]
