from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from generation.schemas import LORA_SCALE_RANGE, MAX_IMAGES_PER_JOB, MAX_LORAS_PER_JOB, MAX_SEED
from generation.variants import VARIANTS
from pipeline.models import JOB_STATES

# Literal of the catalogue's names, so the OpenAPI schema lists the valid variants.
VariantName = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]
JobState = Literal[tuple(JOB_STATES)]  # type: ignore[valid-type]

# Request bodies: unknown fields are refused, and JSON values must have the types the schema
# declares. Pydantic's lax mode would take true as 1 and "5" as 5, which the schema forbids.
REQUEST_BODY = ConfigDict(extra="forbid", strict=True)


class LoraRequest(BaseModel):
    model_config = REQUEST_BODY

    name: str = Field(min_length=1, max_length=100)
    scale: float = Field(default=1.0, ge=LORA_SCALE_RANGE[0], le=LORA_SCALE_RANGE[1])


class JobCreate(BaseModel):
    model_config = REQUEST_BODY

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


class CancelIn(BaseModel):
    model_config = REQUEST_BODY

    reason: str = Field(default="", max_length=1000)


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
    # The signed copies served once released (C2PA manifest and IPTC XMP).
    released_sha256: str | None = None
    released_jpeg_sha256: str | None = None
    width: int
    height: int
    released: bool
    url: str | None
    matches: list[dict[str, Any]]
    cost_usd: Decimal | None


class JobOut(BaseModel):
    id: str
    state: str
    # The API key that submitted it (`api_key:<prefix>`); GET /v1/jobs filters on it.
    created_by: str
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


AssetKind = Literal["character", "logo", "brand", "person", "artwork"]
Risk = Literal["low", "medium", "high"]


class Thresholds(BaseModel):
    """Per-asset overrides of the matchers' settings."""

    model_config = REQUEST_BODY

    pdq_max_distance: int | None = Field(default=None, ge=0, le=256)
    clip_min_image_score: float | None = Field(default=None, ge=-1, le=1)
    clip_min_text_score: float | None = Field(default=None, ge=-1, le=1)
    keypoint_min_inliers: int | None = Field(default=None, ge=4)


class AssetIn(BaseModel):
    model_config = REQUEST_BODY

    name: str = Field(min_length=1, max_length=200)
    kind: AssetKind
    owner: str = Field(default="", max_length=200)
    aliases: list[str] = Field(default_factory=list, max_length=100)
    description: str = Field(default="", max_length=2000)
    risk: Risk = "high"
    thresholds: Thresholds = Field(default_factory=Thresholds)


class AssetCreate(AssetIn):
    # Stored as "<tenant name>:<id>", the tenant's own asset (the shared catalogue is the
    # operators'); the response carries the full id.
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")


class ExemplarOut(BaseModel):
    id: str
    polarity: str
    sha256: str
    width: int
    height: int
    pdq_quality: int
    source: str
    created_at: datetime


class AssetOut(BaseModel):
    id: str
    # "shared": the operators' catalogue, checked for every tenant, read-only;
    # "tenant": the caller's tenant's own.
    scope: Literal["shared", "tenant"]
    name: str
    kind: str
    owner: str
    aliases: list[str]
    description: str
    risk: str
    thresholds: dict[str, float]
    exemplars: int
    negative_exemplars: int
    created_at: datetime
    updated_at: datetime


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    total: int
    offset: int
    limit: int


class CheckMatchOut(BaseModel):
    asset_id: str
    asset_name: str
    matcher: str
    score: float
    strength: str
    exemplar_id: str | None
    box: list[int] | None
    counted: bool
    detail: str


class CheckOut(BaseModel):
    decision: Literal["approve", "review", "reject"]
    matches: list[CheckMatchOut]
    nsfw: dict[str, Any] | None
    embedder: str
    index_checkpoint: str | None
    faults: list[dict[str, str]]
    suppressed: list[dict[str, Any]]


class IndexOut(BaseModel):
    checkpoint: str | None
    embedder: str | None
    current_embedder: str
    dimension: int | None
    vectors: int
    exemplars: int
    kind: str | None
    built_by: str | None
    created_at: datetime | None
    # Exemplars in the catalogue that the active index does not hold yet.
    pending_exemplars: int


class PolicyCheckIn(BaseModel):
    model_config = REQUEST_BODY

    # Length and emptiness are judged by the policy itself (one limit, in the rule file).
    prompt: str
    variant: VariantName = "schnell"  # type: ignore[valid-type]
    use: Literal["commercial", "non-commercial"] = "commercial"


class PolicyReasonOut(BaseModel):
    rule: str
    decision: Literal["allow", "review", "block"]
    detail: str
    matched: str | None = None  # the prompt's own text that fired the rule
    asset_id: str | None = None
    score: float | None = None


class PolicyDecisionOut(BaseModel):
    decision: Literal["allow", "review", "block"]
    reasons: list[PolicyReasonOut]
    rules_version: str
    catalogue_version: str


class ReviewDecisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    reviewer: str
    role: str
    decision: str
    reason: str
    note: str
    created_at: datetime


class ReviewTaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str
    state: Literal["open", "claimed", "escalated", "decided"]
    priority: Literal["high", "normal"]
    band: str
    reasons: list[dict[str, Any]]
    required_approvals: int
    approvals: list[str]
    claimed_by: str | None
    lease_expires_at: datetime | None
    due_at: datetime
    escalated_at: datetime | None
    appeal_of: str | None
    appeal_note: str | None
    outcome: str | None
    created_at: datetime
    decided_at: datetime | None
    decisions: list[ReviewDecisionOut]


class ReviewDecisionIn(BaseModel):
    model_config = REQUEST_BODY

    decision: Literal["approve", "reject", "escalate"]
    reason: str
    note: str = Field(default="", max_length=4000)


class AppealIn(BaseModel):
    model_config = REQUEST_BODY

    note: str = Field(min_length=1, max_length=4000)


class WebhookIn(BaseModel):
    model_config = REQUEST_BODY

    url: str = Field(max_length=2000, description="http:// or https:// endpoint")
    events: list[str] = Field(
        description="job.released, job.rejected, job.blocked and/or job.in_review"
    )
    # Omitted: one is made (whsec_...) and shown once, in the response to this request.
    secret: str | None = Field(default=None, max_length=100)
    description: str = Field(default="", max_length=200)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str
    created_by: str
    created_at: datetime
    # Only in the response that created the subscription.
    secret: str | None = None


class WebhookAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    status_code: int | None
    error: str | None
    duration_ms: int
    attempted_at: datetime


class WebhookDeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    subscription_id: str
    event_id: str
    event: str
    job_id: str | None
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    replay_of: str | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[WebhookAttemptOut]
    payload: dict[str, Any]
