"""Signature checks for inbound webhooks, every comparison in constant time (``hmac.compare_digest``).

Pure functions over strings and bytes: no Starlette, no database, so a new source's verifier is
a few lines here plus a ``Source`` in ``app.py``. ``escape_unstorable`` makes a parsed body storable
(no NUL, no lone surrogate) without refusing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Any

import jwt

JWT_LEEWAY_S = 30
JWT_MAX_AGE_S = 600
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # after json.loads, any surrogate left is a lone one


class MalformedJSON(ValueError):
    """The body is not JSON (or is too deeply nested to parse)."""


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MalformedJSON("malformed_body") from None


def escape_unstorable(value: Any) -> tuple[Any, bool]:
    """Every string of a parsed JSON value (keys and values, at any depth) with NUL and lone surrogates
    replaced by their visible escape text (the 6 characters ``\\u0000``, ``\\udc80``): PostgreSQL refuses
    NUL in text, SQLite and UTF-8 refuse lone surrogates. Containers are rewritten in place, without
    recursion (a body nested as deep as ``json.loads`` allows cannot exhaust the stack). Returns the
    value and whether anything was replaced."""
    changed = False

    def fix(v: Any) -> Any:
        nonlocal changed
        if isinstance(v, str) and _UNSTORABLE.search(v):
            changed = True
            return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", v)
        return v

    value = fix(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            pairs = [(fix(k), fix(v)) for k, v in node.items()]
            node.clear()
            node.update(pairs)
            stack.extend(v for _, v in pairs if isinstance(v, dict | list))
        elif isinstance(node, list):
            node[:] = [fix(v) for v in node]
            stack.extend(v for v in node if isinstance(v, dict | list))
    return value, changed


def same_secret(given: object, expected: str | None) -> bool:
    """A shared secret echoed in the payload (BC ``clientState``), compared in constant time."""
    if not isinstance(given, str) or not given or not expected:
        return False
    # surrogatepass: a lone surrogate in a forged value is a mismatch, not an encoding error
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


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


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None for any other scheme)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def valid_app_jwt(authorization: str | None, secret: str | None, leeway_s: int = JWT_LEEWAY_S,
                  max_age_s: int = JWT_MAX_AGE_S) -> dict[str, Any] | None:
    """Jira dynamic (OAuth-app) webhooks: ``Authorization: Bearer <JWT, HS256, the app's client secret>``.
    Returns the token's claims when it is valid, else None.

    Checked: the HS256 signature (PyJWT compares it with ``hmac.compare_digest``), a required ``exp``
    (with ``leeway_s`` of clock skew), ``nbf``/``iat`` when present, and the token's age: an ``iat``
    more than ``max_age_s`` (+ leeway) in the past is refused, and so is a token without ``iat`` whose
    ``exp`` lies more than ``max_age_s`` (+ leeway) ahead (an unbounded lifetime). Not checked: ``iss``,
    ``aud``, ``qsh``, ``sub``, ``jti`` (not even their types) or any other claim — Atlassian's claim set
    for these tokens is UNCONFIRMED (API-FACTS §4.4, §8), so demanding one would refuse genuine
    deliveries. Only HS256 is accepted (no ``none``, no algorithm taken from the token header).
    """
    token = bearer_token(authorization)
    if not token or not secret:
        return None
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=leeway_s,
                            options={"require": ["exp"], "verify_aud": False, "verify_iss": False,
                                     "verify_sub": False, "verify_jti": False})
    except jwt.PyJWTError:
        return None
    now = time.time()
    if "iat" in claims:
        if int(claims["iat"]) < now - max_age_s - leeway_s:
            return None
    elif int(claims["exp"]) > now + max_age_s + leeway_s:
        return None
    return claims


def jwt_valid_until(claims: dict[str, Any], leeway_s: int = JWT_LEEWAY_S, max_age_s: int = JWT_MAX_AGE_S) -> int:
    """The epoch second after which ``valid_app_jwt`` refuses the token anyway (its exp, or iat + max age
    when sooner, plus the leeway): how long a replay guard must remember it."""
    exp = int(claims["exp"])
    return (min(exp, int(claims["iat"]) + max_age_s) if "iat" in claims else exp) + leeway_s


def valid_monday_jwt(authorization: str | None, secret: str | None, audience: str | None,
                     leeway_s: int = JWT_LEEWAY_S) -> dict[str, Any] | None:
    """monday.com app webhooks: ``Authorization: <JWT>`` (raw; a ``Bearer`` prefix is tolerated), HS256 with the
    app's Signing Secret (API-FACTS §6.4). Returns the claims when valid, else None.

    Checked, as monday's docs ask: the HS256 signature (constant time, inside PyJWT), a required ``exp`` not passed
    (``leeway_s`` of clock skew) and a required ``aud`` equal to ``audience`` (the endpoint's public URL, exactly);
    ``nbf``/``iat`` when present. Not checked: ``accountId``, ``userId``, ``shortLivedToken`` (metadata, not proof).
    Only HS256 is accepted (no ``none``, no algorithm taken from the token header).
    """
    raw = (authorization or "").strip()
    token = bearer_token(raw) or raw
    if not token or not secret or not audience:
        return None
    try:
        return jwt.decode(token, secret, algorithms=["HS256"], audience=audience, leeway=leeway_s,
                          options={"require": ["exp", "aud"], "verify_iss": False, "verify_sub": False,
                                   "verify_jti": False})
    except jwt.PyJWTError:
        return None
