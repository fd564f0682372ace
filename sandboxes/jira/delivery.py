"""Webhook events and their delivery: an issue or comment event becomes one queued ``Delivery`` per
matching app (JWT-signed with the app's client secret) and per admin webhook (HMAC-signed), posted with
httpx by ``deliver_pending`` (retries, redelivery, dropped/duplicated deliveries as faults)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from sandboxes.jira.jql import parse_jql
from sandboxes.jira.model import Comment, DynamicWebhook, History, Issue, Site, _ms


@dataclass
class Delivery:
    identifier: str
    cloud_id: str
    url: str
    body: bytes
    event: str
    client_id: str | None = None          # dynamic (JWT-signed) delivery
    secret: str | None = None             # admin webhook secret (HMAC-signed)
    matched_webhook_ids: list[int] = field(default_factory=list)
    attempts: int = 0
    done: bool = False
    last_status: int | str | None = None


class DeliveryMixin:
    """Emits webhook events and delivers them."""

    max_delivery_attempts = 5
    # UNCONFIRMED in API-FACTS: which callback statuses Jira retries. Atlassian's webhook page lists
    # 408, 409, 425, 429 and 5xx as retried; transport errors are retried too.
    retry_delivery_statuses = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def _issue_payload(self, site: Site, issue: Issue) -> dict[str, Any]:
        base = site.url  # Jira's webhook payloads link to the site (REST v2 form), not to api.atlassian.com
        fields = {f: self._field_value(site, issue, f, base, webhook=True) for f in
                  ("summary", "status", "issuetype", "project", "description", "assignee", "reporter",
                   "labels", "resolution", "created", "updated")}
        fields.update({cf: self._field_value(site, issue, cf, base, webhook=True) for cf in site.custom_fields})
        return {"id": str(issue.id), "self": f"{site.url}/rest/api/2/issue/{issue.id}", "key": issue.key,
                "fields": fields}

    def _emit(self, site: Site, event: str, type_name: str | None, issue: Issue, actor: str,
              *, history: History | None = None, comment: Comment | None = None) -> None:
        now = self.clock.now()
        changelog = history.items if history is not None else None
        # Who gets the event first: the payload (the issue rendered, its ADF as text) is built only when a
        # webhook takes it, at the same moment, from the same state.
        # dynamic webhooks: one delivery per app (its single URL), listing the matched webhook ids.
        # UNCONFIRMED: the matchedWebhookIds field and one-delivery-per-app grouping.
        by_app: dict[str, list[DynamicWebhook]] = {}
        for w in site.webhooks.values():
            if w.expires <= now or event not in w.events:
                continue
            if not self._compile_jql(site, parse_jql(w.jql_filter))(issue):
                continue
            if event == "jira:issue_updated" and w.field_ids_filter and changelog and not any(
                    item.get("fieldId") in w.field_ids_filter for item in changelog):
                continue
            by_app.setdefault(w.client_id, []).append(w)
        admins = [a for a in site.admin_webhooks.values() if event in a.events and not (
            a.jql_filter and not self._compile_jql(site, parse_jql(a.jql_filter))(issue))]
        if not by_app and not admins:
            return
        payload: dict[str, Any] = {"timestamp": _ms(now), "webhookEvent": event}
        if type_name:
            payload["issue_event_type_name"] = type_name
        user = site.users.get(actor)
        payload["user"] = {"self": f"{site.url}/rest/api/2/user?accountId={actor}", "accountId": actor,
                           "displayName": user.display_name if user else actor, "active": True,
                           "accountType": "atlassian", "timeZone": "Etc/UTC"}
        payload["issue"] = self._issue_payload(site, issue)
        if history is not None:
            payload["changelog"] = {"id": history.id, "items": changelog}
        if comment is not None:
            payload["comment"] = self._render_comment(site, issue, comment, site.url)
        for client_id, hooks in by_app.items():
            body = dict(payload, matchedWebhookIds=[w.id for w in hooks])
            self._enqueue(Delivery(str(uuid.uuid4()), site.cloud_id, hooks[0].url, json.dumps(body).encode(),
                                   event, client_id=client_id, matched_webhook_ids=[w.id for w in hooks]))
        for a in admins:
            self._enqueue(Delivery(str(uuid.uuid4()), site.cloud_id, a.url, json.dumps(payload).encode(), event,
                                   secret=a.secret))

    def _enqueue(self, d: Delivery) -> None:
        self._deliveries[d.identifier] = d
        self._pending.append(d.identifier)

    @property
    def pending_deliveries(self) -> list[Delivery]:
        with self._lock:
            return [self._deliveries[i] for i in self._pending]

    def delivery_headers(self, d: Delivery, retry: int) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": d.identifier,
                   "X-Atlassian-Webhook-Retry": str(retry), "X-Atlassian-Webhook-Flow": "Primary",
                   "User-Agent": "Atlassian Webhook HTTP Client"}
        if d.client_id is not None:
            secret = self.app_secrets.get(d.client_id)
            if secret is not None:
                # UNCONFIRMED (API-FACTS §8): the claim set of the JWT on OAuth-app webhooks. Only the
                # signature (HS256 with the app's client secret) is sourced; iss/iat/exp are this sandbox's.
                iat = int(self.clock.timestamp())
                token = jwt.encode({"iss": d.client_id, "iat": iat, "exp": iat + 300}, secret, algorithm="HS256")
                headers["Authorization"] = f"Bearer {token}"
        elif d.secret is not None:
            digest = hmac.new(d.secret.encode(), d.body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature"] = f"sha256={digest}"
        return headers

    def _http(self) -> httpx.Client:
        if self._delivery_client is None:
            self._delivery_client = httpx.Client(transport=self._delivery_transport, timeout=10.0, trust_env=False)
        return self._delivery_client

    def _post(self, d: Delivery, retry: int) -> int | str:
        with self._lock:
            if self.faults.drop_deliveries_next > 0:
                self.faults.drop_deliveries_next -= 1
                self.delivery_log.append((d.url, d.identifier, "dropped"))
                return "dropped"
        headers = self.delivery_headers(d, retry)
        status: int | str
        copies = 2 if self.faults.duplicate_deliveries else 1
        for _ in range(copies):
            try:
                status = self._http().post(d.url, content=d.body, headers=headers).status_code
            except httpx.HTTPError as exc:
                status = f"error: {type(exc).__name__}"
            with self._lock:
                self.delivery_log.append((d.url, d.identifier, status))
        return status

    def deliver_pending(self) -> int:
        """Post every queued delivery once (synchronously); failed ones stay queued for a later call
        (up to ``max_delivery_attempts``). Returns how many were delivered with a 2xx."""
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        delivered = 0
        requeue = []
        for ident in batch:
            d = self._deliveries[ident]
            status = self._post(d, d.attempts)
            d.attempts += 1
            d.last_status = status
            if status == "dropped" or (isinstance(status, int) and 200 <= status < 300):
                d.done = True
                delivered += status != "dropped"
                continue
            retryable = not isinstance(status, int) or status in self.retry_delivery_statuses
            if retryable and d.attempts < self.max_delivery_attempts:
                requeue.append(ident)
        with self._lock:
            self._pending[:0] = requeue
        return delivered

    def redeliver(self, identifier: str) -> int | str:
        """Send a delivery again now: same identifier and body, retry count +1."""
        d = self._deliveries[identifier]
        status = self._post(d, d.attempts)
        d.attempts += 1
        d.last_status = status
        return status

    def start_auto_delivery(self, interval_s: float = 0.5) -> None:
        self._pump.start(interval_s)

    def stop_auto_delivery(self) -> None:
        self._pump.stop()

    def close(self) -> None:
        self.stop_auto_delivery()
        if self._delivery_client is not None:
            self._delivery_client.close()
            self._delivery_client = None
