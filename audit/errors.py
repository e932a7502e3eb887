from __future__ import annotations

from core.errors import ClearanceError, UnavailableError


class SigningKeyError(UnavailableError):
    """The audit signing key cannot be loaded: nothing can be checkpointed or exported."""

    code = "signing_key_unavailable"


class ExportInvalidError(ClearanceError):
    """An export or its manifest does not verify."""

    code = "export_invalid"
