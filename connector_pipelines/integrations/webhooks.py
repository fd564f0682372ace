"""Keep the vendors' webhooks alive: BC subscriptions (3-day expiry) and Jira dynamic webhooks (30 days).

Registration is reconciled against the vendor's own list first, so a restart never registers the
same hook twice (ANCHORS.md §4.7); what we hold is mirrored in ``cp_webhook_registrations``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector_pipelines.core.db import utcnow, webhook_registrations
from connector_pipelines.integrations.definition import IntegrationDefinition

BC_RENEW_WITHIN = timedelta(hours=36)
JIRA_REFRESH_WITHIN = timedelta(days=10)


def _parse(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    text = str(value).replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":  # +0000 -> +00:00
        text = text[:-2] + ":" + text[-2:]
    return datetime.fromisoformat(text)


def _remember(engine: Engine, system: str, resource: str, registration_id: str, expires: datetime | None,
              etag: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(webhook_registrations).where(webhook_registrations.c.system == system,
                                                            webhook_registrations.c.resource == resource))
        conn.execute(sa.insert(webhook_registrations).values(
            system=system, resource=resource, registration_id=str(registration_id),
            expires_at=expires.astimezone(UTC).replace(tzinfo=None) if expires else None, etag=etag,
            updated_at=utcnow()))


def registrations(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(webhook_registrations))]


def ensure_bc_subscriptions(integration: IntegrationDefinition, bc_resource: Any, engine: Engine,
                            now: datetime | None = None) -> list[dict[str, Any]]:
    """One subscription per webhook entity of the pair: create if missing, renew if expiring soon."""
    if not bc_resource.notification_url or not bc_resource.client_state:
        raise ValueError("Business Central subscriptions need notification_url and client_state "
                         "(CONNECTOR_RECEIVER_PUBLIC_URL and CONNECTOR_BC_CLIENT_STATE)")
    from connector_pipelines.systems.business_central.client import BusinessCentralClient

    client: BusinessCentralClient = bc_resource.client()
    now = now or datetime.now(UTC)
    company_id = client.company_id(integration.company)
    existing = client.list_subscriptions()
    results = []
    for entity in integration.entities:
        if not entity.webhook:
            continue
        resource = f"/api/v2.0/companies({company_id})/{entity.entity_set}"
        mine = [s for s in existing if s.get("resource") == resource
                and s.get("notificationUrl") == bc_resource.notification_url]
        if not mine:
            sub = client.create_subscription(bc_resource.notification_url, resource, bc_resource.client_state)
            action = "created"
        else:
            sub = mine[0]
            expires = _parse(sub.get("expirationDateTime"))
            if expires is None or expires - now < BC_RENEW_WITHIN:
                sub = client.renew_subscription(sub["subscriptionId"], sub.get("@odata.etag", "*"))
                action = "renewed"
            else:
                action = "kept"
        expires = _parse(sub.get("expirationDateTime"))
        _remember(engine, "business_central", resource, sub["subscriptionId"], expires, sub.get("@odata.etag"))
        results.append({"resource": resource, "subscription_id": sub["subscriptionId"], "action": action,
                        "expires": expires.isoformat() if expires else None})
    return results


def jira_webhook_filter(integration: IntegrationDefinition) -> str:
    # Dynamic webhooks cannot filter on our custom field (API-FACTS §4.4): filter by project, check later.
    keys = integration.project_keys()
    return f"project = {keys[0]}" if len(keys) == 1 else f"project in ({', '.join(keys)})"


JIRA_EVENTS = ["jira:issue_updated", "comment_created"]


def ensure_jira_webhook(integration: IntegrationDefinition, jira_resource: Any, vault: Any, engine: Engine,
                        now: datetime | None = None) -> dict[str, Any]:
    if not jira_resource.webhook_url:
        raise ValueError("The Jira webhook needs webhook_url (CONNECTOR_RECEIVER_PUBLIC_URL)")
    jira = jira_resource.client(vault)
    now = now or datetime.now(UTC)
    jql = jira_webhook_filter(integration)
    ours = [w for w in jira.list_webhooks()
            if w.get("url", jira_resource.webhook_url) == jira_resource.webhook_url and w.get("jqlFilter") == jql]
    if not ours:
        webhook_id = jira.register_webhook(jira_resource.webhook_url, JIRA_EVENTS, jql)
        expires = _parse(next((w.get("expirationDate") for w in jira.list_webhooks()
                               if str(w.get("id")) == str(webhook_id)), None))
        action = "registered"
    else:
        webhook_id = ours[0]["id"]
        expires = _parse(ours[0].get("expirationDate"))
        if expires is None or expires - now < JIRA_REFRESH_WITHIN:
            expires = jira.refresh_webhooks([int(webhook_id)])
            action = "refreshed"
        else:
            action = "kept"
    _remember(engine, "jira", jql, str(webhook_id), expires, None)
    return {"webhook_id": webhook_id, "jql": jql, "action": action,
            "expires": expires.isoformat() if expires else None}
