"""The variant catalogue: licences, defaults and limits of each FLUX.1 variant."""

from __future__ import annotations

import pytest

from generation.errors import GenerationRequestError
from generation.schemas import MIN_SIDE, SIDE_MULTIPLE
from generation.variants import VARIANTS, get_variant

ALL_VARIANTS = ("schnell", "dev", "kontext-dev", "pro", "pro-ultra")


def test_catalogue_holds_exactly_the_known_variants() -> None:
    """The catalogue lists the five FLUX.1 variants, each under its own name."""
    assert set(VARIANTS) == set(ALL_VARIANTS)
    for name, variant in VARIANTS.items():
        assert variant.name == name


def test_schnell_is_apache_licensed_local_and_fast() -> None:
    """schnell: Apache 2.0 (commercial use allowed), local, 4 steps, no guidance, 256 tokens."""
    schnell = get_variant("schnell")
    assert schnell.licence_id == "apache-2.0"
    assert schnell.commercial_use is True
    assert schnell.backend == "local"
    assert schnell.default_steps == 4
    assert schnell.guidance_scale == 0.0
    assert schnell.max_sequence_length == 256
    assert schnell.hub_repo == "black-forest-labs/FLUX.1-schnell"


def test_dev_is_non_commercial_with_28_steps() -> None:
    """dev: non-commercial licence, local, 28 steps, guidance 3.5, 512 tokens."""
    dev = get_variant("dev")
    assert dev.commercial_use is False
    assert "non-commercial" in dev.licence_id
    assert "Non-Commercial" in dev.licence_name
    assert dev.backend == "local"
    assert dev.default_steps == 28
    assert dev.guidance_scale == 3.5
    assert dev.max_sequence_length == 512


def test_kontext_dev_shares_the_non_commercial_dev_licence() -> None:
    """kontext-dev is under the same non-commercial licence as dev, on the Kontext pipeline."""
    kontext = get_variant("kontext-dev")
    dev = get_variant("dev")
    assert kontext.commercial_use is False
    assert kontext.licence_id == dev.licence_id
    assert kontext.licence_name == dev.licence_name
    assert kontext.pipeline == "flux-kontext"
    assert kontext.backend == "local"


@pytest.mark.parametrize("name", ["pro", "pro-ultra"])
def test_pro_variants_run_on_the_api_and_allow_commercial_use(name: str) -> None:
    """pro and pro-ultra are API-only, commercially usable, and have no local weights."""
    variant = get_variant(name)
    assert variant.backend == "api"
    assert variant.commercial_use is True
    assert variant.hub_repo == ""
    assert variant.api_price_usd is not None
    assert variant.api_price_usd > 0


def test_pro_ultra_goes_up_to_2048_and_others_stay_below() -> None:
    """Only pro-ultra allows 2048-pixel sides; every other variant has a smaller maximum."""
    ultra = get_variant("pro-ultra")
    assert (ultra.max_width, ultra.max_height) == (2048, 2048)
    for name in ALL_VARIANTS:
        if name != "pro-ultra":
            variant = get_variant(name)
            assert variant.max_width < 2048
            assert variant.max_height < 2048


def test_commercial_use_follows_the_licence() -> None:
    """Exactly the dev-licensed variants forbid commercial use."""
    non_commercial = {v.name for v in VARIANTS.values() if not v.commercial_use}
    assert non_commercial == {"dev", "kontext-dev"}


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_limits_are_consistent(name: str) -> None:
    """Default steps lie within the step range, and the maximum sides are valid sides
    (multiples of the latent packing unit, at least the minimum side)."""
    variant = get_variant(name)
    assert 1 <= variant.min_steps <= variant.default_steps <= variant.max_steps
    for side in (variant.max_width, variant.max_height):
        assert side >= MIN_SIDE
        assert side % SIDE_MULTIPLE == 0
    if variant.backend == "local":
        assert variant.hub_repo.startswith("black-forest-labs/")


@pytest.mark.parametrize("name", ["flux-max", "", "Schnell", "schnell "])
def test_unknown_variant_lists_every_valid_choice(name: str) -> None:
    """An unknown name (including a wrong case or stray space) raises GenerationRequestError
    on field "variant", quoting the bad name and listing every valid variant."""
    with pytest.raises(GenerationRequestError) as caught:
        get_variant(name)
    error = caught.value
    assert error.field == "variant"
    assert repr(name) in error.detail
    for valid in ALL_VARIANTS:
        assert repr(valid) in error.detail
    assert error.to_dict()["error"] == "invalid_generation_request"
