from __future__ import annotations

from core.errors import InvalidInputError, NotFoundError, UnavailableError


class CatalogueError(InvalidInputError):
    code = "invalid_catalogue"


class AssetNotFoundError(NotFoundError):
    code = "asset_not_found"


class EmbedderUnavailableError(UnavailableError):
    code = "embedder_unavailable"


class IndexUnusableError(UnavailableError):
    """The active index cannot serve this embedder (built by another one, or missing)."""

    code = "index_unusable"
