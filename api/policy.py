"""HTTP route of prompt policy: ask what a prompt would get before submitting a job."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import PrincipalDep, ReadSessionDep, SettingsDep
from api.errors import ERRORS
from api.schemas import PolicyCheckIn, PolicyDecisionOut
from pipeline import policy
from pipeline.policy import PromptRequest

router = APIRouter()


@router.post("/v1/policy/check", response_model=PolicyDecisionOut, responses=ERRORS)
def check_policy(
    body: PolicyCheckIn, principal: PrincipalDep, session: ReadSessionDep, settings: SettingsDep
) -> PolicyDecisionOut:
    """The decision the prompt_check stage would make (allow | review | block) with every
    reason, under the caller's tenant's overrides. Nothing is stored."""
    decision = policy.check_prompt(
        PromptRequest(body.prompt, body.variant, body.use, principal.tenant_id),
        session=session,
        settings=settings,
    )
    return PolicyDecisionOut.model_validate(decision.to_dict())
