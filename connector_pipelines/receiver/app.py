"""The webhook receiver: verify each inbound call, store it in the inbox, answer. Nothing else.

Answers (DESIGN.md §3, ANCHORS.md §3.5):
- 2xx once stored (a re-delivery that the inbox already holds is also 2xx);
- 503 + Retry-After when it cannot store, or cannot verify because its own secret is missing for BC
  (BC and Jira retry; BC deletes a subscription on any answer other than 408/429/5xx);
- 4xx only for a forgery or a replayed signature (401), a malformed body (400), an oversized one or too
  many entries (413) or a body that is not JSON by its Content-Type (415) — counted per source, reason,
  status and hour by ``Inbox.reject`` and never stored as work.

One delivery is one ``Inbox.put_many`` call: all its entries are stored in one transaction, or none.
Strings a database cannot hold (NUL, lone surrogates) in an authenticated body are stored escaped, not
refused. A signed Jira delivery (the JWT with its body, or the HMAC-signed body) is accepted for one
delivery identifier only: presented again with another identifier it is a replay (401); a forged body
under a captured token gets in only as a signal, which the resolution run checks against Jira's API.
Every database call runs in a worker thread, so a slow database never stalls the event loop
(``/healthz`` and refusals still answer).

Adding a source (F&O business events, Acumatica push notifications and monday.com are the newest) = one
``Source``: a ``verify(request, raw_body) -> Verified | Rejection | Response`` and a ``dedupe_keys(verified) ->
[(key, payload)]``, appended to ``sources()``; the generic endpoint does the content type, size limit, rejections,
storage and answers. A ``Response`` from ``verify`` is a handshake that needs the body (monday's challenge echo):
sent as it is, nothing stored, nothing counted. A ``Source.path`` may carry a path parameter (monday's
``/webhooks/monday/{secret}``), which ``verify`` reads from ``request.path_params``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from connector_pipelines.core.inbox import Inbox, Proof
from connector_pipelines.receiver.verify import (
    JWT_LEEWAY_S,
    JWT_MAX_AGE_S,
    MalformedJSON,
    bearer_token,
    escape_unstorable,
    jwt_valid_until,
    parse_json,
    same_secret,
    valid_app_jwt,
    valid_hub_signature,
    valid_monday_jwt,
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
ACUMATICA_SOURCE = "acumatica"
ACUMATICA_PATH = "/webhooks/acumatica"
ACUMATICA_SECRET_HEADER = "X-Connector-Secret"
MONDAY_SOURCE = "monday"
MONDAY_PATH = "/webhooks/monday"                    # app webhooks: Authorization: <JWT>
MONDAY_SECRET_PATH = "/webhooks/monday/{secret}"    # personal-token webhooks: the secret is the URL's last segment
MAX_EVENTS_PER_CALL = 1000
# BC sends at most 1,000 entries per subscription per 30 s window (a ``collection`` entry beyond,
# API-FACTS §2.3) but one POST can batch several subscriptions.
MAX_BC_ENTRIES_PER_CALL = 5000
REPLAY_WINDOW_S = 30 * 24 * 3600   # how long an HMAC-signed body (which carries no expiry) stays single-use

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
    acumatica_push_secret: str | None = None       # Header Value of the Acumatica push notification destination
    acumatica_push_secret_header: str = ACUMATICA_SECRET_HEADER
    monday_signing_secret: str | None = None       # the monday app's Signing Secret (app-webhook JWTs, HS256)
    monday_webhook_url: str | None = None          # public URL of /webhooks/monday: the JWT's required ``aud``
    monday_path_secret: str | None = None          # last path segment of personal-token webhook URLs
    max_body_bytes: int = 1_000_000
    max_bc_entries_per_call: int = MAX_BC_ENTRIES_PER_CALL
    jira_jwt_max_age_s: int = JWT_MAX_AGE_S         # a dynamic-webhook JWT older than this (by iat) is refused
    replay_window_s: int = REPLAY_WINDOW_S

    @classmethod
    def from_env(cls) -> ReceiverSettings:
        """CONNECTOR_BC_CLIENT_STATE, CONNECTOR_JIRA_CLIENT_SECRET, CONNECTOR_JIRA_WEBHOOK_SECRET,
        CONNECTOR_FO_EVENTS_SECRET, CONNECTOR_ACUMATICA_PUSH_SECRET, CONNECTOR_MONDAY_SIGNING_SECRET,
        CONNECTOR_MONDAY_PATH_SECRET (an empty value counts as unset), CONNECTOR_MONDAY_WEBHOOK_URL (else
        CONNECTOR_RECEIVER_PUBLIC_URL + ``/webhooks/monday``) and optionally CONNECTOR_FO_EVENTS_SECRET_HEADER, CONNECTOR_ACUMATICA_PUSH_SECRET_HEADER, CONNECTOR_RECEIVER_MAX_BODY_BYTES, CONNECTOR_RECEIVER_MAX_BC_ENTRIES,
        CONNECTOR_JIRA_JWT_MAX_AGE_S and CONNECTOR_REPLAY_WINDOW_S."""
        env = os.environ.get
        public = (env("CONNECTOR_RECEIVER_PUBLIC_URL") or "").strip().rstrip("/")
        return cls(bc_client_state=env("CONNECTOR_BC_CLIENT_STATE") or None,
                   jira_app_client_secret=env("CONNECTOR_JIRA_CLIENT_SECRET") or None,
                   jira_admin_webhook_secret=env("CONNECTOR_JIRA_WEBHOOK_SECRET") or None,
                   fo_events_secret=env("CONNECTOR_FO_EVENTS_SECRET") or None,
                   fo_events_secret_header=env("CONNECTOR_FO_EVENTS_SECRET_HEADER") or FO_SECRET_HEADER,
                   acumatica_push_secret=env("CONNECTOR_ACUMATICA_PUSH_SECRET") or None,
                   acumatica_push_secret_header=env("CONNECTOR_ACUMATICA_PUSH_SECRET_HEADER") or ACUMATICA_SECRET_HEADER,
                   monday_signing_secret=env("CONNECTOR_MONDAY_SIGNING_SECRET") or None,
                   monday_webhook_url=(env("CONNECTOR_MONDAY_WEBHOOK_URL") or "").strip()
                   or (public + MONDAY_PATH if public else None),
                   monday_path_secret=env("CONNECTOR_MONDAY_PATH_SECRET") or None,
                   max_body_bytes=int(env("CONNECTOR_RECEIVER_MAX_BODY_BYTES") or 1_000_000),
                   max_bc_entries_per_call=int(env("CONNECTOR_RECEIVER_MAX_BC_ENTRIES") or MAX_BC_ENTRIES_PER_CALL),
                   jira_jwt_max_age_s=int(env("CONNECTOR_JIRA_JWT_MAX_AGE_S") or JWT_MAX_AGE_S),
                   replay_window_s=int(env("CONNECTOR_REPLAY_WINDOW_S") or REPLAY_WINDOW_S))

    def __repr__(self) -> str:  # never print the secrets, only whether they are set
        return (f"ReceiverSettings(bc_client_state={'set' if self.bc_client_state else None}, "
                f"jira_app_client_secret={'set' if self.jira_app_client_secret else None}, "
                f"jira_admin_webhook_secret={'set' if self.jira_admin_webhook_secret else None}, "
                f"fo_events_secret={'set' if self.fo_events_secret else None}, "
                f"fo_events_secret_header={self.fo_events_secret_header!r}, "
                f"acumatica_push_secret={'set' if self.acumatica_push_secret else None}, "
                f"acumatica_push_secret_header={self.acumatica_push_secret_header!r}, "
                f"monday_signing_secret={'set' if self.monday_signing_secret else None}, "
                f"monday_webhook_url={self.monday_webhook_url!r}, "
                f"monday_path_secret={'set' if self.monday_path_secret else None}, "
                f"max_body_bytes={self.max_body_bytes}, max_bc_entries_per_call={self.max_bc_entries_per_call}, "
                f"jira_jwt_max_age_s={self.jira_jwt_max_age_s}, replay_window_s={self.replay_window_s})")


@dataclass(frozen=True)
class Rejection:
    """A refused call: its HTTP status and a short category (never a secret or body content)."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verified:
    """A call whose sender is proven: the parsed body, facts the source took from the headers, and the
    signature to record as used (a source whose proof could be replayed for another delivery)."""

    body: Any
    facts: dict[str, Any] = field(default_factory=dict)
    proof: Proof | None = None


