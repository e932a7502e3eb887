"""Rule files: validated at load with errors naming the line; per-tenant overrides, the
locked child-safety rule, and the settings' extra terms merged in."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import PolicySettings
from review.errors import RulesFileError
from review.policy import PolicyEngine, rules_from_settings
from review.rules import DEFAULT_RULES_FILE, load_rules
from review.schemas import PolicyRules
from tests.review.conftest import CATALOGUE, SCHNELL

DEFAULT = DEFAULT_RULES_FILE.read_text(encoding="utf-8")

TENANTS = """
tenants:
  museum:
    allow_terms: [nude, nudity, child]
    allow_assets: [mickey-mouse]
    decisions: {category.gore: allow}
    block_terms: [moon landing]
    review_terms: [competitor]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def with_tenants(tmp_path: Path, tenants: str = TENANTS) -> PolicyRules:
    return load_rules(write(tmp_path, DEFAULT.replace("tenants: {}\n", tenants)))


def test_the_packaged_file_loads_and_is_versioned() -> None:
    rules = load_rules()
    assert rules.version.startswith("2025.06.1+")
    assert [c.id for c in rules.categories if c.locked] == [
        "category.child_safety",
        "category.child_abuse",
    ]
    # {1..17} expands to each age.
    assert "12 year old" in rules.term_sets["minor"]
    assert "17 yo" in rules.term_sets["minor"]
    assert "18 year old" not in rules.term_sets["minor"]


def test_the_version_follows_the_content(tmp_path: Path) -> None:
    """A comment changes nothing; a term does, even when `version` was not bumped."""
    same = load_rules(write(tmp_path, "# a comment\n" + DEFAULT)).version
    assert same == load_rules().version
    assert "[gore, gory," in DEFAULT
    changed = DEFAULT.replace("[gore, gory,", "[gore, gory, grisly,")
    assert load_rules(write(tmp_path, changed)).version != same


@pytest.mark.parametrize(
    ("edit", "needle", "message"),
    [
        pytest.param(
            (
                "    decision: review\n    detail: graphic gore",
                "    decision: maybe\n    detail: graphic gore",
            ),
            "decision: maybe",
            "categories[4].decision: Input should be 'allow', 'review' or 'block'",
            id="bad-decision",
        ),
        pytest.param(
            ("    terms: [gore]\n", "    terms: [gory_stuff]\n"),
            "terms: [gory_stuff]",
            "categories[4].terms[0]: no term set 'gory_stuff'",
            id="unknown-term-set",
        ),
        pytest.param(
            ("- id: category.gore", "- id: category.nudity"),
            "- id: category.nudity",
            "categories[4].id: duplicate rule id 'category.nudity'",
            id="duplicate-id",
        ),
        pytest.param(
            ("    min_features: 2\n", "    min_features: 2\n    colour: blue\n"),
            "colour: blue",
            "assets.description.colour: Extra inputs are not permitted",
            id="unknown-field",
        ),
        pytest.param(
            ("max_prompt_chars: 4000", "max_prompt_chars: 4000: 5"),
            "max_prompt_chars: 4000: 5",
            "not valid YAML: mapping values are not allowed here",
            id="broken-yaml",
        ),
        pytest.param(
            ("  - id: category.gore", "  - id: blocklist"),
            "- id: blocklist",
            "categories[4].id: rule id 'blocklist' is reserved",
            id="reserved-id",
        ),
    ],
)
def test_a_bad_rule_file_is_an_error_naming_the_line(
    tmp_path: Path, edit: tuple[str, str], needle: str, message: str
) -> None:
    old, new = edit
    assert old in DEFAULT
    text = DEFAULT.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(RulesFileError) as raised:
        load_rules(path)
    # The line of the needle from where the edit is on.
    line = text.count("\n", 0, text.index(needle, DEFAULT.index(old))) + 1
    assert f"{path}:{line}" in raised.value.detail
    assert message in raised.value.detail
    assert raised.value.to_dict()["field"] == "rules_file"


def test_a_missing_key_is_reported_where_its_mapping_is(tmp_path: Path) -> None:
    text = DEFAULT.replace("  other_kinds: review\n", "")
    with pytest.raises(RulesFileError, match=r":\d+: assets.other_kinds: Field required"):
        load_rules(write(tmp_path, text))


