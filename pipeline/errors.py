from __future__ import annotations

from core.errors import ConflictError, NotFoundError, UnavailableError


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class ImageNotFoundError(NotFoundError):
    code = "image_not_found"


class ImageNotReleasedError(ConflictError):
    code = "image_not_released"


class EnqueueError(UnavailableError):
    code = "broker_unavailable"


class UploadNotFoundError(NotFoundError):
    code = "upload_not_found"


class SigningError(UnavailableError):
    """The released image cannot be signed (key or certificates missing or unusable, or the
    C2PA signing itself failed); nothing is released unsigned."""

    code = "signing_unavailable"


class SigningKeyExistsError(ConflictError):
    code = "signing_key_exists"


class JobFinalError(ConflictError):
    """The job is in a final state already; it cannot be cancelled."""

    code = "job_final"


class IdempotencyKeyReusedError(ConflictError):
    """An `Idempotency-Key` sent again with another request body."""

    code = "idempotency_key_reused"


class WebhookNotFoundError(NotFoundError):
    code = "webhook_not_found"


class DeliveryNotFoundError(NotFoundError):
    code = "webhook_delivery_not_found"


class DeliveryPendingError(ConflictError):
    code = "webhook_delivery_pending"
