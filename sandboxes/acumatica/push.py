"""Push notifications of the Acumatica sandbox (API-FACTS §3, "Push notifications").

A destination (SM302000 in the product) has a URL, the Query it watches (a generic inquiry or built-in
definition name), the entity whose changes feed it, the fields its rows carry, and an optional Header Name /
Header Value pair sent as a shared secret (no HMAC). Each change of a watched record queues one notification:

    {"Query": ..., "CompanyId": tenant, "Id": <GUID of the data transaction>, "TimeStamp": <increasing long>,
     "Inserted": [row], "Deleted": [row], "AdditionalInfo": {}}

an insert has only an Inserted row, a delete only a Deleted row, an update both (old values in Deleted, new in
Inserted); rows are flat field -> value objects. An update that leaves every watched field as it was queues
nothing (the query's result did not change). UNCONFIRMED: the JSON spelling of date-times in rows (ISO 8601
here) and the TimeStamp's unit (a counter of 100-ns ticks of the sandbox clock here, always increasing).

``deliver`` POSTs the pending notifications (JSON, the secret header when set). 2xx: delivered. Otherwise the
notification stays queued and is retried on a later delivery, up to 5 attempts in all, then it is dropped and
counted. ``redeliver`` = N sends each notification N times (at-least-once delivery); ``reorder`` delivers the
pending ones newest first.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


@dataclass
class Destination:
    name: str
    url: str
    query: str
    entity: str
    fields: list[str]
    header_name: str | None = None
    header_value: str | None = None
    verify: bool | str = True


class PushQueue:
    def __init__(self, tenant: str, clock: Any):
        self.tenant = tenant
        self.clock = clock
        self.destinations: dict[str, Destination] = {}
        self.redeliver = 1
        self.reorder = False
        self.dropped_total = 0
        self.deliveries: list[dict[str, Any]] = []   # every POST made: url, body, status
        self._pending: list[dict[str, Any]] = []     # {dest, body, attempts}
        self._last_ts = 0
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()

    def add(self, dest: Destination) -> None:
        with self._lock:
            self.destinations[dest.name] = dest

    def _timestamp(self) -> int:
        ticks = int(self.clock.timestamp() * 10_000_000)
        self._last_ts = max(ticks, self._last_ts + 1)
        return self._last_ts

    def record_change(self, entity: str, old: dict[str, Any] | None, new: dict[str, Any] | None,
                      row: Any) -> None:
        """Queue a notification for each destination watching ``entity`` (``row(rec, fields)`` makes a row)."""
        with self._lock:
            for dest in self.destinations.values():
                if dest.entity != entity:
                    continue
                before = row(old, dest.fields) if old is not None else None
                after = row(new, dest.fields) if new is not None else None
                if before is not None and after is not None and before == after:
                    continue
                body = {"Query": dest.query, "CompanyId": self.tenant, "Id": str(uuid.uuid4()),
                        "TimeStamp": self._timestamp(), "Inserted": [after] if after is not None else [],
                        "Deleted": [before] if before is not None else [], "AdditionalInfo": {}}
                self._pending.append({"dest": dest.name, "body": body, "attempts": 0})

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def deliver(self) -> dict[str, int]:
        with self._deliver_lock:
            with self._lock:
                batch = list(self._pending)
                dests = dict(self.destinations)
                times = max(1, int(self.redeliver))
            if self.reorder:
                batch.reverse()
            summary = {"delivered": 0, "failed": 0, "dropped": 0, "posts": 0}
            done: set[int] = set()
            dropped: set[int] = set()
            clients: dict[Any, httpx.Client] = {}
            try:
                for item in batch:
                    dest = dests.get(item["dest"])
                    if dest is None:
                        dropped.add(id(item))
                        continue
                    http = clients.get(dest.verify)
                    if http is None:
                        http = clients[dest.verify] = httpx.Client(trust_env=False, timeout=30.0, verify=dest.verify)
                    headers = {"Content-Type": "application/json"}
                    if dest.header_name:
                        headers[dest.header_name] = dest.header_value or ""
                    ok = False
                    for _ in range(times):
                        status = self._post(http, dest.url, item["body"], headers)
                        summary["posts"] += 1
                        ok = status is not None and 200 <= status < 300
                        if not ok:
                            break
                    if ok:
                        summary["delivered"] += 1
                        done.add(id(item))
                    else:
                        item["attempts"] += 1
                        if item["attempts"] >= MAX_ATTEMPTS:
                            summary["dropped"] += 1
                            dropped.add(id(item))
                        else:
                            summary["failed"] += 1
            finally:
                for http in clients.values():
                    http.close()
            with self._lock:
                self._pending = [p for p in self._pending if id(p) not in done and id(p) not in dropped]
                self.dropped_total += summary["dropped"]
            return summary

    def _post(self, http: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]) -> int | None:
        try:
            status: int | None = http.post(url, content=json.dumps(body), headers=headers).status_code
        except httpx.HTTPError as exc:
            log.info("push notification to %s failed: %s", url, exc)
            status = None
        with self._lock:
            self.deliveries.append({"url": url, "body": body, "status": status})
        return status
