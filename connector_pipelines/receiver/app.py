"""The webhook receiver: verify each inbound call, store it in the inbox, answer. Nothing else.

Answers (DESIGN.md §3, ANCHORS.md §3.5):
- 2xx once stored (a re-delivery that the inbox already holds is also 2xx);
- 503 + Retry-After when it cannot store (BC and Jira retry, and BC keeps the subscription);
- 4xx only for a forgery (401), a malformed body (400) or an oversized one (413) — counted in
  ``cp_inbox_rejections`` and never stored as work.
Adding a source (D365 business events, Monday, Acumatica) = one ``Source`` with its verifier and
dedupe keys, registered in ``create_app``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from connector_pipelines.core.inbox import Inbox
from connector_pipelines.receiver.verify import same_secret, valid_app_jwt, valid_hub_signature

log = logging.getLogger("connector_pipelines.receiver")

MAX_VALIDATION_TOKEN = 1024


@dataclass(frozen=True)
class ReceiverSettings:
    bc_client_state: str | None = None
    jira_app_client_secret: str | None = None
    jira_admin_webhook_secret: str | None = None
    max_body_bytes: int = 1_000_000

    @classmethod
    def from_env(cls) -> ReceiverSettings:
        return cls(bc_client_state=os.environ.get("CONNECTOR_BC_CLIENT_STATE"),
                   jira_app_client_secret=os.environ.get("CONNECTOR_JIRA_CLIENT_SECRET"),
                   jira_admin_webhook_secret=os.environ.get("CONNECTOR_JIRA_WEBHOOK_SECRET"),
                   max_body_bytes=int(os.environ.get("CONNECTOR_RECEIVER_MAX_BODY_BYTES", "1000000")))

    def __repr__(self) -> str:  # never print the secrets
        return f"ReceiverSettings(max_body_bytes={self.max_body_bytes})"


class Rejection(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Source:
    """One inbound source: where it posts, how it proves itself, and how its deliveries dedupe."""

    name: str
    path: str
    # (request headers, raw body, parsed JSON) -> list of (dedupe key, payload) to store; raises Rejection
    accept: Callable[[Any, bytes, Any], list[tuple[str, dict[str, Any]]]]
    handshake: Callable[[Request], Response | None] | None = None


# -- Business Central -------------------------------------------------------------------------------
def bc_handshake(request: Request) -> Response | None:
    """BC's validation handshake: echo ``validationToken`` as plain text with 200."""
    token = request.query_params.get("validationToken")
    if token is None:
        return None
    if len(token) > MAX_VALIDATION_TOKEN:
        raise Rejection(400, "validation_token_too_long")
    return PlainTextResponse(token, 200)


def bc_accept(settings: ReceiverSettings):
    def accept(_headers: Any, _raw: bytes, body: Any) -> list[tuple[str, dict[str, Any]]]:
        entries = body.get("value") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise Rejection(400, "malformed_body")
        if not all(same_secret(e.get("clientState"), settings.bc_client_state) for e in entries):
            raise Rejection(401, "bad_client_state")
        out = []
        for e in entries:
            if not e.get("subscriptionId") or not e.get("resource"):
                raise Rejection(400, "malformed_body")
            key = f"{e['subscriptionId']}|{e['resource']}|{e.get('lastModifiedDateTime', '')}|{e.get('changeType', '')}"
            out.append((key, {k: v for k, v in e.items() if k != "clientState"}))
        return out

    return accept


# -- Jira -------------------------------------------------------------------------------------------
def jira_accept(settings: ReceiverSettings):
    def accept(headers: Any, raw: bytes, body: Any) -> list[tuple[str, dict[str, Any]]]:
        if headers.get("authorization"):
            if not valid_app_jwt(headers.get("authorization"), settings.jira_app_client_secret):
                raise Rejection(401, "bad_signature")
            kind = "jwt"
        elif headers.get("x-hub-signature"):
            if not valid_hub_signature(headers.get("x-hub-signature"), settings.jira_admin_webhook_secret, raw):
                raise Rejection(401, "bad_signature")
            kind = "hmac"
        else:
            raise Rejection(401, "missing_signature")
        identifier = headers.get("x-atlassian-webhook-identifier")
        if not identifier or not isinstance(body, dict):
            raise Rejection(400, "malformed_body")
        return [(identifier, {"event": body, "signature_kind": kind,
                              "retry": headers.get("x-atlassian-webhook-retry", "0")})]

    return accept


def create_app(inbox: Inbox, settings: ReceiverSettings) -> Starlette:
    sources = [
        Source("business_central", "/webhooks/business-central", bc_accept(settings), bc_handshake),
        Source("jira", "/webhooks/jira", jira_accept(settings)),
    ]

    def reject(source: str, status: int, reason: str) -> Response:
        log.warning("rejected %s webhook: %s (%d)", source, reason, status)
        try:
            inbox.reject(source, reason, status)
        except SQLAlchemyError:
            log.exception("could not count a rejection")
        return JSONResponse({"error": reason}, status)

    async def read_limited(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise Rejection(413, "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise Rejection(413, "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def endpoint(source: Source):
        async def handle(request: Request) -> Response:
            try:
                if source.handshake is not None:
                    answer = source.handshake(request)
                    if answer is not None:
                        return answer
                if request.method != "POST":
                    return JSONResponse({"error": "method_not_allowed"}, 405)
                raw = await read_limited(request)
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise Rejection(400, "malformed_body") from None
                items = source.accept(request.headers, raw, body)
            except Rejection as r:
                return reject(source.name, r.status, r.reason)
            try:
                new = inbox.put_many(source.name, items)
            except (SQLAlchemyError, OSError):
                log.exception("inbox unavailable; asking %s to retry", source.name)
                return JSONResponse({"error": "inbox_unavailable"}, 503, headers={"Retry-After": "30"})
            return JSONResponse({"stored": new, "duplicates": len(items) - new}, 202)

        return handle

    async def healthz(_request: Request) -> Response:
        try:
            inbox.rejections("healthz")
        except SQLAlchemyError:
            return JSONResponse({"status": "degraded", "inbox": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "inbox": "ok"})

    routes = [Route(s.path, endpoint(s), methods=["GET", "POST"]) for s in sources]
    routes.append(Route("/healthz", healthz, methods=["GET"]))
    return Starlette(routes=routes)