Items = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Source:
    """One inbound source: where it posts, how it proves itself, and how its deliveries dedupe."""

    name: str
    path: str
    verify: Callable[[Request, bytes], Verified | Rejection | Response]   # Response: a body handshake, nothing stored
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
        if len(entries) > settings.max_bc_entries_per_call:
            return Rejection(413, "too_many_entries")
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
        # What it proves is single-use (the Proof) for the body it came with: the same signed delivery under
        # another identifier is a replay. A JWT is remembered *with its body*: Jira's claim set is UNCONFIRMED
        # (API-FACTS §8), and if it carries nothing per delivery, two genuine deliveries in one second share a
        # token — refusing the second would lose it (Jira does not retry a 401). A known token with a new body
        # is therefore stored as a signal only; the resolution run acts on what Jira's API says, never on it.
        if headers.get("authorization"):
            claims = valid_app_jwt(headers.get("authorization"), settings.jira_app_client_secret,
                                   max_age_s=settings.jira_jwt_max_age_s)
            if claims is None:
                return Rejection(401, "bad_signature" if settings.jira_app_client_secret else "jwt_not_configured")
            kind, signed = "jwt", (bearer_token(headers.get("authorization")) or "").encode() + b"\n" + raw
            until = datetime.fromtimestamp(jwt_valid_until(claims, JWT_LEEWAY_S, settings.jira_jwt_max_age_s), UTC)
        elif headers.get("x-hub-signature"):
            if not valid_hub_signature(headers.get("x-hub-signature"), settings.jira_admin_webhook_secret, raw):
                return Rejection(401, "bad_signature" if settings.jira_admin_webhook_secret
                                 else "hmac_not_configured")
            kind, signed = "hmac", raw
            until = datetime.now(UTC) + timedelta(seconds=settings.replay_window_s)
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
        proof = Proof(f"{kind}:{hashlib.sha256(signed).hexdigest()}", identifier, until)
        return Verified(body, {"identifier": identifier, "signature_kind": kind,
                               "retry": int(retry) if retry.isdigit() else None}, proof)

    return verify


