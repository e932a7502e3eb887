from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PdqMatch:
    asset_id: str
    asset_name: str
    reference_image_id: str
    distance: int
    # 1.0 for an identical hash, falling linearly to 0.0 at 256 differing bits.
    score: float
    matcher: str = "pdq"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImportSummary:
    assets_created: int
    assets_updated: int
    references_added: int
