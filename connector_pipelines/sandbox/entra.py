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
from urllib.parse import parse_qsl
from dataclasses import dataclass, field
from datetime import timedelta

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector_pipelines.sandbox.common import (Faults, FaultMiddleware, SandboxClock, default_rate_limit_response,
                                                default_server_error_response)


@dataclass
class _App:
    tenant: str
    client_id: str
    client_secret: str
    scopes: set[str] = field(default_factory=set)


def _aad_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    return JSONResponse({"error": error, "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
                                                              f"Correlation ID: {corr}",
                         "error_codes": [code], "timestamp": "", "trace_id": trace, "correlation_id": corr}, status)


class EntraSandbox:
    def __init__(self, clock: SandboxClock | None = None, faults: Faults | None = None) -> None:
        self.clock = clock or SandboxClock()
        self.faults = faults or Faults()
        self._key = secrets.token_bytes(32)
        self._apps: dict[tuple[str, str], _App] = {}
        self._revoked_before = 0.0
        self._lock = threading.Lock()
        self.tokens_issued = 0
        self.lifetime_range = (3600, 5400)
        routes = [
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self._openid, methods=["GET"]),
            Route("/common/discovery/instance", self._instance_discovery, methods=["GET"]),
        ]
        self.app = FaultMiddleware(Starlette(routes=routes), self.faults, default_rate_limit_response,
                                   default_server_error_response)

    def register_app(self, tenant: str, client_id: str, client_secret: str, allowed_scopes: list[str]) -> None:
        with self._lock:
            self._apps[(tenant, client_id)] = _App(tenant, client_id, client_secret, set(allowed_scopes))

    def revoke_all(self) -> None:
        """Every token issued so far stops validating (a revoked session, a rotated key)."""
        with self._lock:
            self._revoked_before = self.clock.timestamp() + 1e-6

    def validate(self, token: str, audience: str) -> dict | None:
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], audience=audience.rstrip("/"),
                                options={"verify_exp": False})
        except jwt.PyJWTError:
            return None
        now = self.clock.timestamp()
        if claims["exp"] <= now or claims["iat_precise"] < self._revoked_before:
            return None
        return claims

    async def _openid(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        base = str(request.base_url).rstrip("/")
        return JSONResponse({
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "issuer": f"{base}/{tenant}/v2.0", "tenant_region_scope": "EU",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        })

    async def _instance_discovery(self, request: Request) -> Response:
        return JSONResponse({"tenant_discovery_endpoint": request.query_params.get("authorization_endpoint", ""),
                             "api-version": "1.1", "metadata": []})

    async def _token(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        app = self._apps.get((tenant, form.get("client_id", "")))
        if app is None:
            return _aad_error(400, "unauthorized_client", 700016,
                              f"Application with identifier '{form.get('client_id', '')}' was not found in the "
                              f"directory '{tenant}'.")
        if not secrets.compare_digest(form.get("client_secret", ""), app.client_secret):
            return _aad_error(401, "invalid_client", 7000215,
                              "Invalid client secret provided. Ensure the secret being sent in the request is the "
                              "client secret value, not the client secret ID.")
        scope = (form.get("scope") or "").split()
        resource_scopes = [s for s in scope if s.endswith("/.default")]
        if len(resource_scopes) != 1 or resource_scopes[0] not in app.scopes:
            return _aad_error(400, "invalid_scope", 70011,
                              f"The provided request must include a 'scope' input parameter. The provided value for "
                              f"the input parameter 'scope' is not valid. The scope {' '.join(scope)} is not valid.")
        lifetime = random.randint(*self.lifetime_range)
        now = self.clock.timestamp()
        audience = resource_scopes[0][: -len("/.default")]
        token = jwt.encode({"aud": audience, "iss": f"https://sts.windows.net/{tenant}/", "tid": tenant,
                            "appid": app.client_id, "iat": int(now), "iat_precise": now, "nbf": int(now),
                            "exp": int(now + lifetime), "jti": uuid.uuid4().hex}, self._key, algorithm="HS256")
        with self._lock:
            self.tokens_issued += 1
        return JSONResponse({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                             "access_token": token})

    def advance(self, **kwargs: float) -> None:
        self.clock.advance(**kwargs)


__all__ = ["EntraSandbox", "timedelta"]
