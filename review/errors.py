from __future__ import annotations

from core.errors import InvalidInputError, UnavailableError


class PolicyInputError(InvalidInputError):
    """A request policy cannot judge (an empty or too long prompt, an unknown use); names
    the field."""

    code = "invalid_policy_input"


class RulesFileError(InvalidInputError):
    """A policy rule file that does not load or validate; the message names file and line."""

    code = "invalid_rules"


class EncoderUnavailableError(UnavailableError):
    """The sentence-embedding model of the semantic matcher cannot be loaded."""

    code = "encoder_unavailable"
