from __future__ import annotations

from core.errors import InvalidInputError, NotFoundError


class CatalogueError(InvalidInputError):
    code = "invalid_catalogue"


class AssetNotFoundError(NotFoundError):
    code = "asset_not_found"


class ImageDecodeError(InvalidInputError):
    code = "invalid_image"
