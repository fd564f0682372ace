"""Signature checks for inbound webhooks, all in constant time (``hmac.compare_digest``)."""

from __future__ import annotations

import hashlib
import hmac

import jwt


def same_secret(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def valid_hub_signature(header: str | None, secret: str | None, raw_body: bytes) -> bool:
    """Jira admin webhooks: ``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``."""
    if not header or not secret or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.strip().encode(), expected.encode())


def valid_app_jwt(authorization: str | None, secret: str | None, leeway_s: int = 30) -> bool:
    """Jira dynamic (OAuth-app) webhooks: ``Authorization: Bearer <JWT HS256 signed with the app secret>``.

    Only the signature and ``exp`` are required: Atlassian's claim set is unconfirmed (API-FACTS §8),
    so no particular iss/aud is demanded. PyJWT compares the signature with ``hmac.compare_digest``.
    """
    if not authorization or not secret or not authorization.startswith("Bearer "):
        return False
    token = authorization[len("Bearer "):].strip()
    try:
        jwt.decode(token, secret, algorithms=["HS256"], leeway=leeway_s,
                   options={"require": ["exp"], "verify_aud": False})
    except jwt.PyJWTError:
        return False
    return True
