"""Imports every feature's tables so `Base.metadata` is complete for Alembic and tests."""

from api import models as api_models
from audit import models as audit_models
from core.db import Base
from generation import models as generation_models
from pipeline import models as pipeline_models
from reference_index import models as reference_index_models
from review import models as review_models

metadata = Base.metadata
__all__ = [
    "api_models",
    "audit_models",
    "generation_models",
    "metadata",
    "pipeline_models",
    "reference_index_models",
    "review_models",
]
