"""Webhooks: tenants subscribe an endpoint to job events; each event is signed and delivered
at least once, with retries and exponential backoff, and every attempt is logged.

Why here: the event is a job's state change (pipeline's), addressed to a tenant, and the outbox
row must be written in the very transaction of that change, which `stages.set_state` owns;
`api` sits above `pipeline` and cannot be called from it.

The outbox: `enqueue` adds one `WebhookDelivery` per matching subscription inside the state
change's transaction. Nothing is sent there. `dispatch_due` (Celery beat, every
`webhooks.dispatch_every_s`) claims one due delivery at a time in a short transaction (pushing
its due time forward by a lease, with SKIP LOCKED on PostgreSQL so parallel dispatchers never
take the same row), sends it with no transaction open, and records the attempt in another short
transaction. A dispatcher that dies between the two leaves the delivery due again when the lease
runs out: at-least-once, so receivers deduplicate on the event id.

Signature (documented in README): header `Clearance-Signature: t=<unix seconds>,v1=<hex>`,
where hex = HMAC-SHA256(secret, f"{t}.{body}") over the exact body bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from audit import service as audit
from core.db import new_id, session_scope, utcnow
from core.errors import InvalidInputError, choices
from core.settings import Settings, WebhookSettings
from pipeline.errors import DeliveryNotFoundError, DeliveryPendingError, WebhookNotFoundError
from pipeline.models import (
    BLOCKED,
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    IN_REVIEW,
    REJECTED,
    RELEASED,
    Job,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)

# The job states that are events, and their names.
EVENT_OF_STATE = {
    RELEASED: "job.released",
    REJECTED: "job.rejected",
    BLOCKED: "job.blocked",
    IN_REVIEW: "job.in_review",
}
EVENTS = tuple(EVENT_OF_STATE.values())

SIGNATURE_HEADER = "Clearance-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
MIN_SECRET_LENGTH = 16
# Longest error text kept per attempt; a receiver's error page can be large.
MAX_ERROR_CHARS = 500
# What a delivery claimed by a dispatcher waits, beyond the request timeout, before it counts
# as abandoned and comes due again.
LEASE_MARGIN_S = 30.0


# --- signing -------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (a captured
    request cannot be replayed later)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return hmac.compare_digest(expected, parts.get("v1", ""))


def body_of(payload: dict[str, Any]) -> bytes:
    # Stable bytes for a stored payload, so a replay sends the very same body.
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


# --- subscriptions -------------------------------------------------------------------------


def validate_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            f"url must be an absolute http:// or https:// URL with a host, got {url!r}",
            field="url",
        )
    if parts.username or parts.password:
        raise InvalidInputError("url must not carry credentials; use the secret", field="url")
    return url.strip()


def validate_events(events: list[str]) -> list[str]:
    if not events:
        raise InvalidInputError(
            f"events must name at least one of {choices(EVENTS)}", field="events"
        )
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise InvalidInputError(
            f"unknown events {unknown}; valid: {choices(EVENTS)}", field="events"
        )
    return sorted(set(events), key=EVENTS.index)


def create_subscription(
    *,
    session: Session,
    tenant_id: str,
    url: str,
    events: list[str],
    actor: str,
    secret: str | None = None,
    description: str = "",
) -> WebhookSubscription:
    if secret is not None and len(secret) < MIN_SECRET_LENGTH:
        raise InvalidInputError(
            f"secret must be at least {MIN_SECRET_LENGTH} characters", field="secret"
        )
    subscription = WebhookSubscription(
        tenant_id=tenant_id,
        url=validate_url(url),
        events=validate_events(events),
        secret=secret or SECRET_PREFIX + secrets.token_urlsafe(32),
        description=description,
        created_by=actor,
        created_at=utcnow(),
    )
    session.add(subscription)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="webhook.created",
        subject=f"webhook:{subscription.id}",
        payload={"url": subscription.url, "events": subscription.events},
    )
    return subscription


def list_subscriptions(*, session: Session, tenant_id: str) -> list[WebhookSubscription]:
    query = (
        select(WebhookSubscription)
        .where(WebhookSubscription.tenant_id == tenant_id)
        .order_by(WebhookSubscription.created_at, WebhookSubscription.id)
    )
    return list(session.scalars(query))


def get_subscription(
    *, session: Session, tenant_id: str, subscription_id: str
) -> WebhookSubscription:
    found = session.get(WebhookSubscription, subscription_id)
    # Another tenant's subscription is reported as missing: its existence is not ours to tell.
    if found is None or found.tenant_id != tenant_id:
        raise WebhookNotFoundError(
            f"webhook {subscription_id!r} does not exist", field="webhook_id"
        )
    return found


def delete_subscription(
    *, session: Session, tenant_id: str, subscription_id: str, actor: str
) -> None:
    """Deletes the subscription with its delivery log; pending deliveries are not sent."""
    subscription = get_subscription(
        session=session, tenant_id=tenant_id, subscription_id=subscription_id
    )
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="webhook.deleted",
        subject=f"webhook:{subscription.id}",
        payload={"url": subscription.url, "events": subscription.events},
    )
    session.delete(subscription)
    session.flush()


# --- the outbox ----------------------------------------------------------------------------


def enqueue(
    *, session: Session, job: Job, previous: str, details: dict[str, Any]
) -> list[WebhookDelivery]:
    """Called by `stages.set_state` in the state change's transaction: one pending delivery per
    subscription of the job's tenant to this event. A state that is no event adds nothing."""
    event = EVENT_OF_STATE.get(job.state)
    if event is None or previous == job.state:
        return []
    subscriptions = [
        s
        for s in session.scalars(
            select(WebhookSubscription).where(WebhookSubscription.tenant_id == job.tenant_id)
        )
        if event in s.events
    ]
    now = utcnow()
    added = []
    for subscription in subscriptions:
        event_id = new_id()
        delivery = WebhookDelivery(
            subscription_id=subscription.id,
            event_id=event_id,
            tenant_id=job.tenant_id,
            event=event,
            job_id=job.id,
            state=DELIVERY_PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        delivery.payload = {
            "id": event_id,
            "type": event,
            "created_at": now.isoformat(),
            "data": {
                "job_id": job.id,
                "tenant_id": job.tenant_id,
                "project": job.project,
                "state": job.state,
                "previous_state": previous,
                "details": details,
            },
        }
        session.add(delivery)
        added.append(delivery)
    return added


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery, as plain data to send with no transaction open."""

    delivery_id: str
    url: str
    secret: str
    event: str
    event_id: str
    body: bytes
    attempt: int


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff(attempts: int, config: WebhookSettings) -> timedelta:
    """The wait after the `attempts`-th failed attempt: doubling from the base, capped."""
    seconds = min(config.backoff_cap_s, config.backoff_base_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=seconds)


def claim_next(*, session: Session, config: WebhookSettings, now: datetime) -> Outgoing | None:
    """The oldest due delivery, leased to this caller, or None when nothing is due."""
    query = (
        select(WebhookDelivery)
        .where(
            WebhookDelivery.state == DELIVERY_PENDING,
            WebhookDelivery.next_attempt_at.is_not(None),
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    delivery = session.scalars(query).first()
    if delivery is None:
        return None
    subscription = session.get(WebhookSubscription, delivery.subscription_id)
    assert subscription is not None  # deleting a subscription deletes its deliveries
    delivery.next_attempt_at = now + timedelta(seconds=config.request_timeout_s + LEASE_MARGIN_S)
    return Outgoing(
        delivery_id=delivery.id,
        url=subscription.url,
        secret=subscription.secret,
        event=delivery.event,
        event_id=delivery.event_id,
        body=body_of(delivery.payload),
        attempt=delivery.attempts + 1,
    )


def send(
    outgoing: Outgoing, *, timeout_s: float, client: httpx.Client | None = None
) -> AttemptResult:
    """One POST; never raises for the receiver's or the network's failures."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Clearance-Webhooks/1",
        SIGNATURE_HEADER: signature_header(outgoing.secret, int(time.time()), outgoing.body),
        "Clearance-Event": outgoing.event,
        "Clearance-Event-Id": outgoing.event_id,
        "Clearance-Delivery-Id": outgoing.delivery_id,
        "Clearance-Attempt": str(outgoing.attempt),
    }
    started = time.monotonic()
    try:
        if client is None:
            with httpx.Client(timeout=timeout_s, follow_redirects=False) as own:
                response = own.post(outgoing.url, content=outgoing.body, headers=headers)
        else:
            response = client.post(outgoing.url, content=outgoing.body, headers=headers)
    except httpx.HTTPError as e:
        elapsed = int((time.monotonic() - started) * 1000)
        return AttemptResult(None, f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS], elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    if 200 <= response.status_code < 300:
        return AttemptResult(response.status_code, None, elapsed)
    error = f"HTTP {response.status_code}: {response.text[:MAX_ERROR_CHARS]}"
    return AttemptResult(response.status_code, error[:MAX_ERROR_CHARS], elapsed)