def jira_dedupe_keys(verified: Verified) -> Items:
    """X-Atlassian-Webhook-Identifier: unique within the site and unchanged across retries."""
    f = verified.facts
    return [(f["identifier"], {"event": verified.body, "signature_kind": f["signature_kind"], "retry": f["retry"]})]


# -- sources proven by a shared secret in a header (F&O business events, Acumatica push notifications) -------
def secret_header_json(request: Request, raw: bytes, secret: str | None, header: str) -> Any:
    """The parsed body of a call that carries ``secret`` in ``header`` (compared in constant time), or the
    Rejection: 503 + Retry-After when our own secret is missing (the sender retries: a misconfiguration, not a
    forgery), 401 for a missing or wrong secret, 400 for a body that is not JSON."""
    if not secret:
        return Rejection(503, "not_configured", {"Retry-After": RETRY_AFTER_S})
    if not same_secret(request.headers.get(header), secret):
        return Rejection(401, "bad_secret")
    try:
        return parse_json(raw)
    except MalformedJSON:
        return Rejection(400, "malformed_body")


# -- Dynamics 365 F&O business events (API-FACTS §1.4) ------------------------------------------------
def fo_verify(settings: ReceiverSettings) -> Callable[[Request, bytes], Verified | Rejection]:
    """The secret configured on F&O's HTTPS endpoint, in a header whose name is a setting (which headers
    F&O can send is UNCONFIRMED), compared in constant time; then each envelope must parse."""

    def verify(request: Request, raw: bytes) -> Verified | Rejection:
        # Unconfigured: a 503, so F&O retries and keeps the event in its Errors tab.
        body = secret_header_json(request, raw, settings.fo_events_secret, settings.fo_events_secret_header)
        if isinstance(body, Rejection):
            return body
        envelopes = body if isinstance(body, list) else [body]
        if not envelopes:
            return Rejection(400, "malformed_body")
        if len(envelopes) > MAX_EVENTS_PER_CALL:
            return Rejection(413, "too_many_entries")
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


