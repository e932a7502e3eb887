"""The variant catalogue: the one place that knows each FLUX.1 variant's licence, defaults
and limits. Prompt policy reads licences from here (passed in by the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.errors import choices
from generation.errors import GenerationRequestError

Backend = Literal["local", "api"]


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    licence_id: str
    licence_name: str
    commercial_use: bool
    backend: Backend
    pipeline: Literal["flux", "flux-kontext"]
    default_steps: int
    min_steps: int
    max_steps: int
    guidance_scale: float
    max_sequence_length: int
    max_width: int
    max_height: int
    hub_repo: str
    # Black Forest Labs API path that serves the variant, if any.
    api_endpoint: str | None
    # The provider's price per image when the variant runs on the API (the cost ledger's
    # figure); local generation is costed by GPU seconds instead.
    api_price_usd: float | None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="schnell",
            title="FLUX.1 [schnell]",
            licence_id="apache-2.0",
            licence_name="Apache License 2.0",
            commercial_use=True,
            backend="local",
            pipeline="flux",
            default_steps=4,
            min_steps=1,
            max_steps=8,
            guidance_scale=0.0,
            max_sequence_length=256,
            max_width=1024,
            max_height=1024,
            hub_repo="black-forest-labs/FLUX.1-schnell",
            api_endpoint=None,
            api_price_usd=None,
        ),
        Variant(
            name="dev",
            title="FLUX.1 [dev]",
            licence_id="flux-1-dev-non-commercial",
            licence_name="FLUX.1 [dev] Non-Commercial License",
            commercial_use=False,
            backend="local",
            pipeline="flux",
            default_steps=28,
            min_steps=1,
            max_steps=50,
            guidance_scale=3.5,
            max_sequence_length=512,
            max_width=1024,
            max_height=1024,
            hub_repo="black-forest-labs/FLUX.1-dev",
            api_endpoint="/v1/flux-dev",
            api_price_usd=0.025,
        ),
        Variant(
            name="kontext-dev",
            title="FLUX.1 Kontext [dev]",
            licence_id="flux-1-dev-non-commercial",
            licence_name="FLUX.1 [dev] Non-Commercial License",
            commercial_use=False,
            backend="local",
            pipeline="flux-kontext",
            default_steps=28,
            min_steps=1,
            max_steps=50,
            guidance_scale=2.5,
            max_sequence_length=512,
            max_width=1024,
            max_height=1024,
            hub_repo="black-forest-labs/FLUX.1-Kontext-dev",
            api_endpoint=None,
            api_price_usd=None,
        ),
        Variant(
            name="pro",
            title="FLUX.1 [pro]",
            licence_id="bfl-api-terms",
            licence_name="Black Forest Labs API terms (commercial use allowed)",
            commercial_use=True,
            backend="api",
            pipeline="flux",
            default_steps=28,
            min_steps=1,
            max_steps=50,
            guidance_scale=3.0,
            max_sequence_length=512,
            max_width=1440,
            max_height=1440,
            hub_repo="",
            api_endpoint="/v1/flux-pro-1.1",
            api_price_usd=0.055,
        ),
        Variant(
            name="pro-ultra",
            title="FLUX1.1 [pro] Ultra",
            licence_id="bfl-api-terms",
            licence_name="Black Forest Labs API terms (commercial use allowed)",
            commercial_use=True,
            backend="api",
            pipeline="flux",
            default_steps=50,
            min_steps=1,
            max_steps=50,
            guidance_scale=3.0,
            max_sequence_length=512,
            max_width=2048,
            max_height=2048,
            hub_repo="",
            api_endpoint="/v1/flux-pro-1.1-ultra",
            api_price_usd=0.06,
        ),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise GenerationRequestError(
            f"variant {name!r} is unknown; valid variants: {choices(VARIANTS)}", field="variant"
        ) from None