def record(
    *,
    session: Session,
    outgoing: Outgoing,
    result: AttemptResult,
    config: WebhookSettings,
    now: datetime,
) -> WebhookDelivery | None:
    """Log the attempt and move the delivery on: delivered, due again after the backoff, or
    failed after `max_attempts`. None when the subscription was deleted meanwhile."""
    delivery = session.get(WebhookDelivery, outgoing.delivery_id, with_for_update=True)
    if delivery is None or delivery.state != DELIVERY_PENDING:
        return delivery
    delivery.attempts += 1
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            number=delivery.attempts,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            attempted_at=now,
        )
    )
    delivery.last_status_code, delivery.last_error = result.status_code, result.error
    if result.ok:
        delivery.state, delivery.next_attempt_at, delivery.finished_at = (
            DELIVERY_DELIVERED,
            None,
            now,
        )
    elif delivery.attempts >= config.max_attempts:
        delivery.state, delivery.next_attempt_at, delivery.finished_at = DELIVERY_FAILED, None, now
    else:
        delivery.next_attempt_at = now + backoff(delivery.attempts, config)
    return delivery


def dispatch_due(settings: Settings, *, now: datetime | None = None) -> int:
    """Send what is due, one delivery at a time, up to `batch_size`; returns how many were
    attempted. `now` is for tests that skip ahead past a backoff."""
    config = settings.webhooks
    sent = 0
    with httpx.Client(timeout=config.request_timeout_s, follow_redirects=False) as client:
        while sent < config.batch_size:
            moment = now or utcnow()
            with session_scope() as session:
                outgoing = claim_next(session=session, config=config, now=moment)
            if outgoing is None:
                break
            result = send(outgoing, timeout_s=config.request_timeout_s, client=client)
            with session_scope() as session:
                record(
                    session=session,
                    outgoing=outgoing,
                    result=result,
                    config=config,
                    now=now or utcnow(),
                )
            sent += 1
    return sent


