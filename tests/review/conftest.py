"""Prompt policy fixtures: licences and a small catalogue written out as plain data (review
must not import generation, reference_index or pipeline), the packaged rules, and one engine
with the real model and automaton, built once for the whole run."""

from __future__ import annotations

import pytest

from review.policy import PolicyEngine
from review.rules import load_rules
from review.schemas import CatalogueEntry, PolicyRules, VariantLicence

COMMERCIAL_VARIANTS = ("schnell", "pro", "pro-ultra")
DEV_LICENCE_NAME = "FLUX.1 [dev] Non-Commercial License"

CATALOGUE = [
    CatalogueEntry(
        "mickey-mouse",
        "Mickey Mouse",
        "character",
        ("Mickey", "Steamboat Willie"),
        "cartoon mouse with large round black ears, red shorts with two white buttons, "
        "white gloves and big yellow shoes",
    ),
    CatalogueEntry(
        "pikachu",
        "Pikachu",
        "character",
        ("Pokemon",),
        "small yellow electric rodent with long black-tipped ears, red circular cheeks and a "
        "lightning-bolt shaped tail",
    ),
    CatalogueEntry(
        "sonic",
        "Sonic the Hedgehog",
        "character",
        ("Sonic",),
        "fast blue anthropomorphic hedgehog with green eyes, white gloves and red sneakers "
        "with a white strap",
    ),
    CatalogueEntry(
        "spider-man",
        "Spider-Man",
        "character",
        ("Spiderman", "Peter Parker"),
        "masked superhero in a red and blue suit covered in a black web pattern with a black "
        "spider emblem on the chest, shooting webs from the wrists",
    ),
    CatalogueEntry(
        "coca-cola",
        "Coca-Cola",
        "brand",
        ("Coke",),
        "red label with white flowing Spencerian script wordmark on a contour glass bottle",
    ),
    CatalogueEntry(
        "apple-logo",
        "Apple logo",
        "logo",
        ("Apple Inc", "iPhone"),
        "silhouette of an apple with a bite taken out of its right side, used on laptops and "
        "phones",
    ),
    CatalogueEntry(
        "mcdonalds",
        "McDonald's golden arches",
        "logo",
        ("McDonalds", "McDonald's"),
        "two golden yellow arches forming a letter M on a red background above a fast-food "
        "restaurant",
    ),
    CatalogueEntry(
        "taylor-swift",
        "Taylor Swift",
        "person",
        (),
        "famous blonde pop singer with red lipstick and straight bangs",
    ),
]


def licence(variant: str) -> VariantLicence:
    if variant in ("dev", "kontext-dev"):
        return VariantLicence(
            variant=variant,
            licence_id="flux-1-dev-non-commercial",
            licence_name=DEV_LICENCE_NAME,
            commercial_use=False,
            commercial_alternatives=COMMERCIAL_VARIANTS,
        )
    if variant in COMMERCIAL_VARIANTS:
        return VariantLicence(
            variant=variant,
            licence_id="apache-2.0" if variant == "schnell" else "bfl-api",
            licence_name="Apache License 2.0" if variant == "schnell" else "BFL API terms",
            commercial_use=True,
            commercial_alternatives=COMMERCIAL_VARIANTS,
        )
    raise AssertionError(variant)


SCHNELL = licence("schnell")


@pytest.fixture(scope="session")
def rules() -> PolicyRules:
    return load_rules()


@pytest.fixture(scope="session")
def engine(rules: PolicyRules) -> PolicyEngine:
    """The real thing: automaton, fuzzy index and the embedded descriptions."""
    return PolicyEngine.build(rules, CATALOGUE)
