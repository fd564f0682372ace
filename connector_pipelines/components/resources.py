"""One ConfigurableResource per external system, plus the project's own store.

Secrets (client secrets, BC clientState) are bound as ``dg.EnvVar`` in defs/resources.py, so run
storage holds only the variable's name; the Jira refresh token lives in the encrypted vault and is
decrypted at use time. Clients are cached per process so msal's token cache and HTTP connection
pools survive from one op to the next.
"""

from __future__ import annotations

import threading
from typing import Any

import dagster as dg
from pydantic import Field

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.core.ledger import Ledger
from connector_pipelines.core.vault import Vault

_cache: dict[tuple[Any, ...], Any] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple[Any, ...], build):
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def clear_client_cache() -> None:
    """Forget cached clients (tests that restart sandboxes on new ports)."""
    with _cache_lock:
        _cache.clear()


class ConnectorStore(dg.ConfigurableResource):
    """The project's tables (inbox, ledger, vault): CONNECTOR_DATABASE_URL, else SQLite under DAGSTER_HOME."""

    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None = environment default")

    def engine(self):
        return get_engine(self.database_url)

    def inbox(self) -> Inbox:
        return Inbox(self.engine())

    def ledger(self) -> Ledger:
        return Ledger(self.engine())

    def vault(self) -> Vault:
        return Vault.from_env(self.engine())


class BusinessCentralResource(dg.ConfigurableResource):
    """Business Central API v2.0 through Entra ID client credentials."""

    tenant_id: str
    environment: str
    client_id: str
    client_secret: str = Field(description="Bind as dg.EnvVar: never a literal", repr=False)
    api_url: str = "https://api.businesscentral.dynamics.com"
    authority_host: str = "https://login.microsoftonline.com"
    scope: str = "https://api.businesscentral.dynamics.com/.default"
    ca_bundle: str | None = Field(default=None, description="Extra CA bundle (PEM) for TLS to the IdP/API")
    web_client_url: str | None = Field(default=None, description="BC web client base, for links back to records")
    notification_url: str | None = Field(default=None, description="Public URL of the receiver's BC endpoint")
    client_state: str | None = Field(default=None, description="Shared secret BC echoes in notifications (EnvVar)",
                                     repr=False)

    def token_provider(self):
        """Entra ID client credentials for ``scope`` (what the client and `connector-pipelines ping` use)."""
        from connector_pipelines.systems.entra import EntraTokenProvider

        return EntraTokenProvider(self.tenant_id, self.client_id, self.client_secret, self.scope,
                                  authority_host=self.authority_host, ca_bundle=self.ca_bundle)

    def client(self):
        from connector_pipelines.systems.business_central.client import BusinessCentralClient

        key = ("bc", self.tenant_id, self.environment, self.client_id, self.api_url, self.authority_host)

        def build():
            return BusinessCentralClient.connect(self.api_url, self.tenant_id, self.environment,
                                                 self.token_provider())

        return _cached(key, build)


class FinanceOperationsResource(dg.ConfigurableResource):
    """Dynamics 365 F&O OData through Entra ID client credentials (scope: the environment URL + /.default).

    The legal entity (dataAreaId) an integration watches is part of its defs.yaml (``company``); the
    environment is per customer here.
    """

    tenant_id: str
    client_id: str
    client_secret: str = Field(description="Bind as dg.EnvVar: never a literal", repr=False)
    environment_url: str = Field(description="https://<env>.operations.dynamics.com (no /data)")
    scope: str | None = Field(default=None, description="Default: https://<environment host>/.default")
    authority_host: str = "https://login.microsoftonline.com"
    ca_bundle: str | None = Field(default=None, description="Extra CA bundle (PEM) for TLS to the IdP/API")

    def token_scope(self) -> str:
        from connector_pipelines.systems.finance_operations.client import FinanceOperationsClient

        return self.scope or FinanceOperationsClient.scope_for(self.environment_url)

    def token_provider(self):
        """Entra ID client credentials for ``token_scope()`` (what the client and `ping` use)."""
        from connector_pipelines.systems.entra import EntraTokenProvider

        return EntraTokenProvider(self.tenant_id, self.client_id, self.client_secret, self.token_scope(),
                                  authority_host=self.authority_host, ca_bundle=self.ca_bundle)

    def client(self):
        from connector_pipelines.systems.finance_operations.client import FinanceOperationsClient

        key = ("fo", self.tenant_id, self.client_id, self.environment_url, self.token_scope(), self.authority_host)

        def build():
            return FinanceOperationsClient.connect(self.environment_url.rstrip("/"), self.token_provider())

        return _cached(key, build)


