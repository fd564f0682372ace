"""Microsoft Entra ID client credentials through msal (token cached, refreshed before expiry, once on 401)."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import msal
import requests

MICROSOFT_HOSTS = ("login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
                   "login.partner.microsoftonline.cn")
REFRESH_MARGIN_S = 300


class EntraAuthError(Exception):
    """Entra refused to issue a token; the message carries the AADSTS code, never the secret."""


class EntraTokenProvider:
    """Satisfies core.http.TokenProvider. msal is built lazily, at the first token request."""

    def __init__(self, tenant_id: str, client_id: str, client_secret: str, scope: str,
                 authority_host: str = "https://login.microsoftonline.com", ca_bundle: str | None = None) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.authority_host = authority_host.rstrip("/")
        self.ca_bundle = ca_bundle
        self._app: msal.ConfidentialClientApplication | None = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"EntraTokenProvider(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, scope={self.scope!r})"

    def _msal(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            session = requests.Session()
            session.trust_env = False  # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE must not override verify
            session.verify = self.ca_bundle or True
            microsoft = urlsplit(self.authority_host).hostname in MICROSOFT_HOSTS
            self._app = msal.ConfidentialClientApplication(
                self.client_id, client_credential=self._secret,
                authority=f"{self.authority_host}/{self.tenant_id}", http_client=session,
                instance_discovery=microsoft, validate_authority=microsoft, token_cache=msal.TokenCache())
        return self._app

    def get_token(self) -> str:
        with self._lock:
            if self._token and time.time() < self._expires_at - REFRESH_MARGIN_S:
                return self._token
            app = self._msal()
            result = app.acquire_token_for_client(scopes=[self.scope])
            if "access_token" not in result:
                raise EntraAuthError(f"Entra ID refused a token for {self.scope} "
                                     f"(tenant {self.tenant_id}, client {self.client_id}): "
                                     f"{result.get('error')}: {result.get('error_description', '').splitlines()[0]}")
            if result.get("token_source") != "cache":
                self.tokens_fetched += 1
            self._token = result["access_token"]
            self._expires_at = time.time() + float(result.get("expires_in", 3600))
            return self._token

    def invalidate(self, token: str) -> None:
        """The API refused ``token``: forget it (and msal's cached copy) so the next call fetches anew."""
        with self._lock:
            if token and token != self._token:
                return  # a sibling thread already replaced it
            self._token = None
            self._expires_at = 0.0
            self._app = None  # a fresh msal app has an empty cache: the next call asks Entra again
