from __future__ import annotations

from typing import Any

from core.errors import ClearanceError, InvalidInputError, QuotaExceededError, UnavailableError


class GenerationRequestError(InvalidInputError):
    code = "invalid_generation_request"


class ModelUnavailableError(UnavailableError):
    code = "model_unavailable"


class ProviderError(UnavailableError):
    """The image provider refused or failed the request, or could not be reached in time."""

    code = "provider_error"


class SubmissionUnknownError(UnavailableError):
    """The provider may have accepted (and will bill) a submission whose answer was lost, so it
    was not sent again."""

    code = "provider_submission_unknown"


class ContentModeratedError(ClearanceError):
    """The provider's own moderation refused the prompt or the generated image."""

    code = "content_moderated"

    def __init__(self, detail: str, *, status: str, reasons: Any) -> None:
        super().__init__(detail, status=status, reasons=reasons)
        self.status = status
        self.reasons = reasons


class ModelIntegrityError(UnavailableError):
    """A model or adapter file differs from what was registered (corrupted or replaced)."""

    code = "model_integrity"


class OutOfGpuMemoryError(UnavailableError):
    code = "out_of_gpu_memory"


class BudgetExceededError(QuotaExceededError):
    code = "budget_exceeded"