# -- Acumatica push notifications (API-FACTS §3) ----------------------------------------------------------
def acumatica_verify(settings: ReceiverSettings) -> Callable[[Request, bytes], Verified | Rejection]:
    """The destination's Header Name / Header Value pair (a shared secret, no HMAC), compared in constant
    time; then the notification must have the documented shape (Query, Id, Inserted/Deleted arrays)."""

    def verify(request: Request, raw: bytes) -> Verified | Rejection:
        # Unconfigured: a 503, so Acumatica resends (up to 5 attempts).
        body = secret_header_json(request, raw, settings.acumatica_push_secret, settings.acumatica_push_secret_header)
        if isinstance(body, Rejection):
            return body
        if not isinstance(body, dict) or not isinstance(body.get("Query"), str) or not body["Query"] \
                or body.get("Id") in (None, "") or isinstance(body.get("Id"), dict | list):
            return Rejection(400, "malformed_body")
        inserted, deleted = body.get("Inserted") or [], body.get("Deleted") or []
        if not isinstance(inserted, list) or not isinstance(deleted, list):
            return Rejection(400, "malformed_body")
        rows = [*inserted, *deleted]
        if not all(isinstance(r, dict) for r in rows):
            return Rejection(400, "malformed_body")
        if len(rows) > MAX_EVENTS_PER_CALL:
            return Rejection(413, "too_many_entries")
        return Verified(body)

    return verify


def acumatica_dedupe_keys(verified: Verified) -> Items:
    """``Id`` ("the unique identifier of the data transaction") plus ``Query``: a resent notification is
    stored once; the notification as sent (it is a signal: the run re-reads the documents)."""
    body = verified.body
    return [(f"{body['Id']}|{body['Query']}", body)]


# -- monday.com board webhooks (API-FACTS §6.4) ----------------------------------------------------------
def _monday_challenge(body: Any) -> Response | Rejection | None:
    """``{"challenge": "<token>"}`` (sent once, when the webhook is created): answered 200 with the same JSON."""
    if not isinstance(body, dict) or "challenge" not in body or "event" in body:
        return None
    token = body["challenge"]
    if not isinstance(token, str) or len(token) > MAX_VALIDATION_TOKEN:
        return Rejection(400, "malformed_challenge")
    return JSONResponse({"challenge": token}, 200)


def _monday_event(body: Any) -> Verified | Rejection:
    """One ``{"event": {"type": ..., ...}}`` per call; stored whole."""
    event = body.get("event") if isinstance(body, dict) else None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]:
        return Rejection(400, "malformed_body")
    return Verified(body)


