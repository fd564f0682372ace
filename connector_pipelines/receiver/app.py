"""The webhook receiver: verify each inbound call, store it in the inbox, answer. Nothing else.

Answers (DESIGN.md §3, ANCHORS.md §3.5):
- 2xx once stored (a re-delivery that the inbox already holds is also 2xx);
- 503 + Retry-After when it cannot store, or cannot verify because its own secret is missing for BC
  (BC and Jira retry; BC deletes a subscription on any answer other than 408/429/5xx);
- 4xx only for a forgery (401), a malformed body (400) or an oversized one (413) — counted in
  ``cp_inbox_rejections`` and never stored as work.

Adding a source (Monday, Acumatica next; F&O business events are one already) = one ``Source``: a ``verify(request,
raw_body) -> Verified | Rejection`` and a ``dedupe_keys(verified) -> [(key, payload)]``, appended to
``sources()``; the generic endpoint does the size limit, rejections, storage and answers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.verify import (
    MalformedJSON,
    parse_json,
    same_secret,
    valid_app_jwt,
    valid_hub_signature,
)
from connector_pipelines.systems.finance_operations.models import BusinessEvent

log = logging.getLogger("connector_pipelines.receiver")

BC_SOURCE = "business_central"
BC_PATH = "/webhooks/business-central"
JIRA_SOURCE = "jira"
JIRA_PATH = "/webhooks/jira"
FO_SOURCE = "finance_operations"
FO_PATH = "/webhooks/d365-business-events"
FO_SECRET_HEADER = "X-Connector-Secret"
MAX_EVENTS_PER_CALL = 1000

MAX_VALIDATION_TOKEN = 1024
MAX_DEDUPE_KEY = 512          # cp_inbox.dedupe_key is String(512)
RETRY_AFTER_S = "30"


@dataclass(frozen=True)
class ReceiverSettings:
    bc_client_state: str | None = None            # shared secret echoed by BC in every notification
    jira_app_client_secret: str | None = None     # verifies dynamic (OAuth-app) webhook JWTs
    jira_admin_webhook_secret: str | None = None  # verifies admin webhooks' X-Hub-Signature
    fo_events_secret: str | None = None           # shared secret of the F&O business-event endpoint
    fo_events_secret_header: str = FO_SECRET_HEADER
    max_body_bytes: int = 1_000_000

    @classmethod
    def from_env(cls) -> ReceiverSettings:
        """CONNECTOR_BC_CLIENT_STATE, CONNECTOR_JIRA_CLIENT_SECRET, CONNECTOR_JIRA_WEBHOOK_SECRET,
        CONNECTOR_FO_EVENTS_SECRET (an empty value counts as unset) and optionally
        CONNECTOR_FO_EVENTS_SECRET_HEADER and CONNECTOR_RECEIVER_MAX_BODY_BYTES."""
        return cls(bc_client_state=os.environ.get("CONNECTOR_BC_CLIENT_STATE") or None,
                   jira_app_client_secret=os.environ.get("CONNECTOR_JIRA_CLIENT_SECRET") or None,
                   jira_admin_webhook_secret=os.environ.get("CONNECTOR_JIRA_WEBHOOK_SECRET") or None,
                   fo_events_secret=os.environ.get("CONNECTOR_FO_EVENTS_SECRET") or None,
                   fo_events_secret_header=os.environ.get("CONNECTOR_FO_EVENTS_SECRET_HEADER") or FO_SECRET_HEADER,
                   max_body_bytes=int(os.environ.get("CONNECTOR_RECEIVER_MAX_BODY_BYTES") or 1_000_000))

    def __repr__(self) -> str:  # never print the secrets, only whether they are set
        return (f"ReceiverSettings(bc_client_state={'set' if self.bc_client_state else None}, "
                f"jira_app_client_secret={'set' if self.jira_app_client_secret else None}, "
                f"jira_admin_webhook_secret={'set' if self.jira_admin_webhook_secret else None}, "
                f"fo_events_secret={'set' if self.fo_events_secret else None}, "
                f"fo_events_secret_header={self.fo_events_secret_header!r}, "
                f"max_body_bytes={self.max_body_bytes})")


@dataclass(frozen=True)
class Rejection:
    """A refused call: its HTTP status and a short category (never a secret or body content)."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verified:
    """A call whose sender is proven: the parsed body plus facts the source took from the headers."""

    body: Any
    facts: dict[str, Any] = field(default_factory=dict)


Items = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Source:
    """One inbound source: where it posts, how it proves itself, and how its deliveries dedupe."""

    name: str
    path: str
    verify: Callable[[Request, bytes], Verified | Rejection]
    dedupe_keys: Callable[[Verified], Items]
    # Answers a call before the body is read (e.g. BC's validationToken echo); None = not a handshake.
    handshake: Callable[[Request], Response | Rejection | None] | None = None
    methods: tuple[str, ...] = ("POST",)


