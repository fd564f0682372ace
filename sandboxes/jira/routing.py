"""HTTP plumbing: the request context (``_Ctx``), dispatch of ``/ex/jira/{cloudId}/rest/api/...`` to the
handler tables (v3 by the OpenAPI document, v2 by its own templates), request and response validation
against Atlassian's spec, bearer-token auth, accessible-resources, the fault/rate-limit answers and call
counting."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sandboxes.common import bearer_token, count_call
from sandboxes.jira.errors import JiraHttpError
from sandboxes.jira.model import DEFAULT_SCOPES, Site
from sandboxes.openapi import RequestValidationError, ResponseValidationError
from sandboxes.specs import load_json_spec

JIRA_SPEC = "jira-cloud-platform-swagger-v3.v3.json"
Handler = Callable[["_Ctx"], Response]


@dataclass
class _Ctx:
    request: Request
    site: Site
    claims: dict[str, Any]
    path: str                       # /rest/api/3/...
    template: str
    path_params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    base: str                       # {scheme}://{host}/ex/jira/{cloudId}

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def q_list(self, name: str) -> list[str]:
        return [part.strip() for v in self.query.get(name, []) for part in v.split(",") if part.strip()]

    @property
    def account_id(self) -> str:
        return str(self.claims.get("account_id") or "")

    @property
    def client_id(self) -> str:
        return str(self.claims.get("client_id") or "")


def jira_spec() -> dict[str, Any]:
    """Jira-OAS with ChangeDetails' from/to/fromString/toString nullable: the schema types them as plain
    strings, but the spec's own examples for getChangeLogs and getChangeLogsByIds answer ``"from": null``
    (a field set from empty). UNCONFIRMED there: a null fromString/toString (the examples show "")."""
    raw = load_json_spec(JIRA_SPEC)
    schemas = dict(raw["components"]["schemas"])
    change = schemas["ChangeDetails"] = dict(schemas["ChangeDetails"])
    change["properties"] = {k: dict(v, nullable=True) if k in ("from", "to", "fromString", "toString") else v
                            for k, v in change["properties"].items()}
    return {**raw, "components": {**raw["components"], "schemas": schemas}}


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")


class RoutingMixin:
    """Answers HTTP for JiraSandbox: auth, dispatch to ``self._handlers`` and ``self._v2_routes``,
    spec validation, fault answers."""

    # UNCONFIRMED: the exact 401 body from api.atlassian.com for a missing/expired bearer token. The gateway
    # answers in its own shape (not Jira's ErrorCollection); this one is what 3LO callers commonly report.
    unauthorized_body: ClassVar[dict[str, Any]] = {"code": 401, "message": "Unauthorized"}

    def _rate_limit_response(self, retry_after: str | None) -> Response:
        seconds = 1.0
        try:
            seconds = float(retry_after) if retry_after else 1.0
        except ValueError:
            pass
        reset = (self.clock.now() + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        headers = {"RateLimit-Reason": "jira-burst-based", "X-RateLimit-Limit": str(self.rate_limit),
                   "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
        if retry_after:
            headers["Retry-After"] = retry_after
        return JSONResponse({"errorMessages": ["Rate limit exceeded."], "errors": {}}, 429, headers)

    def _server_error_response(self, status: int, retry_after: str | None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after and status == 503 else {}
        return JSONResponse({"errorMessages": ["Service Unavailable"], "errors": {}}, status, headers)

    def _count(self, request: Request) -> None:
        path = request.url.path
        template = path
        m = re.match(r"^/ex/jira/[^/]+(/.*)$", path)
        if m:
            v2 = self._find_v2(request.method.lower(), m.group(1))
            op = None if v2 else self.spec.find_operation(request.method, m.group(1))
            template = "/ex/jira/{cloudId}" + (v2[0] if v2 else op.template if op else m.group(1))
        count_call(self, request, template)

    def _find_v2(self, method: str, path: str) -> tuple[str, dict[str, str], Handler] | None:
        path = path.rstrip("/")
        for m, template, regex, handler in self._v2_routes:
            match = regex.match(path)
            if m == method and match:
                return template, match.groupdict(), handler
        return None

    def _claims(self, request: Request) -> dict[str, Any] | None:
        token = bearer_token(request)
        return self.token_validator(token) if token else None

    def _unauthorized(self) -> Response:
        return JSONResponse(self.unauthorized_body, 401, {"WWW-Authenticate": 'Bearer realm="api.atlassian.com"'})

    def _site_ids_for(self, claims: dict[str, Any]) -> list[str]:
        allowed = claims.get("cloud_ids")
        return [c for c in self.sites if allowed is None or c in allowed]

    async def _accessible_resources(self, request: Request) -> Response:
        claims = self._claims(request)
        if claims is None:
            return self._unauthorized()
        with self._lock:
            scopes = list(claims.get("scopes") or DEFAULT_SCOPES)
            out = [{"id": s.cloud_id, "name": s.name, "url": s.url,
                    "scopes": [sc for sc in scopes if sc != "offline_access"],
                    "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png"}
                   for s in (self.sites[c] for c in self._site_ids_for(claims))]
        return JSONResponse(out)

    async def _dispatch(self, request: Request) -> Response:
        cloud_id = request.path_params["cloud_id"]
        path = "/" + request.path_params["rest"]
        method = request.method.lower()
        claims = self._claims(request)
        if claims is None:
            return self._unauthorized()
        raw = await request.body()
        with self._lock:
            site = self.sites.get(cloud_id)
            if site is None or cloud_id not in self._site_ids_for(claims):
                # UNCONFIRMED: the gateway's exact answer for a cloudId the token may not use.
                return JSONResponse({"errorMessages": ["Site not found or not accessible with this token."],
                                     "errors": {}}, 404)
            if path.rstrip("/") in ("/rest/api/3/search", "/rest/api/2/search"):
                return JSONResponse({"errorMessages": [
                    ("The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
                    "A full migration guideline is available at "
                    "https://developer.atlassian.com/changelog/#CHANGE-2046")], "errors": {}}, 410)
            v2 = self._find_v2(method, path) if path.startswith("/rest/api/2/") else None
            if v2 is not None:
                template, path_params, handler = v2
            else:
                # REST v2 serves the v3 paths beside them: a v2 path is judged by its v3 twin.
                probe = re.sub(r"^/rest/api/2/", "/rest/api/3/", path)
                op = self.spec.find_operation(method, probe)
                if op is None:
                    status = 405 if self.spec.path_exists(probe) else 404
                    return JSONResponse({"errorMessages": [f"null for uri: {request.url}"], "errors": {}}, status)
                template, path_params = op.template, op.path_params
                if probe != path or (op.method, op.template) not in self._handlers:
                    shown = op.template if probe == path else op.template.replace("/rest/api/3/", "/rest/api/2/", 1)
                    return JSONResponse({"errorMessages": [
                        f"The Jira sandbox does not implement {method.upper()} {shown}."], "errors": {}}, 501)
                handler = self._handlers[(op.method, op.template)]
            query: dict[str, list[str]] = {}
            for k, v in request.query_params.multi_items():
                query.setdefault(k, []).append(v)
            body: Any = None
            has_body = bool(raw.strip())
            if has_body:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    return JSONResponse({"errorMessages": [f"Unexpected character: {exc}"], "errors": {}}, 400)
            if v2 is None:
                try:
                    self.spec.validate_request(method, path, query, body, has_body=has_body)
                except RequestValidationError as exc:
                    return self._respond(method, path, 400,
                                         JiraHttpError(400, exc.messages, exc.field_errors).body())
            base = str(request.base_url).rstrip("/") + f"/ex/jira/{cloud_id}"
            ctx = _Ctx(request, site, claims, path, template, path_params, query, body, base)
            try:
                return handler(ctx)
            except JiraHttpError as exc:
                return self._respond(method, path, exc.status, exc.body())

    def _respond(self, method: str, path: str, status: int, body: Any = None,
                 headers: dict[str, str] | None = None) -> Response:
        if status == 204 or (body is None and status in (201, 202)):
            return Response(status_code=status, headers=headers)
        if self.validate_responses and not path.startswith("/rest/api/2/"):  # no v2 spec: see the _h2_ handlers
            op = self.spec.find_operation(method, path)
            documented = op is not None and (str(status) in op.spec.get("responses", {}))
            if documented or status < 400:
                try:
                    self.spec.validate_response(method, path, status, body)
                except ResponseValidationError as exc:
                    self.response_errors.append(str(exc))
                    raise
        return JSONResponse(body, status, headers)

    def _ok(self, ctx: _Ctx, status: int, body: Any = None) -> Response:
        return self._respond(ctx.request.method.lower(), ctx.path, status, body)
