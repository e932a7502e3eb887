"""Property tests of prompt policy: the normaliser never raises and is idempotent on any
text (every plane of Unicode, control characters, long strings), and the engine, with the
packaged rules and the evaluation catalogue, either refuses a request with PolicyInputError
or decides allow, review or block; it raises nothing else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from review.errors import PolicyInputError
from review.normalise import normalise, normalise_with_spans
from review.policy import PolicyEngine
from review.rules import load_rules
from tests.review.conftest import licence
from tests.review.test_generalisation import load_catalogue

# Any code point but surrogates (a str holding one cannot be encoded, so no prompt has one).
ANY_CHARACTER = st.characters(codec="utf-8")
# Characters that the normaliser treats specially, to hit its corners often.
TRICKY = st.sampled_from(
    [
        *"aAbBmM0134579$@!#.,;:-_ '\t\n\r\x00\x07\x1b\x7f",
        "\u0435",  # Cyrillic e
        "\u0391",  # Greek capital alpha
        "\u0397",  # Greek capital eta
        "\u03b7",  # Greek small eta
        "\u200b",  # zero-width space
        "\u200d",  # zero-width joiner
        "\u00ad",  # soft hyphen
        "\ufeff",  # byte-order mark
        "\u0301",  # combining acute
        "\u00bd",  # one half
        "\uff21",  # fullwidth A
        "\u1e9e",  # capital sharp s
        "\u0130",  # capital I with dot
        "\ufb03",  # ffi ligature
        "\u2460",  # circled 1
        "\U0001f1e6",  # regional indicator A
        "\U0001d400",  # mathematical bold A
        "\u1d00",  # small capital A
        "\u0131",  # dotless i
        "\u2028",  # line separator
    ]
)
TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=60),
    st.text(st.one_of(TRICKY, ANY_CHARACTER), max_size=60),
    st.text(TRICKY, max_size=80),
)
LONG_TEXT = st.text(st.one_of(TRICKY, ANY_CHARACTER), min_size=2_000, max_size=6_000)


@hsettings(max_examples=3000, deadline=None)
@given(TEXT)
def test_normalise_never_raises_and_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert isinstance(once, str)
    assert normalise(once) == once


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LONG_TEXT)
def test_normalise_of_long_text_never_raises_and_is_idempotent(text: str) -> None:
    spans = normalise_with_spans(text)
    assert normalise(spans.text) == spans.text
    # The way back to the prompt holds for every word.
    for start, end in spans.words():
        spans.original(text, start, end)


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    """The packaged rules and the evaluation catalogue, without the sentence model."""
    return PolicyEngine.build(load_rules(), load_catalogue(), semantic=False)


PROMPTS = st.one_of(TEXT, st.text(st.one_of(TRICKY, ANY_CHARACTER), max_size=400))
VARIANTS = st.sampled_from(["schnell", "dev", "kontext-dev", "pro", "pro-ultra"])
USES = st.sampled_from(["commercial", "non-commercial", "", "Commercial", "resale"])
TENANTS = st.one_of(st.none(), st.text(max_size=10))


@hsettings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=PROMPTS, variant=VARIANTS, use=USES, tenant=TENANTS)
def test_policy_decides_or_refuses_with_policy_input_error(
    engine: PolicyEngine, prompt: str, variant: str, use: str, tenant: str | None
) -> None:
    refused: PolicyInputError | None = None
    try:
        decision = engine.check(
            prompt,
            licence=licence(variant),
            use=use,  # type: ignore[arg-type]  # wrong uses on purpose
            tenant=tenant,
        )
    except PolicyInputError as e:
        refused = e
    if refused is not None:
        assert refused.field in ("prompt", "use")
        return
    assert decision.decision in ("allow", "review", "block")
    for reason in decision.reasons:
        assert reason.decision in ("allow", "review", "block")