# -- Business Central (API-FACTS §2.3) ---------------------------------------------------------------
def bc_handshake(request: Request) -> Response | Rejection | None:
    """Validation handshake on create and renew: echo ``validationToken`` verbatim, 200, plain text."""
    token = request.query_params.get("validationToken")
    if token is None:
        return None
    if len(token) > MAX_VALIDATION_TOKEN:
        return Rejection(400, "validation_token_too_long")
    return PlainTextResponse(token, 200, headers={"X-Content-Type-Options": "nosniff"})


def bc_verify(settings: ReceiverSettings) -> Callable[[Request, bytes], Verified | Rejection]:
    def verify(_request: Request, raw: bytes) -> Verified | Rejection:
        if not settings.bc_client_state:
            # Not a forgery but our own misconfiguration: a 4xx would make BC delete the subscription,
            # a 503 keeps it (and its 36 h of retries) until the secret is configured.
            return Rejection(503, "not_configured", {"Retry-After": RETRY_AFTER_S})
        try:
            body = parse_json(raw)
        except MalformedJSON:
            return Rejection(400, "malformed_body")
        entries = body.get("value") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            return Rejection(400, "malformed_body")
        # Every entry must carry the secret (one POST can batch several subscriptions): one forged
        # entry refuses the whole call, and nothing of it is stored. Every entry is compared (no early
        # exit), so the answer's timing does not tell which entry failed.
        matches = [same_secret(e.get("clientState"), settings.bc_client_state) for e in entries]
        if not all(matches):
            return Rejection(401, "bad_client_state")
        for e in entries:
            if not isinstance(e.get("subscriptionId"), str) or not e["subscriptionId"] \
                    or not isinstance(e.get("resource"), str) or not e["resource"]:
                return Rejection(400, "malformed_body")
        return Verified(entries)

    return verify


def bc_dedupe_keys(verified: Verified) -> Items:
    """``{subscriptionId}|{resource}|{lastModifiedDateTime}|{changeType}`` per entry (collection too).

    The stored payload is the entry without ``clientState``: the secret never reaches the inbox, run
    config or logs (DESIGN.md §3 Auth).
    """
    out: Items = []
    for e in verified.body:
        key = f"{e['subscriptionId']}|{e['resource']}|{e.get('lastModifiedDateTime', '')}|{e.get('changeType', '')}"
        out.append((key, {k: v for k, v in e.items() if k != "clientState"}))
    return out


# -- Jira (API-FACTS §4.4, ANCHORS §3.1-3.2) ------------------------------------------------------------
def jira_verify(settings: ReceiverSettings) -> Callable[[Request, bytes], Verified | Rejection]:
    def verify(request: Request, raw: bytes) -> Verified | Rejection:
        headers = request.headers
        # The signature first, over the raw bytes: an unsigned call learns nothing about its body.
        if headers.get("authorization"):
            if not valid_app_jwt(headers.get("authorization"), settings.jira_app_client_secret):
                return Rejection(401, "bad_signature" if settings.jira_app_client_secret else "jwt_not_configured")
            kind = "jwt"
        elif headers.get("x-hub-signature"):
            if not valid_hub_signature(headers.get("x-hub-signature"), settings.jira_admin_webhook_secret, raw):
                return Rejection(401, "bad_signature" if settings.jira_admin_webhook_secret
                                 else "hmac_not_configured")
            kind = "hmac"
        else:
            return Rejection(401, "missing_signature")
        identifier = (headers.get("x-atlassian-webhook-identifier") or "").strip()
        if not identifier:
            return Rejection(400, "missing_identifier")
        try:
            body = parse_json(raw)
        except MalformedJSON:
            return Rejection(400, "malformed_body")
        if not isinstance(body, dict):
            return Rejection(400, "malformed_body")
        retry = (headers.get("x-atlassian-webhook-retry") or "").strip()
        return Verified(body, {"identifier": identifier, "signature_kind": kind,
                               "retry": int(retry) if retry.isdigit() else None})

    return verify


def jira_dedupe_keys(verified: Verified) -> Items:
    """X-Atlassian-Webhook-Identifier: unique within the site and unchanged across retries."""
    f = verified.facts
    return [(f["identifier"], {"event": verified.body, "signature_kind": f["signature_kind"], "retry": f["retry"]})]


