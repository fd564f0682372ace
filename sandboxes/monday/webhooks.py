"""Webhooks of the monday.com sandbox (API-FACTS §6.4; developer.monday.com/api-reference/reference/webhooks).

Subscriptions: ``create_webhook(board_id, url, event, config)``. On creation the sandbox POSTs ``{"challenge":
"<random>"}`` to the URL; the endpoint must answer 200 with the same JSON, else the mutation fails with
"Failed to communicate with URL provided." (UNCONFIRMED wording; code ``WebhookChallengeFailedException``,
invented). One subscription per board, event and config: a second identical one -> an error (UNCONFIRMED; the
brief's rule). ``delete_webhook(id)``, ``webhooks(board_id, app_webhooks_only)``.

Events emitted (each change, through the API or by a person in the UI):
- ``create_item`` -> ``{"event": {"app": "monday", "type": "create_pulse", "triggerTime", "subscriptionId",
  "userId", "originalTriggerUuid": null, "boardId", "pulseId", "pulseName", "groupId", "groupName",
  "groupColor", "isTopGroup", "columnValues": {col: value}, "triggerUuid"}}``
- ``change_column_value`` (any column), ``change_specific_column_value`` (config ``{"columnId"}``) and
  ``change_status_column_value`` (status columns; config ``{"columnId", "columnValue": {"index"}}`` filters) ->
  ``{"event": {"app": "monday", "type": "update_column_value", "triggerTime", "subscriptionId", "userId",
  "originalTriggerUuid": null, "boardId", "groupId", "pulseId", "pulseName", "columnId", "columnType",
  "columnTitle", "value", "previousValue", "changedAt", "isTopGroup", "triggerUuid"}}``; values as
  columns.webhook_value gives them (status ``{"label": {"index", "text", "style", "is_done"}, "post_id"}``).
- ``create_update`` -> type ``create_update`` with ``updateId``, ``body``, ``textBody``, ``replyId``.
- ``item_archived`` / ``item_deleted`` / ``item_moved_to_any_group`` -> types ``archive_pulse`` / ``delete_pulse``
  / ``move_pulse_into_group`` (UNCONFIRMED type strings).
Ids in payloads are numbers (board, pulse, user). The field names follow the support article's sample payloads
and monday.com/integrations/webhooks; UNCONFIRMED beyond those samples (``columnValues`` of create_pulse, the
create_update fields, the move/archive types).

Signing: a webhook created with an app token carries ``Authorization: <JWT>`` (raw, no ``Bearer``), HS256 with
``app_signing_secret``, claims ``accountId``, ``userId``, ``aud`` (the endpoint URL), ``iat``, ``exp`` (iat +
300 s, UNCONFIRMED lifetime) and ``shortLivedToken`` (an app token the sandbox accepts for 5 minutes). A webhook
created with a personal token carries no Authorization header and no HMAC.

Delivery (``deliver``): each due event is POSTed (JSON); 2xx = delivered. A failure is retried once a minute
(on the sandbox clock: advance it to make retries due; or ``deliver(retry_now=True)`` treats every pending event
as due) for 30 minutes after the first attempt (at most 31 attempts), then dropped.
``redeliver`` = N posts each event N times (at-least-once); ``reorder`` delivers the due ones newest first;
``faults.drop_webhooks_next`` = N loses the next N events (never posted).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from sandboxes.monday.columns import Column, webhook_value
from sandboxes.monday.errors import MondayError
from sandboxes.monday.model import Board, Item, Webhook, iso

log = logging.getLogger(__name__)

RETRY_EVERY_S = 60.0
RETRY_FOR_S = 30 * 60.0
MAX_ATTEMPTS = 31            # the first attempt and 30 retries, a minute apart
JWT_TTL_S = 300
CHALLENGE_FAILED = "Failed to communicate with URL provided."

COLUMN_EVENTS = ("change_column_value", "change_specific_column_value", "change_status_column_value")


@dataclass
class Delivery:
    webhook_id: str
    url: str
    body: dict[str, Any]
    token_kind: str
    account_id: str
    user_id: str
    created_at: float
    next_at: float
    first_attempt_at: float | None = None
    attempts: int = 0


def _num(x: str) -> Any:
    try:
        return int(x)
    except (TypeError, ValueError):
        return x


class WebhookHub:
    def __init__(self, sb: Any) -> None:
        self.sb = sb
        self.redeliver = 1
        self.reorder = False
        self.deliveries: list[dict[str, Any]] = []
        self.dropped_total = 0
        self._pending: list[Delivery] = []
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------------
    # HTTP
    # ---------------------------------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        transport = self.sb.delivery_transport
        return httpx.Client(transport=transport, timeout=10.0, trust_env=False)

    def _headers(self, kind: str, url: str, account_id: str, user_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "monday.com webhooks (sandbox)"}
        if kind == "app":
            iat = int(self.sb.clock.timestamp())
            short = self.sb._issue_short_lived_token(user_id, account_id)
            claims = {"accountId": _num(account_id), "userId": _num(user_id), "aud": url, "iat": iat,
                      "exp": iat + JWT_TTL_S, "shortLivedToken": short}
            headers["Authorization"] = jwt.encode(claims, self.sb.app_signing_secret, algorithm="HS256")
        return headers

    def challenge(self, url: str, kind: str, account_id: str, user_id: str) -> None:
        token = secrets.token_urlsafe(36)
        body = {"challenge": token}
        try:
            with self._client() as http:
                r = http.post(url, content=json.dumps(body), headers=self._headers(kind, url, account_id, user_id))
            ok = r.status_code == 200 and r.json() == body
            status: Any = r.status_code
        except (httpx.HTTPError, ValueError) as exc:
            ok, status = False, f"error: {type(exc).__name__}"
        with self._lock:
            self.deliveries.append({"url": url, "body": body, "status": status, "challenge": True})
        if not ok:
            raise MondayError(CHALLENGE_FAILED, "WebhookChallengeFailedException", error_data={"url": url})

    # ---------------------------------------------------------------------------------------------------
    # events
    # ---------------------------------------------------------------------------------------------------
    def _base(self, w: Webhook, event_type: str, user_id: str) -> dict[str, Any]:
        return {"app": "monday", "type": event_type, "triggerTime": iso(self.sb.clock.now()),
                "subscriptionId": _num(w.id), "userId": _num(user_id), "originalTriggerUuid": None,
                "boardId": _num(w.board_id)}

    def _queue(self, w: Webhook, event: dict[str, Any]) -> None:
        now = self.sb.clock.timestamp()
        event["triggerUuid"] = uuid.uuid4().hex
        self._pending.append(Delivery(w.id, w.url, {"event": event}, w.token_kind, w.account_id, w.user_id,
                                      now, now))

    def _hooks(self, board: Board, *events: str) -> list[Webhook]:
        hooks = self.sb.store.webhooks
        if not hooks:
            return []
        return [w for w in hooks.values() if w.board_id == board.id and w.event in events]

    def item_created(self, board: Board, item: Item, user_id: str) -> None:
        hooks = self._hooks(board, "create_item")
        if not hooks:
            return
        g = board.groups[item.group_id]
        top = next(iter(board.groups)) == g.id
        values = {cid: webhook_value(board.columns[cid], v) for cid, v in item.values.items()
                  if cid in board.columns}
        with self._lock:
            for w in hooks:
                ev = self._base(w, "create_pulse", user_id)
                ev.update({"pulseId": _num(item.id), "pulseName": item.name, "groupId": g.id, "groupName": g.title,
                           "groupColor": g.color, "isTopGroup": top, "columnValues": values})
                self._queue(w, ev)

    def column_changed(self, board: Board, item: Item, col: Column, old: Any, new: Any, user_id: str) -> None:
        hooks = self._hooks(board, *COLUMN_EVENTS)
        if not hooks:
            return
        top = next(iter(board.groups)) == item.group_id
        with self._lock:
            for w in hooks:
                cfg = w.config or {}
                if w.event == "change_specific_column_value" and cfg.get("columnId") != col.id:
                    continue
                if w.event == "change_status_column_value":
                    if col.type != "status" or (cfg.get("columnId") and cfg["columnId"] != col.id):
                        continue
                    want = (cfg.get("columnValue") or {}).get("index")
                    if want is not None and (new is None or int(want) != new["index"]):
                        continue
                ev = self._base(w, "update_column_value", user_id)
                ev.update({"groupId": item.group_id, "pulseId": _num(item.id), "pulseName": item.name,
                           "columnId": col.id, "columnType": "color" if col.type == "status" else col.type,
                           "columnTitle": col.title, "value": webhook_value(col, new),
                           "previousValue": webhook_value(col, old), "changedAt": self.sb.clock.timestamp(),
                           "isTopGroup": top})
                self._queue(w, ev)

    def update_created(self, board: Board, item: Item, update: Any, text_body: str, user_id: str) -> None:
        with self._lock:
            for w in self._hooks(board, "create_update"):
                ev = self._base(w, "create_update", user_id)
                ev.update({"pulseId": _num(item.id), "updateId": _num(update.id), "body": update.body,
                           "textBody": text_body, "replyId": None})
                self._queue(w, ev)

    def item_state(self, board: Board, item: Item, event: str, event_type: str, user_id: str,
                   extra: dict[str, Any] | None = None) -> None:
        with self._lock:
            for w in self._hooks(board, event):
                ev = self._base(w, event_type, user_id)
                ev.update({"pulseId": _num(item.id), "pulseName": item.name, "groupId": item.group_id})
                ev.update(extra or {})
                self._queue(w, ev)

    # ---------------------------------------------------------------------------------------------------
    # delivery
    # ---------------------------------------------------------------------------------------------------
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def deliver(self, retry_now: bool = False) -> dict[str, int]:
        summary = {"delivered": 0, "failed": 0, "dropped": 0, "posts": 0}
        with self._deliver_lock:
            now = self.sb.clock.timestamp()
            with self._lock:
                due = [d for d in self._pending if retry_now or d.next_at <= now]
                times = max(1, int(self.redeliver))
            if self.reorder:
                due.reverse()
            done: set[int] = set()
            if due:
                with self._client() as http:
                    for d in due:
                        hook = self.sb.store.webhooks.get(d.webhook_id)
                        faults = self.sb.faults
                        lost = faults.drop_webhooks_next > 0
                        if lost:
                            faults.drop_webhooks_next -= 1
                        if hook is None or lost:          # deleted since, or the drop fault
                            done.add(id(d))
                            summary["dropped"] += 1
                            continue
                        headers = self._headers(d.token_kind, d.url, d.account_id, d.user_id)
                        ok = False
                        for _ in range(times):
                            status = self._post(http, d, headers)
                            summary["posts"] += 1
                            ok = status is not None and 200 <= status < 300
                            if not ok:
                                break
                        d.attempts += 1
                        if d.first_attempt_at is None:
                            d.first_attempt_at = now
                        if ok:
                            summary["delivered"] += 1
                            done.add(id(d))
                        elif now - d.first_attempt_at >= RETRY_FOR_S or d.attempts >= MAX_ATTEMPTS:
                            summary["dropped"] += 1
                            done.add(id(d))
                        else:
                            summary["failed"] += 1
                            d.next_at = now + RETRY_EVERY_S
            with self._lock:
                self._pending = [d for d in self._pending if id(d) not in done]
                self.dropped_total += summary["dropped"]
        return summary

    def _post(self, http: httpx.Client, d: Delivery, headers: dict[str, str]) -> int | None:
        try:
            status: int | None = http.post(d.url, content=json.dumps(d.body), headers=headers).status_code
        except httpx.HTTPError as exc:
            log.info("monday webhook to %s failed: %s", d.url, exc)
            status = None
        with self._lock:
            self.deliveries.append({"url": d.url, "body": d.body, "status": status, "attempt": d.attempts + 1,
                                    "authorization": headers.get("Authorization")})
        return status
