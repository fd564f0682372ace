"""Signature checks for inbound webhooks, every comparison in constant time (``hmac.compare_digest``).

Pure functions over strings and bytes: no Starlette, no database, so a new source's verifier is
a few lines here plus a ``Source`` in ``app.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import jwt

JWT_LEEWAY_S = 30


class MalformedJSON(ValueError):
    """The body is not JSON (or is too deeply nested to parse)."""


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MalformedJSON("malformed_body") from None


def same_secret(given: object, expected: str | None) -> bool:
    """A shared secret echoed in the payload (BC ``clientState``), compared in constant time."""
    if not isinstance(given, str) or not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def valid_hub_signature(header: str | None, secret: str | None, raw_body: bytes) -> bool:
    """Jira admin webhooks: ``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``.

    The HMAC is over the exact bytes received (never a re-serialised body). The hex digest is compared
    case-insensitively by lowering the header, then in constant time.
    """
    if not header or not secret:
        return False
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != "sha256" or not given:
        return False
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.lower().encode(), expected.encode())


def valid_app_jwt(authorization: str | None, secret: str | None, leeway_s: int = JWT_LEEWAY_S) -> bool:
    """Jira dynamic (OAuth-app) webhooks: ``Authorization: Bearer <JWT, HS256, the app's client secret>``.

    Checked: the HS256 signature (PyJWT compares it with ``hmac.compare_digest``), a required ``exp``
    (with ``leeway_s`` of clock skew), and ``nbf``/``iat`` when present. Not checked: ``iss``, ``aud``,
    ``qsh`` or any other claim — Atlassian's claim set for these tokens is UNCONFIRMED (API-FACTS §4.4,
    §8), so demanding one would refuse genuine deliveries. Only HS256 is accepted (no ``none``, no
    algorithm taken from the token header).
    """
    if not authorization or not secret:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        jwt.decode(token, secret, algorithms=["HS256"], leeway=leeway_s,
                   options={"require": ["exp"], "verify_aud": False, "verify_iss": False})
    except jwt.PyJWTError:
        return False
    return True