# -- Dynamics 365 F&O business events (API-FACTS §1.4) ------------------------------------------------
def fo_verify(settings: ReceiverSettings) -> Callable[[Request, bytes], Verified | Rejection]:
    """The secret configured on F&O's HTTPS endpoint, in a header whose name is a setting (which headers
    F&O can send is UNCONFIRMED), compared in constant time; then each envelope must parse."""

    def verify(request: Request, raw: bytes) -> Verified | Rejection:
        if not settings.fo_events_secret:
            # Our misconfiguration, not a forgery: F&O retries and keeps the event in its Errors tab.
            return Rejection(503, "not_configured", {"Retry-After": RETRY_AFTER_S})
        if not same_secret(request.headers.get(settings.fo_events_secret_header), settings.fo_events_secret):
            return Rejection(401, "bad_secret")
        try:
            body = parse_json(raw)
        except MalformedJSON:
            return Rejection(400, "malformed_body")
        envelopes = body if isinstance(body, list) else [body]
        if not envelopes or len(envelopes) > MAX_EVENTS_PER_CALL:
            return Rejection(400, "malformed_body")
        for envelope in envelopes:
            try:
                BusinessEvent.parse(envelope)
            except ValueError:
                return Rejection(400, "malformed_body")
        return Verified(envelopes)

    return verify


def fo_dedupe_keys(verified: Verified) -> Items:
    """ControlNumber (DESIGN.md §3): a re-delivered or resent event is stored once; the envelope as sent."""
    return [(str(int(e["ControlNumber"])), e) for e in verified.body]


def sources(settings: ReceiverSettings) -> list[Source]:
    """Every inbound source the receiver serves. A new one is one entry here."""
    return [
        Source(BC_SOURCE, BC_PATH, bc_verify(settings), bc_dedupe_keys, handshake=bc_handshake,
               methods=("GET", "POST")),
        Source(JIRA_SOURCE, JIRA_PATH, jira_verify(settings), jira_dedupe_keys),
        Source(FO_SOURCE, FO_PATH, fo_verify(settings), fo_dedupe_keys),
    ]


def bounded_key(key: str) -> str:
    """Keys longer than the column (e.g. a collection resource with a long $filter) become a digest."""
    if len(key) <= MAX_DEDUPE_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _describe(exc: BaseException) -> str:
    """An exception without SQLAlchemy's statement parameters (which would carry the payload)."""
    return f"{type(exc).__name__}: {getattr(exc, 'orig', None) or type(exc).__name__}"


def create_app(inbox: Inbox, settings: ReceiverSettings) -> Starlette:
    for name, value in (("CONNECTOR_BC_CLIENT_STATE", settings.bc_client_state),
                        ("CONNECTOR_JIRA_CLIENT_SECRET", settings.jira_app_client_secret),
                        ("CONNECTOR_JIRA_WEBHOOK_SECRET", settings.jira_admin_webhook_secret),
                        ("CONNECTOR_FO_EVENTS_SECRET", settings.fo_events_secret)):
        if not value:
            log.warning("%s is not set: deliveries that need it will be refused", name)

    def reject(request: Request, source: str, r: Rejection) -> Response:
        client = request.client.host if request.client else "-"
        log.warning("rejected %s webhook from %s: %s (%d)", source, client, r.reason, r.status)
        try:
            inbox.reject(source, r.reason, r.status)
        except (SQLAlchemyError, OSError) as exc:
            log.error("could not count a %s rejection: %s", source, _describe(exc))
        return JSONResponse({"error": r.reason}, r.status, headers=r.headers or None)

    async def read_limited(request: Request) -> bytes | Rejection:
        """The body, refused with 413 as soon as it is known to exceed the limit (never all read first)."""
        declared = request.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            return Rejection(413, "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                return Rejection(413, "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def endpoint(source: Source):
        async def handle(request: Request) -> Response:
            if source.handshake is not None:
                answer = source.handshake(request)
                if isinstance(answer, Rejection):
                    return reject(request, source.name, answer)
                if answer is not None:
                    return answer
            if request.method != "POST":
                return JSONResponse({"error": "method_not_allowed"}, 405, headers={"Allow": "POST"})
            raw = await read_limited(request)
            if isinstance(raw, Rejection):
                return reject(request, source.name, raw)
            verdict = source.verify(request, raw)
            if isinstance(verdict, Rejection):
                return reject(request, source.name, verdict)
            items = [(bounded_key(key), payload) for key, payload in source.dedupe_keys(verdict)]
            try:
                new = inbox.put_many(source.name, items)
            except (SQLAlchemyError, OSError) as exc:
                # Entries stored before the failure dedupe on the sender's retry.
                log.error("inbox unavailable; asking %s to retry: %s", source.name, _describe(exc))
                return JSONResponse({"error": "inbox_unavailable"}, 503, headers={"Retry-After": RETRY_AFTER_S})
            return JSONResponse({"stored": new, "duplicates": len(items) - new}, 202)

        return handle

    async def healthz(_request: Request) -> Response:
        try:
            with inbox.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1").scalar_one()
        except (SQLAlchemyError, OSError) as exc:
            log.error("healthz: inbox unavailable: %s", _describe(exc))
            return JSONResponse({"status": "unavailable", "inbox": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "inbox": "ok"})

    routes = [Route(s.path, endpoint(s), methods=list(s.methods)) for s in sources(settings)]
    routes.append(Route("/healthz", healthz, methods=["GET"]))
    return Starlette(routes=routes)