def test_no_tenant_can_override_a_locked_rule(tmp_path: Path) -> None:
    tenants = "tenants:\n  lax:\n    decisions: {category.child_safety: allow}\n"
    with pytest.raises(RulesFileError) as raised:
        with_tenants(tmp_path, tenants)
    assert "rule 'category.child_safety' is locked" in raised.value.detail
    # The file's last line is "tenants: {}"; the override is two lines below it.
    assert raised.value.to_dict()["line"] == DEFAULT.count("\n") + 2


def test_an_override_of_an_unknown_rule_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(RulesFileError, match=r"no rule 'category\.gor'; valid: .*'category\.gore'"):
        with_tenants(tmp_path, "tenants:\n  t:\n    decisions: {category.gor: allow}\n")


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RulesFileError, match="cannot read rule file"):
        load_rules(tmp_path / "nope.yaml")


def test_settings_name_the_file_and_add_terms(tmp_path: Path) -> None:
    """The path comes from settings; `blocklist` and `review_terms` still work, merged in."""
    path = write(tmp_path, DEFAULT.replace('version: "2025.06.1"', 'version: "custom-7"'))
    rules = rules_from_settings(
        PolicySettings(rules_file=path, blocklist=["forbidden ritual"], review_terms=["rally"])
    )
    assert rules.version.startswith("custom-7+")
    engine = PolicyEngine.build(rules)
    blocked = engine.check("a Forbidden  Ritual", licence=SCHNELL, use="commercial")
    assert (blocked.decision, blocked.reasons[0].rule) == ("block", "blocklist")
    assert blocked.reasons[0].matched == "Forbidden  Ritual"
    reviewed = engine.check("a rally", licence=SCHNELL, use="commercial")
    assert (reviewed.decision, reviewed.reasons[0].rule) == ("review", "review_terms")


# --- tenants ---------------------------------------------------------------------------------


def test_a_tenant_override_allows_a_term(tmp_path: Path) -> None:
    """The museum may show nudes: the reason stays, explained, but no longer decides."""
    engine = PolicyEngine.build(with_tenants(tmp_path))
    prompt = "an artistic nude figure study in charcoal"
    assert engine.check(prompt, licence=SCHNELL, use="commercial").decision == "review"
    decision = engine.check(prompt, licence=SCHNELL, use="commercial", tenant="museum")
    assert decision.decision == "allow"
    (reason,) = decision.reasons
    assert (reason.rule, reason.decision, reason.matched) == ("category.nudity", "allow", "nude")
    assert "tenant 'museum'" in reason.detail
    # Another tenant, or none, is not affected.
    other = engine.check(prompt, licence=SCHNELL, use="commercial", tenant="acme")
    assert other.decision == "review"


def test_a_tenant_override_changes_a_rule_and_adds_terms(tmp_path: Path) -> None:
    engine = PolicyEngine.build(with_tenants(tmp_path))

    def decide(prompt: str, tenant: str | None) -> str:
        return engine.check(prompt, licence=SCHNELL, use="commercial", tenant=tenant).decision

    assert decide("a zombie, gory", None) == "review"
    assert decide("a zombie, gory", "museum") == "allow"
    assert decide("the moon landing", "museum") == "block"
    assert decide("the moon landing", None) == "allow"
    assert decide("our competitor's shop", "museum") == "review"


def test_no_tenant_override_lifts_the_child_safety_rule(tmp_path: Path) -> None:
    """The museum may use "nude" and "child", but not together: the locked rule ignores
    overrides."""
    engine = PolicyEngine.build(with_tenants(tmp_path))
    decision = engine.check("a nude child", licence=SCHNELL, use="non-commercial", tenant="museum")
    assert decision.decision == "block"
    safety = [r for r in decision.reasons if r.rule == "category.child_safety"]
    assert [(r.decision, r.matched) for r in safety] == [("block", "child")]
    assert "'nude'" in safety[0].detail


def test_a_tenant_may_use_an_asset_of_its_own(tmp_path: Path) -> None:
    """allow_assets lifts the asset's name and misspellings for that tenant only."""
    engine = PolicyEngine.build(with_tenants(tmp_path), CATALOGUE, semantic=False)

    def decide(prompt: str, tenant: str | None) -> str:
        return engine.check(prompt, licence=SCHNELL, use="commercial", tenant=tenant).decision

    assert decide("Mickey Mouse at the beach", None) == "block"
    assert decide("Mickey Mouse at the beach", "museum") == "allow"
    assert decide("Mikey Mouse at the beach", "museum") == "allow"
    assert decide("Mickey Mouse and Pikachu", "museum") == "block"
