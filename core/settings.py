"""Settings: one `Settings` object read from `CLEARANCE_*` environment variables.

Defaults are the embedded ones (SQLite under the data folder, a broker that needs no server,
blobs on local disk, the tiny offline model), so a fresh checkout runs with no configuration.
Production sets `CLEARANCE_DATABASE_URL` and `CLEARANCE_BROKER_URL`; nested sections are set
with a double underscore, e.g. `CLEARANCE_POLICY__BLOCKLIST='["term", "other term"]'`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BflSettings(BaseModel):
    """The Black Forest Labs API, for `pro` and `pro-ultra` (and any variant named in
    `variants`)."""

    base_url: str = "https://api.bfl.ai"
    api_key: SecretStr | None = None
    # Variants sent to the API instead of local weights; the API-only ones always are.
    variants: list[str] = Field(default_factory=list)
    # 0 (strictest) to 6 (most permissive), passed to the provider's own moderation.
    safety_tolerance: int = Field(default=2, ge=0, le=6)
    request_timeout_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    # How long one image may stay pending at the provider before the job fails.
    max_wait_s: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=5, ge=0)


class GenerationSettings(BaseModel):
    # Variant name -> local folder holding a Hugging Face snapshot of that FLUX.1 model.
    local_models: dict[str, Path] = Field(default_factory=dict)
    # Without a folder for a local variant, use the tiny random-weight pipeline (labelled as
    # such everywhere). Production turns this off so a missing folder is an error instead.
    allow_tiny_fallback: bool = True
    # Where the tiny pipeline is saved; default: DATA_DIR/models/tiny-flux.
    tiny_model_dir: Path | None = None
    # The folder whose LoRA files a tenant's admin may register for its tenant
    # (POST /v1/admin/loras names a file inside it); None: adapters only by operators
    # (`clearance loras register`).
    lora_dir: Path | None = None
    # What a GPU second costs, for the cost ledger of local generation.
    gpu_usd_per_second: float = Field(default=0.0011, ge=0)  # ~ $4/hour for an H100
    # For budget checks before a local job runs: seconds per denoising step per megapixel
    # (FLUX.1 on an H100: 0.81 s for 4 steps at 1024x1024).
    gpu_seconds_per_step_megapixel: float = Field(default=0.2, gt=0)
    bfl: BflSettings = Field(default_factory=BflSettings)


class PolicySettings(BaseModel):
    # The policy rule file (versioned YAML); default: review/rules/default.yaml, shipped in
    # the package.
    rules_file: Path | None = None
    # Extra terms merged into the rules: prompts containing any of them (whole words,
    # normalised) are blocked.
    blocklist: list[str] = Field(
        default_factory=lambda: ["child sexual", "csam", "beheading", "snuff film"]
    )
    # Extra terms merged into the rules: prompts containing any of them go to human review.
    review_terms: list[str] = Field(default_factory=list)
    # Match prompts against asset descriptions with sentence embeddings (all-MiniLM-L6-v2,
    # shipped in a wheel); off leaves names, aliases, misspellings and categories.
    semantic: bool = True

    @field_validator("blocklist", "review_terms")
    @classmethod
    def _no_blank_terms(cls, terms: list[str]) -> list[str]:
        # A blank term would match every prompt.
        if any(not term.strip() for term in terms):
            raise ValueError("terms must not be blank")
        return terms


class ClipSettings(BaseModel):
    # open_clip model name, and a local checkpoint file for it (production: ViT-L-14 and its
    # weights). Without a checkpoint, a tiny random-weight model stands in, labelled as such;
    # its scores are shown but never decide anything.
    model_name: str = "ViT-L-14"
    checkpoint: Path | None = None
    # Cosine similarity of an image to an exemplar, and to an asset's name or description.
    min_image_score: float = Field(default=0.85, ge=-1, le=1)
    min_text_score: float = Field(default=0.28, ge=-1, le=1)
    # At or above this image score the match is as good as a copy: the image is rejected.
    reject_image_score: float = Field(default=0.95, ge=-1, le=1)


class NsfwSettings(BaseModel):
    """NudeNet labels and the scores from which an image is rejected or reviewed."""

    reject: dict[str, float] = Field(
        default_factory=lambda: {
            "FEMALE_GENITALIA_EXPOSED": 0.5,
            "MALE_GENITALIA_EXPOSED": 0.5,
            "ANUS_EXPOSED": 0.5,
        }
    )
    review: dict[str, float] = Field(
        default_factory=lambda: {
            "FEMALE_BREAST_EXPOSED": 0.45,
            "BUTTOCKS_EXPOSED": 0.45,
            "MALE_BREAST_EXPOSED": 0.8,
        }
    )


class MatchingSettings(BaseModel):
    # Meta's HMA treats PDQ Hamming distance <= 31 (of 256 bits) as a match, and ignores
    # hashes of quality below 50 (flat images hash unreliably).
    pdq_max_distance: int = Field(default=31, ge=0, le=256)
    pdq_reject_distance: int = Field(default=8, ge=0, le=256)
    pdq_min_quality: int = Field(default=50, ge=0, le=100)
    # Keypoint matches need this many RANSAC inliers (a copy of an exemplar as a whole, whose
    # pose nothing was fitted to, is judged by its pixels); this many are as good as a copy.
    keypoint_min_inliers: int = Field(default=12, ge=4)
    keypoint_reject_inliers: int = Field(default=60, ge=4)
    # Up to this many vectors the index is exact (IndexFlatIP); above it, HNSW.
    exact_index_limit: int = Field(default=10_000, ge=1)
    clip: ClipSettings = Field(default_factory=ClipSettings)
    nsfw: NsfwSettings = Field(default_factory=NsfwSettings)


class Band(BaseModel):
    """One check category's routing band, over its risk 0..1: below `auto_approve_below` the
    category lets the image through, at or above `auto_reject_at` it rejects, in between a
    person decides."""

    auto_approve_below: float = Field(ge=0, le=1)
    auto_reject_at: float = Field(ge=0, le=1.01)

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.auto_reject_at < self.auto_approve_below:
            raise ValueError("auto_reject_at must not be below auto_approve_below")
        return self


def _default_bands() -> dict[str, Band]:
    # Risk 1.0 is a copy (or an NSFW reject label, or a blocked prompt) as the check itself
    # judged it under the asset's thresholds; any other counted finding is worth a look.
    return {
        "catalogue": Band(auto_approve_below=0.05, auto_reject_at=1.0),
        "nsfw": Band(auto_approve_below=0.05, auto_reject_at=1.0),
        "prompt": Band(auto_approve_below=0.5, auto_reject_at=1.0),
    }


class RoutingSettings(BaseModel):
    # Per check category: catalogue (protected assets), nsfw, prompt.
    bands: dict[str, Band] = Field(default_factory=_default_bands)
    # A random share of auto-approved jobs also goes to a person (quality control).
    sample_rate: float = Field(default=0.02, ge=0, le=1)
    # Tasks at or above this risk are high priority and need two reviewers (four-eyes).
    high_risk_at: float = Field(default=0.85, ge=0, le=1)

    @field_validator("bands")
    @classmethod
    def _known_categories(cls, bands: dict[str, Band]) -> dict[str, Band]:
        unknown = sorted(set(bands) - set(_default_bands()))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; valid: {sorted(_default_bands())}")
        return {**_default_bands(), **bands}


class ReviewSettings(BaseModel):
    # How long a claim lasts before the task returns to the queue.
    lease_minutes: float = Field(default=15, gt=0)
    # Time to a decision before the task escalates to legal by itself.
    sla_hours_normal: float = Field(default=24, gt=0)
    sla_hours_high: float = Field(default=4, gt=0)
    # How often Celery beat looks for SLA breaches.
    escalation_check_seconds: float = Field(default=60, gt=0)


class WorkerSettings(BaseModel):
    concurrency: int = Field(default=1, ge=1)
    max_tasks_per_child: int = Field(default=200, ge=1)
    max_memory_per_child_mb: int = Field(default=8192, ge=64)
    # A stage past its soft limit is failed (fail closed); the hard limit kills the child.
    stage_soft_time_limit_s: float = Field(default=600.0, gt=0)
    stage_time_limit_s: float = Field(default=660.0, gt=0)
    # A stage interrupted this many times (worker killed mid-stage) fails the job.
    max_stage_attempts: int = Field(default=3, ge=1)
    # Retries of a stage on transient errors (database or broker briefly unreachable).
    transient_retries: int = Field(default=5, ge=0)


class AuditSettings(BaseModel):
    """Signed checkpoints of the audit chain head, and the key that signs them and exports."""

    # A checkpoint is written in the transaction of every Nth event, and by the beat task
    # every M minutes when events came since the last one.
    checkpoint_every_events: int = Field(default=100, ge=1)
    checkpoint_every_minutes: float = Field(default=10.0, gt=0)
    # Ed25519 private key, PEM (PKCS#8). Default: DATA_DIR/audit-signing/signing-key.pem,
    # created on first use with its public key next to it (signing-key.pub.pem). A key named
    # here is never created: production provisions it.
    signing_key_file: Path | None = None
    # Public keys (PEM) of earlier signing keys: what they signed still verifies after the
    # signing key is rotated.
    trusted_public_keys: list[Path] = Field(default_factory=list)


class ProvenanceSettings(BaseModel):
    """The key that signs the C2PA manifest of every released image (EU AI Act Art. 50(2))."""

    # PEM private key (EC P-256/P-384, Ed25519 or RSA) and PEM certificate chain (the signing
    # certificate first, then its issuers; C2PA refuses a lone self-signed certificate).
    # Default: DATA_DIR/signing/signing-key.pem and signing-chain.pem, made by a local CA on
    # first release (or `clearance keys init-signing`). Named files are never created.
    signing_key: Path | None = None
    certificate_chain: Path | None = None
    # RFC 3161 timestamp authority; none signs without a trusted timestamp (works offline).
    timestamp_url: str | None = None
    jpeg_quality: int = Field(default=92, ge=1, le=95)


class WebhookSettings(BaseModel):
    """Delivery of job events to tenants' HTTPS endpoints (an outbox sent by Celery beat)."""

    # How often beat sends the deliveries that are due, and how many one run sends at most.
    dispatch_every_s: float = Field(default=5.0, gt=0)
    batch_size: int = Field(default=50, ge=1)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # Attempt n waits min(cap, base * 2**(n-1)) before the next one; after max_attempts the
    # delivery is marked failed (an admin can replay it).
    max_attempts: int = Field(default=10, ge=1)
    backoff_base_s: float = Field(default=10.0, gt=0)
    backoff_cap_s: float = Field(default=3600.0, gt=0)