def monday_app_verify(settings: ReceiverSettings) -> Callable[[Request, bytes], Verified | Rejection | Response]:
    """App webhooks (created with an app's token): every event carries ``Authorization: <JWT>``, HS256 with the
    app's Signing Secret, ``exp`` not passed and ``aud`` equal to this endpoint's configured public URL.

    The challenge is echoed without a JWT: whether monday signs it is UNCONFIRMED (its docs say only that the
    endpoint must echo it), and the echo stores nothing. A captured JWT is not bound to the body (monday signs no
    body), so until its ``exp`` it could carry another body: events are signals only, the run re-reads the item
    through monday's API and acts on what that says, never on the event's values."""

    def verify(request: Request, raw: bytes) -> Verified | Rejection | Response:
        if not settings.monday_signing_secret or not settings.monday_webhook_url:
            # Our misconfiguration: a 503 fails the webhook's creation visibly, and monday retries events.
            return Rejection(503, "not_configured", {"Retry-After": RETRY_AFTER_S})
        try:
            body: Any = parse_json(raw)
        except MalformedJSON:
            body = MalformedJSON
        challenge = _monday_challenge(body)
        if challenge is not None:
            return challenge
        authorization = request.headers.get("authorization")
        if not authorization:
            return Rejection(401, "missing_signature")
        # The signature before the body's shape: an unsigned call learns nothing about what is accepted.
        if valid_monday_jwt(authorization, settings.monday_signing_secret, settings.monday_webhook_url) is None:
            return Rejection(401, "bad_signature")
        return _monday_event(body)

    return verify


def monday_personal_verify(settings: ReceiverSettings) -> Callable[[Request, bytes], Verified | Rejection | Response]:
    """Personal-token webhooks carry no JWT and no HMAC: the proof is the URL's last segment, which must equal
    ``monday_path_secret`` (constant time). A wrong or missing one is 401 (counted), the challenge included, so a
    webhook created with a wrong URL fails at creation. The secret is in no log line (the receiver logs no paths;
    uvicorn's access log is off) and never stored."""

    def verify(request: Request, raw: bytes) -> Verified | Rejection | Response:
        if not settings.monday_path_secret:
            return Rejection(503, "not_configured", {"Retry-After": RETRY_AFTER_S})
        if not same_secret(request.path_params.get("secret"), settings.monday_path_secret):
            return Rejection(401, "bad_secret")
        try:
            body = parse_json(raw)
        except MalformedJSON:
            return Rejection(400, "malformed_body")
        challenge = _monday_challenge(body)
        if challenge is not None:
            return challenge
        return _monday_event(body)

    return verify


def monday_dedupe_keys(verified: Verified) -> Items:
    """``triggerUuid`` (else ``originalTriggerUuid``, else a digest of the event), qualified by subscription,
    item and column: a re-delivered event (same body) is stored once, whatever the order. Whether monday's
    triggerUuid is unique per event or shared by the events of one trigger is UNCONFIRMED, hence the qualifiers.
    The whole body is stored: a signal only — the run re-reads the item through the API before acting."""
    event = verified.body["event"]
    trigger = event.get("triggerUuid") or event.get("originalTriggerUuid")
    if not isinstance(trigger, str | int) or isinstance(trigger, bool) or trigger == "":
        canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        trigger = "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    parts = [trigger, *(event.get(k) for k in ("subscriptionId", "pulseId", "columnId"))]
    return [("|".join("" if p is None else str(p) for p in parts), verified.body)]


def sources(settings: ReceiverSettings) -> list[Source]:
    """Every inbound source the receiver serves. A new one is one entry here."""
    return [
        Source(BC_SOURCE, BC_PATH, bc_verify(settings), bc_dedupe_keys, handshake=bc_handshake,
               methods=("GET", "POST")),
        Source(JIRA_SOURCE, JIRA_PATH, jira_verify(settings), jira_dedupe_keys),
        Source(FO_SOURCE, FO_PATH, fo_verify(settings), fo_dedupe_keys),
        Source(ACUMATICA_SOURCE, ACUMATICA_PATH, acumatica_verify(settings), acumatica_dedupe_keys),
        Source(MONDAY_SOURCE, MONDAY_PATH, monday_app_verify(settings), monday_dedupe_keys),
        Source(MONDAY_SOURCE, MONDAY_SECRET_PATH, monday_personal_verify(settings), monday_dedupe_keys),
    ]


def bounded_key(key: str) -> str:
    """Keys longer than the column (e.g. a collection resource with a long $filter) become a digest."""
    if len(key) <= MAX_DEDUPE_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, with any parameters (charset)."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class NoAnswer(Response):
    """The client has gone (it disconnected mid-body): there is no one to answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def _describe(exc: BaseException) -> str:
    """An exception without SQLAlchemy's statement parameters (which would carry the payload)."""
    return f"{type(exc).__name__}: {getattr(exc, 'orig', None) or type(exc).__name__}"


