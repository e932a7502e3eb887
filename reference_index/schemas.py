from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImportSummary:
    assets_created: int
    assets_updated: int
    references_added: int
    # The exemplars this import added, to add to the index.
    new_reference_ids: tuple[str, ...] = ()