class JiraResource(dg.ConfigurableResource):
    """Jira Cloud REST v3 as an OAuth 2.0 (3LO) app; the rotating refresh token lives in the vault."""

    client_id: str
    client_secret: str = Field(description="Bind as dg.EnvVar: never a literal", repr=False)
    site_url: str = Field(description="The Jira site this deployment writes to, e.g. https://acme.atlassian.net")
    auth_url: str = "https://auth.atlassian.com"
    api_url: str = "https://api.atlassian.com"
    credential_name: str = "atlassian:jira"
    webhook_url: str | None = Field(default=None, description="Public URL of the receiver's Jira endpoint")

    def token_provider(self, vault: Vault):
        from connector_pipelines.systems.atlassian.oauth import AtlassianTokenProvider

        key = ("atlassian", self.client_id, self.auth_url, self.credential_name, id(vault.engine))
        return _cached(key, lambda: AtlassianTokenProvider(vault, self.credential_name, self.client_id,
                                                           self.client_secret, self.auth_url))

    def client(self, vault: Vault):
        from connector_pipelines.systems.jira.client import JiraClient

        tokens = self.token_provider(vault)
        key = ("jira", self.client_id, self.api_url, self.site_url, self.credential_name, id(vault.engine))
        return _cached(key, lambda: JiraClient.connect(self.api_url, tokens.cloud_id(), self.site_url, tokens))


class MissingSetting(Exception):
    pass


def resources_from_env(for_dagster: bool = True) -> dict[str, dg.ConfigurableResource]:
    """The one place that maps environment variables to resources.

    ``for_dagster=True`` binds secrets and required settings as ``dg.EnvVar`` (run storage keeps only
    the names); ``False`` reads plain values for the CLI (``connector-pipelines ping``), which never
    persists them.
    """
    import os

    def required(name: str):
        if for_dagster:
            return dg.EnvVar(name)
        if not os.environ.get(name):
            raise MissingSetting(f"{name} is not set")
        return os.environ[name]

    def optional_secret(name: str):
        if not os.environ.get(name):
            return None
        return dg.EnvVar(name) if for_dagster else os.environ[name]

    def receiver(path: str) -> str | None:
        base = os.environ.get("CONNECTOR_RECEIVER_PUBLIC_URL")
        return f"{base.rstrip('/')}{path}" if base else None

    out: dict[str, dg.ConfigurableResource] = {
        "connector_store": ConnectorStore(database_url=os.environ.get("CONNECTOR_DATABASE_URL"))}
    builders = {
        "business_central": lambda: BusinessCentralResource(
            tenant_id=required("CONNECTOR_BC_TENANT_ID"),
            environment=required("CONNECTOR_BC_ENVIRONMENT"),
            client_id=required("CONNECTOR_BC_CLIENT_ID"),
            client_secret=required("CONNECTOR_BC_CLIENT_SECRET"),
            api_url=os.environ.get("CONNECTOR_BC_API_URL", "https://api.businesscentral.dynamics.com"),
            authority_host=os.environ.get("CONNECTOR_ENTRA_AUTHORITY_HOST", "https://login.microsoftonline.com"),
            ca_bundle=os.environ.get("CONNECTOR_CA_BUNDLE"),
            web_client_url=os.environ.get("CONNECTOR_BC_WEB_CLIENT_URL"),
            notification_url=receiver("/webhooks/business-central"),
            client_state=optional_secret("CONNECTOR_BC_CLIENT_STATE"),
        ),
        "finance_operations": lambda: FinanceOperationsResource(
            tenant_id=required("CONNECTOR_FO_TENANT_ID"),
            client_id=required("CONNECTOR_FO_CLIENT_ID"),
            client_secret=required("CONNECTOR_FO_CLIENT_SECRET"),
            environment_url=required("CONNECTOR_FO_ENVIRONMENT_URL"),
            scope=os.environ.get("CONNECTOR_FO_SCOPE") or None,
            authority_host=os.environ.get("CONNECTOR_ENTRA_AUTHORITY_HOST", "https://login.microsoftonline.com"),
            ca_bundle=os.environ.get("CONNECTOR_CA_BUNDLE"),
        ),
        "jira": lambda: JiraResource(
            client_id=required("CONNECTOR_JIRA_CLIENT_ID"),
            client_secret=required("CONNECTOR_JIRA_CLIENT_SECRET"),
            site_url=required("CONNECTOR_JIRA_SITE_URL"),
            auth_url=os.environ.get("CONNECTOR_ATLASSIAN_AUTH_URL", "https://auth.atlassian.com"),
            api_url=os.environ.get("CONNECTOR_ATLASSIAN_API_URL", "https://api.atlassian.com"),
            credential_name=os.environ.get("CONNECTOR_JIRA_CREDENTIAL", "atlassian:jira"),
            webhook_url=receiver("/webhooks/jira"),
        ),
    }
    for key, build in builders.items():
        try:
            out[key] = build()
        except MissingSetting:
            if for_dagster:
                raise
    return out
