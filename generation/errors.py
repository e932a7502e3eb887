from __future__ import annotations

from core.errors import InvalidInputError, UnavailableError


class GenerationRequestError(InvalidInputError):
    code = "invalid_generation_request"


class ModelUnavailableError(UnavailableError):
    code = "model_unavailable"
