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