class DashboardSettings(BaseModel):
    """The reviewer dashboard's sign-in sessions and live updates."""

    # How long a sign-in lasts; signing out, or an admin disabling the user, ends it sooner.
    session_hours: float = Field(default=12, gt=0)
    # Send the session cookie over HTTPS only. Off by default because the embedded service
    # serves plain HTTP on 127.0.0.1; a deployment behind TLS turns it on.
    secure_cookie: bool = False
    # How often the live-update stream (server-sent events) looks at the review queue.
    events_poll_seconds: float = Field(default=2.0, gt=0)
    # With this many failed sign-ins to one account within the last failed_sign_in_minutes
    # (and since its last sign-in), the account refuses every sign-in until fewer are that
    # recent: a password guesser gets that many tries per window. Refusals while locked are
    # audited (dashboard.login_locked) but do not count.
    max_failed_sign_ins: int = Field(default=5, ge=1)
    failed_sign_in_minutes: float = Field(default=15, gt=0)


class MetricsSettings(BaseModel):
    # Bearer token /metrics requires; None leaves it open (the embedded default).
    token: SecretStr | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CLEARANCE_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("var")
    database_url: str | None = None
    broker_url: str | None = None
    # Where the `clearance submit` client finds the API, and the key it sends.
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None

    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    matching: MatchingSettings = Field(default_factory=MatchingSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Absolute, so the API and a worker started from another folder agree on it.
        return value.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'clearance.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def signing_key_path(self) -> Path:
        return self.provenance.signing_key or self.data_dir / "signing" / "signing-key.pem"

    @property
    def certificate_chain_path(self) -> Path:
        return self.provenance.certificate_chain or self.data_dir / "signing" / "signing-chain.pem"

    @property
    def tiny_model_dir(self) -> Path:
        return self.generation.tiny_model_dir or self.data_dir / "models" / "tiny-flux"

    @property
    def audit_signing_key_file(self) -> Path:
        return self.audit.signing_key_file or self.data_dir / "audit-signing" / "signing-key.pem"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
