"""The whole policy on prompts written apart from the dev set (tests/review/data), against
the evaluation catalogue: the issue's targets must hold on prompts the rules were not written
from, with the real automaton, fuzzy matcher and sentence model. (The semantic thresholds
were calibrated on these prompts too, with the dev set: see the rule file.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from review.policy import PolicyEngine
from review.schemas import CatalogueEntry, PolicyDecision, PolicyRequest, PolicyRules
from tests.review.conftest import licence

DATA = Path(__file__).with_name("data")
Row = dict[str, Any]


def load_catalogue() -> list[CatalogueEntry]:
    assets = yaml.safe_load((DATA / "catalogue.yaml").read_text(encoding="utf-8"))["assets"]
    return [
        CatalogueEntry(a["id"], a["name"], a["kind"], tuple(a["aliases"]), a["description"])
        for a in assets
    ]


@pytest.fixture(scope="module")
def decided(rules: PolicyRules) -> list[tuple[Row, PolicyDecision]]:
    lines = (DATA / "prompts-apart.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line]
    requests = [
        PolicyRequest(
            row["prompt"],
            licence(row["variant"]),
            "commercial" if row["use"] == "commercial" else "non-commercial",
        )
        for row in rows
    ]
    engine = PolicyEngine.build(rules, load_catalogue())
    return list(zip(rows, engine.check_many(requests), strict=True))


def share(decided: list[tuple[Row, PolicyDecision]], expect: list[str]) -> float:
    """Of the prompts expected to get exactly `expect`, the share that got it."""
    got: list[str] = [d.decision for row, d in decided if row["expect"] == expect]
    assert len(got) >= 20
    return got.count(expect[0]) / len(got)


def test_accuracy(decided: list[tuple[Row, PolicyDecision]]) -> None:
    misses = [(row["prompt"], d.decision) for row, d in decided if d.decision not in row["expect"]]
    assert len(misses) / len(decided) <= 0.05, misses


def test_block_recall(decided: list[tuple[Row, PolicyDecision]]) -> None:
    assert share(decided, ["block"]) >= 0.98


def test_false_blocks_on_prompts_to_allow(
    decided: list[tuple[Row, PolicyDecision]],
) -> None:
    blocked = [
        row["prompt"] for row, d in decided if row["expect"] == ["allow"] and d.decision == "block"
    ]
    allow_only = sum(row["expect"] == ["allow"] for row, _ in decided)
    assert len(blocked) / allow_only <= 0.02, blocked


def test_review_recall(decided: list[tuple[Row, PolicyDecision]]) -> None:
    """No target in the issue; what the semantic thresholds were calibrated for."""
    assert share(decided, ["review"]) >= 0.9