# --- the delivery log ----------------------------------------------------------------------


def list_deliveries(
    *, session: Session, tenant_id: str, subscription_id: str, limit: int = 100
) -> list[WebhookDelivery]:
    get_subscription(session=session, tenant_id=tenant_id, subscription_id=subscription_id)
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.subscription_id == subscription_id)
        .options(selectinload(WebhookDelivery.attempt_log))
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def replay(*, session: Session, tenant_id: str, delivery_id: str, actor: str) -> WebhookDelivery:
    """A new delivery of the same event (same event id and body), due now. The original keeps
    its log; one still being retried is refused, it would be sent twice."""
    original = session.get(WebhookDelivery, delivery_id)
    if original is None or original.tenant_id != tenant_id:
        raise DeliveryNotFoundError(
            f"webhook delivery {delivery_id!r} does not exist", field="delivery_id"
        )
    if original.state == DELIVERY_PENDING:
        raise DeliveryPendingError(
            f"webhook delivery {delivery_id!r} is still pending (attempt {original.attempts}); "
            "replay a delivered or failed one",
            field="delivery_id",
        )
    now = utcnow()
    copy = WebhookDelivery(
        subscription_id=original.subscription_id,
        tenant_id=original.tenant_id,
        event_id=original.event_id,
        event=original.event,
        job_id=original.job_id,
        payload=original.payload,
        state=DELIVERY_PENDING,
        attempts=0,
        next_attempt_at=now,
        replay_of=original.id,
        created_at=now,
    )
    session.add(copy)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="webhook.replayed",
        subject=f"webhook:{original.subscription_id}",
        payload={"delivery_id": copy.id, "replay_of": original.id, "event_id": copy.event_id},
    )
    return copy