def create_app(inbox: Inbox, settings: ReceiverSettings) -> Starlette:
    for name, value in (("CONNECTOR_BC_CLIENT_STATE", settings.bc_client_state),
                        ("CONNECTOR_JIRA_CLIENT_SECRET", settings.jira_app_client_secret),
                        ("CONNECTOR_JIRA_WEBHOOK_SECRET", settings.jira_admin_webhook_secret),
                        ("CONNECTOR_FO_EVENTS_SECRET", settings.fo_events_secret),
                        ("CONNECTOR_ACUMATICA_PUSH_SECRET", settings.acumatica_push_secret),
                        ("CONNECTOR_MONDAY_SIGNING_SECRET", settings.monday_signing_secret),
                        ("CONNECTOR_MONDAY_WEBHOOK_URL (or CONNECTOR_RECEIVER_PUBLIC_URL)", settings.monday_webhook_url),
                        ("CONNECTOR_MONDAY_PATH_SECRET", settings.monday_path_secret)):
        if not value:
            log.warning("%s is not set: deliveries that need it will be refused", name)

    async def reject(request: Request, source: str, r: Rejection) -> Response:
        client = request.client.host if request.client else "-"
        log.warning("rejected %s webhook from %s: %s (%d)", source, client, r.reason, r.status)
        try:
            await run_in_threadpool(inbox.reject, source, r.reason, r.status)
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
                    return await reject(request, source.name, answer)
                if answer is not None:
                    return answer
            if request.method != "POST":
                return JSONResponse({"error": "method_not_allowed"}, 405, headers={"Allow": "POST"})
            if not is_json(request.headers.get("content-type")):
                return await reject(request, source.name, Rejection(415, "unsupported_media_type"))
            try:
                raw = await read_limited(request)
            except ClientDisconnect:
                log.info("%s webhook: the client disconnected before its body was read", source.name)
                return NoAnswer()
            if isinstance(raw, Rejection):
                return await reject(request, source.name, raw)
            verdict = source.verify(request, raw)
            if isinstance(verdict, Rejection):
                return await reject(request, source.name, verdict)
            if isinstance(verdict, Response):   # a handshake that needed the body: answered, nothing stored
                return verdict
            entries, escaped = escape_unstorable([[key, payload] for key, payload in source.dedupe_keys(verdict)])
            if escaped:
                log.warning("%s webhook carried NUL or lone surrogate characters: stored escaped", source.name)
            items = [(bounded_key(key), payload) for key, payload in entries]
            try:
                stored = await run_in_threadpool(inbox.put_many, source.name, items, verdict.proof)
            except (SQLAlchemyError, OSError) as exc:
                # One transaction: nothing of the delivery is stored, the sender's retry stores all of it.
                log.error("inbox unavailable; asking %s to retry: %s", source.name, _describe(exc))
                return JSONResponse({"error": "inbox_unavailable"}, 503, headers={"Retry-After": RETRY_AFTER_S})
            if stored.replayed:
                return await reject(request, source.name, Rejection(401, "replayed_signature"))
            return JSONResponse({"stored": stored.new, "duplicates": stored.duplicates}, 202)

        return handle

    def ping() -> None:
        with inbox.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").scalar_one()

    async def healthz(_request: Request) -> Response:
        try:
            await run_in_threadpool(ping)
        except (SQLAlchemyError, OSError) as exc:
            log.error("healthz: inbox unavailable: %s", _describe(exc))
            return JSONResponse({"status": "unavailable", "inbox": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "inbox": "ok"})

    routes = [Route(s.path, endpoint(s), methods=list(s.methods)) for s in sources(settings)]
    routes.append(Route("/healthz", healthz, methods=["GET"]))
    return Starlette(routes=routes)
