"""Microsoft Entra ID sandbox: the client-credentials token endpoint and the metadata msal reads.

Tokens are HS256 JWTs signed with a sandbox key: aud = the scope's resource, exp on the sandbox clock,
``expires_in`` random in 3600..5400 s (Entra's default lifetime is random between 60 and 90 minutes,
API-FACTS §0). Resource sandboxes call ``validate(token, audience)``.
"""

from __future__ import annotations

import random
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandboxes.common import (
    FaultMiddleware,
    Faults,
    SandboxClock,
    default_rate_limit_response,
    default_server_error_response,
)


@dataclass
class _App:
    tenant: str
    client_id: str
    client_secret: str
    scopes: set[str] = field(default_factory=set)


def _aad_error(status: int, error: str, code: int, description: str, now: datetime) -> JSONResponse:
    """Entra's OAuth error body: AADSTS code first, then trace/correlation ids and the timestamp."""
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    return JSONResponse({"error": error,
                         "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
                                              f"Correlation ID: {corr}\r\nTimestamp: {stamp}",
                         "error_codes": [code], "timestamp": stamp, "trace_id": trace, "correlation_id": corr,
                         "error_uri": f"https://login.microsoftonline.com/error?code={code}"}, status)


class EntraSandbox:
    """Client-credentials Entra ID on one tenant-aware Starlette app (serve it over TLS: msal refuses http).

    ``register_app(tenant, client_id, client_secret, allowed_scopes)`` creates an app registration;
    ``validate(token, audience)`` is what resource sandboxes call; ``revoke_all()`` invalidates every
    token issued so far; ``tokens_issued`` counts successful token responses.
    """

    def __init__(self, clock: SandboxClock | None = None, faults: Faults | None = None,
                 lifetime_range: tuple[int, int] = (3600, 5400)) -> None:
        self.clock = clock or SandboxClock()
        self.faults = faults or Faults()
        self._key = secrets.token_bytes(32)
        self._apps: dict[tuple[str, str], _App] = {}
        self._revoked_before = 0.0
        self._lock = threading.Lock()
        self.tokens_issued = 0
        self.token_requests = 0
        self.metadata_requests = 0
        # Entra's default access-token lifetime is random between 60 and 90 minutes (API-FACTS §0).
        self.lifetime_range = lifetime_range
        routes = [
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self._openid, methods=["GET"]),
            Route("/common/discovery/instance", self._instance_discovery, methods=["GET"]),
        ]
        self.app = FaultMiddleware(Starlette(routes=routes), self.faults, default_rate_limit_response,
                                   default_server_error_response)

    def register_app(self, tenant: str, client_id: str, client_secret: str, allowed_scopes: list[str]) -> None:
        with self._lock:
            self._apps[(tenant.lower(), client_id)] = _App(tenant, client_id, client_secret, set(allowed_scopes))

    def _tenant_known(self, tenant: str) -> bool:
        with self._lock:
            return any(t == tenant.lower() for t, _ in self._apps)

    def revoke_all(self) -> None:
        """Every token issued so far stops validating (a revoked session, a rotated key)."""
        with self._lock:
            self._revoked_before = self.clock.timestamp() + 1e-6

    def validate(self, token: str, audience: str) -> dict | None:
        """The token's claims if it is ours, for ``audience``, unexpired (sandbox clock) and not revoked."""
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], audience=audience.rstrip("/"),
                                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False})
        except jwt.PyJWTError:
            return None
        now = self.clock.timestamp()
        with self._lock:
            revoked_before = self._revoked_before
        if claims.get("exp", 0) <= now or claims.get("iat_precise", 0) < revoked_before:
            return None
        return claims

    def _unknown_tenant(self, tenant: str) -> JSONResponse:
        return _aad_error(400, "invalid_request", 90002,
                          f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                          "signing into the correct cloud.", self.clock.now())

    async def _openid(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        with self._lock:
            self.metadata_requests += 1
        if not self._tenant_known(tenant):
            return self._unknown_tenant(tenant)
        base = str(request.base_url).rstrip("/")
        return JSONResponse({
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
            "issuer": f"{base}/{tenant}/v2.0", "tenant_region_scope": "EU",
            "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
        })

    async def _instance_discovery(self, request: Request) -> Response:
        # Only reached if a client asks for instance discovery against this host (the product does not:
        # it turns discovery off for non-Microsoft authority hosts).
        return JSONResponse({"tenant_discovery_endpoint": request.query_params.get("authorization_endpoint", ""),
                             "api-version": "1.1", "metadata": []})

    async def _token(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        now_dt = self.clock.now()
        with self._lock:
            self.token_requests += 1
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        if not self._tenant_known(tenant):
            return self._unknown_tenant(tenant)
        if form.get("grant_type") != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.",
                              now_dt)
        with self._lock:
            app = self._apps.get((tenant.lower(), form.get("client_id", "")))
        if app is None:
            return _aad_error(400, "unauthorized_client", 700016,
                              f"Application with identifier '{form.get('client_id', '')}' was not found in the "
                              f"directory '{tenant}'. This can happen if the application has not been installed by "
                              "the administrator of the tenant or consented to by any user in the tenant.", now_dt)
        if not secrets.compare_digest(form.get("client_secret", "").encode(), app.client_secret.encode()):
            return _aad_error(401, "invalid_client", 7000215,
                              "Invalid client secret provided. Ensure the secret being sent in the request is the "
                              f"client secret value, not the client secret ID, for a secret added to app "
                              f"'{app.client_id}'.", now_dt)
        scope = (form.get("scope") or "").split()
        resource_scopes = [s for s in scope if s.endswith("/.default")]
        if len(resource_scopes) != 1 or resource_scopes[0] not in app.scopes:
            return _aad_error(400, "invalid_scope", 70011,
                              f"The provided request must include a 'scope' input parameter. The provided value for "
                              f"the input parameter 'scope' is not valid. The scope {' '.join(scope)} is not valid.",
                              now_dt)
        lifetime = random.randint(*self.lifetime_range)
        now = now_dt.timestamp()
        audience = resource_scopes[0][: -len("/.default")]
        token = jwt.encode({"aud": audience, "iss": f"https://sts.windows.net/{tenant}/", "tid": tenant,
                            "appid": app.client_id, "roles": ["API.ReadWrite.All"], "iat": int(now),
                            "iat_precise": now, "nbf": int(now), "exp": int(now + lifetime),
                            "jti": uuid.uuid4().hex}, self._key, algorithm="HS256")
        with self._lock:
            self.tokens_issued += 1
        return JSONResponse({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                             "access_token": token}, headers={"Cache-Control": "no-store, no-cache"})

    def advance(self, **kwargs: float) -> None:
        self.clock.advance(**kwargs)


__all__ = ["EntraSandbox"]
