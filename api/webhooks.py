"""HTTP routes of webhook subscriptions and their delivery log (role admin, the caller's
tenant only). Sending happens in `pipeline.webhooks`, from Celery beat."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from api.deps import PrincipalDep, ReadSessionDep
from api.errors import ERRORS
from api.schemas import WebhookDeliveryOut, WebhookIn, WebhookOut
from core.db import session_scope
from pipeline import webhooks
from pipeline.models import WebhookSubscription

router = APIRouter()


def hook_out(subscription: WebhookSubscription, *, with_secret: bool = False) -> WebhookOut:
    # Built field by field: validating from the row would copy its secret into every answer.
    return WebhookOut(
        id=subscription.id,
        url=subscription.url,
        events=subscription.events,
        description=subscription.description,
        created_by=subscription.created_by,
        created_at=subscription.created_at,
        secret=subscription.secret if with_secret else None,
    )


@router.post("/v1/webhooks", status_code=201, response_model=WebhookOut, responses=ERRORS)
def create_webhook(body: WebhookIn, principal: PrincipalDep) -> WebhookOut:
    """Subscribe an endpoint to job events. The response carries the signing secret; it is
    not shown again."""
    principal.require("admin")
    with session_scope() as session:
        subscription = webhooks.create_subscription(
            session=session,
            tenant_id=principal.tenant_id,
            url=body.url,
            events=body.events,
            secret=body.secret,
            description=body.description,
            actor=principal.actor,
        )
        return hook_out(subscription, with_secret=True)


@router.get("/v1/webhooks", response_model=list[WebhookOut], responses=ERRORS)
def list_webhooks(principal: PrincipalDep, session: ReadSessionDep) -> list[WebhookOut]:
    principal.require("admin")
    found = webhooks.list_subscriptions(session=session, tenant_id=principal.tenant_id)
    return [hook_out(s) for s in found]


@router.delete("/v1/webhooks/{webhook_id}", status_code=204, responses=ERRORS)
def delete_webhook(webhook_id: str, principal: PrincipalDep) -> Response:
    """Unsubscribe; the delivery log goes with it and pending deliveries are not sent."""
    principal.require("admin")
    with session_scope() as session:
        webhooks.delete_subscription(
            session=session,
            tenant_id=principal.tenant_id,
            subscription_id=webhook_id,
            actor=principal.actor,
        )
    return Response(status_code=204)


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    response_model=list[WebhookDeliveryOut],
    responses=ERRORS,
)
def list_webhook_deliveries(
    webhook_id: str,
    principal: PrincipalDep,
    session: ReadSessionDep,
    limit: int = Query(default=100, ge=1, le=500),
) -> list[WebhookDeliveryOut]:
    """The newest deliveries first, each with its attempts (status code or error)."""
    principal.require("admin")
    found = webhooks.list_deliveries(
        session=session, tenant_id=principal.tenant_id, subscription_id=webhook_id, limit=limit
    )
    return [WebhookDeliveryOut.model_validate(d) for d in found]


@router.post(
    "/v1/webhooks/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=WebhookDeliveryOut,
    responses=ERRORS,
)
def replay_webhook_delivery(delivery_id: str, principal: PrincipalDep) -> WebhookDeliveryOut:
    """Send a delivered or failed event again, as a new delivery with the same event id;
    409 while the original is still being retried."""
    principal.require("admin")
    with session_scope() as session:
        copy = webhooks.replay(
            session=session,
            tenant_id=principal.tenant_id,
            delivery_id=delivery_id,
            actor=principal.actor,
        )
        return WebhookDeliveryOut.model_validate(copy)
