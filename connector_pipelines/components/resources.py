"""One ConfigurableResource per external system, plus the project's own store.

Secrets (client secrets, BC clientState, the database URL with its password) are bound as
``dg.EnvVar`` in defs/resources.py, so run storage holds only the variable's name; the Jira refresh
token lives in the encrypted vault and is decrypted at use time.

Lifecycle (one client per run): a resource builds its client on first use inside a run and closes it
in ``teardown_after_execution``; nothing is cached at module level. The store starts the run's lease
and its heartbeat (core.leases): the record claims the run takes are renewed while it works, and the
watchdog sensor notices within minutes when the run's worker dies.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from connector_pipelines.core.db import get_engine
from connector_pipelines.core.failures import WriteSettings
from connector_pipelines.core.inbox import Inbox
from connector_pipelines.core.leases import RUN_SCOPE, Leases, new_owner
from connector_pipelines.core.ledger import Ledger
from connector_pipelines.core.vault import Vault


def _close(client: Any) -> None:
    """Close a client and the token provider it owns (its HTTP session)."""
    for thing in (client, getattr(getattr(client, "http", None), "auth", None)):
        close = getattr(thing, "close", None)
        if close is not None:
            close()


class ConnectorStore(dg.ConfigurableResource):
    """The project's tables (inbox, ledger, vault, leases): CONNECTOR_DATABASE_URL (bound as an EnvVar:
    the URL may carry a password), else SQLite under DAGSTER_HOME."""

    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None = environment default",
                                     repr=False)
    _leases: Leases | None = PrivateAttr(default=None)

    def engine(self):
        return get_engine(self.database_url or None)

    def inbox(self) -> Inbox:
        return Inbox(self.engine())

    def ledger(self) -> Ledger:
        return Ledger(self.engine())

    def vault(self) -> Vault:
        return Vault.from_env(self.engine())

    def write_settings(self) -> WriteSettings:
        return WriteSettings.from_env()

    def leases(self) -> Leases:
        """This run's (or process's) lease owner: record claims taken through it are renewed by the run's
        heartbeat and released when the run ends."""
        if self._leases is None:
            self._leases = Leases(self.engine(), new_owner("adhoc"), ttl_s=self.write_settings().lease_ttl_s)
        return self._leases

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run_id = getattr(context, "run_id", None)
        if not run_id:
            return   # a sensor tick or a schedule: nothing to keep alive
        leases = Leases(self.engine(), new_owner(f"run:{run_id}"), ttl_s=self.write_settings().lease_ttl_s)
        leases.acquire(RUN_SCOPE, [run_id])   # the run's own lease: the watchdog's sign of life
        leases.start_heartbeat()
        self._leases = leases

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._leases is not None:
            self._leases.stop_heartbeat()
            self._leases.release_all()
            self._leases = None


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

    _client: Any = PrivateAttr(default=None)

    def client(self):
        """This run's client (built on first use, closed when the run ends)."""
        if self._client is None:
            from connector_pipelines.systems.business_central.client import BusinessCentralClient

            self._client = BusinessCentralClient.connect(self.api_url, self.tenant_id, self.environment,
                                                         self.token_provider())
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            _close(self._client)
            self._client = None


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

    _client: Any = PrivateAttr(default=None)

    def client(self):
        """This run's client (built on first use, closed when the run ends)."""
        if self._client is None:
            from connector_pipelines.systems.finance_operations.client import FinanceOperationsClient

            self._client = FinanceOperationsClient.connect(self.environment_url.rstrip("/"), self.token_provider())
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            _close(self._client)
            self._client = None


class AcumaticaResource(dg.ConfigurableResource):
    """Acumatica's contract-based REST API (docs/acumatica.md): one instance, tenant and pinned endpoint.

    ``auth_mode`` ``oauth``: a connected application (``client_id`` = ``GUID@Tenant``); the grant with its
    rotating refresh token lives in the vault (``credential_name``), obtained with the password grant from
    ``username``/``password`` when the vault has none. ``cookie``: a signed-in session (``/entity/auth/login``).
    Secrets (client secret, password) are bound as ``dg.EnvVar``.
    """

    instance_url: str = Field(description="https://<host>/<site> (no /entity)")
    tenant: str | None = Field(default=None, description="Tenant (company) name; part of client_id for OAuth")
    endpoint_name: str = "Default"
    endpoint_version: str = "24.200.001"
    auth_mode: str = Field(default="oauth", description="oauth | cookie")
    client_id: str | None = Field(default=None, description="Connected application: GUID@Tenant")
    client_secret: str | None = Field(default=None, description="Bind as dg.EnvVar: never a literal", repr=False)
    username: str | None = None
    password: str | None = Field(default=None, description="Bind as dg.EnvVar: never a literal", repr=False)
    credential_name: str = "acumatica:default"
    max_concurrent: int = Field(default=4, description="Concurrent requests, within the licence's cap")
    ca_bundle: str | None = Field(default=None, description="Extra CA bundle (PEM) for TLS to the instance")

    _client: Any = PrivateAttr(default=None)
    _auth: Any = PrivateAttr(default=None)

    def sign_in(self, vault: Vault):
        """The token provider (oauth) or cookie session (cookie) this resource signs in with."""
        from connector_pipelines.systems.acumatica.auth import AcumaticaCookieSession, AcumaticaTokenProvider

        verify = self.ca_bundle or True
        if self.auth_mode == "cookie":
            if not (self.username and self.password):
                raise MissingSetting("auth_mode cookie needs CONNECTOR_ACUMATICA_USERNAME and _PASSWORD")
            return AcumaticaCookieSession(self.instance_url, self.username, self.password, company=self.tenant,
                                          verify=verify)
        if self.auth_mode != "oauth":
            raise MissingSetting(f"CONNECTOR_ACUMATICA_AUTH_MODE must be oauth or cookie, not {self.auth_mode!r}")
        if not (self.client_id and self.client_secret):
            raise MissingSetting("auth_mode oauth needs CONNECTOR_ACUMATICA_CLIENT_ID and _CLIENT_SECRET")
        return AcumaticaTokenProvider(vault, self.credential_name, self.instance_url, self.client_id,
                                      self.client_secret, username=self.username, password=self.password,
                                      verify=verify)

    def client(self, vault: Vault):
        """This run's client (built on first use, signed out / closed when the run ends)."""
        if self._client is None:
            from connector_pipelines.systems.acumatica.client import AcumaticaClient

            self._auth = self.sign_in(vault)
            self._client = AcumaticaClient.connect(
                self.instance_url, endpoint_name=self.endpoint_name, endpoint_version=self.endpoint_version,
                tenant=self.tenant, auth=self._auth, max_concurrent=self.max_concurrent,
                verify=self.ca_bundle or True)
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for attr in ("_client", "_auth"):
            value = getattr(self, attr)
            if value is not None:
                _close(value)
                setattr(self, attr, None)


MONDAY_BOARD_SCOPE = "monday-board"
MONDAY_BOARD_LEASE_S = 90.0      # longer than one mutation request (monday cuts a call at 60 s)


def board_guard(engine, wait_s: float):
    """``board_id -> context manager``: a lease on the board, shared by every process on ``engine`` (a dead
    holder's lease lapses after MONDAY_BOARD_LEASE_S); yields False when not had within ``wait_s``."""
    from connector_pipelines.core.leases import Leases, new_owner

    leases = Leases(engine, new_owner("monday-board"), ttl_s=MONDAY_BOARD_LEASE_S)
    return lambda board_id: leases.hold(MONDAY_BOARD_SCOPE, board_id, wait_s)


class MondayResource(dg.ConfigurableResource):
    """monday.com's GraphQL API (docs/monday.md): the token is read from the vault at use time (``credential_name``,
    ``{"token": …}``), or bound as ``dg.EnvVar``; the API version is pinned; every client of a token in this
    process shares one rate governor."""

    api_url: str = "https://api.monday.com/v2"
    api_version: str = "2026-10"
    credential_name: str = "monday:default"
    token: str | None = Field(default=None, description="Bind as dg.EnvVar; None = the vault's credential", repr=False)
    mutations_per_minute_per_board: int | None = Field(default=None, description=(
        "Pace mutations per board (an ASSUMPTION: monday documents no such cap); None = no pacing"))
    ca_bundle: str | None = Field(default=None, description="Extra CA bundle (PEM) for TLS to the API")
    board_wait_s: float = Field(default=120.0, description=(
        "How long a mutation waits for a board another process of this deployment is writing"))
    account_url: str | None = Field(default=None, description=(
        "https://<account>.monday.com, for links to items; None = each pair's target.account_url"))

    _client: Any = PrivateAttr(default=None)

    def client(self, vault: Vault):
        """This run's client (built on first use, closed when the run ends). Its mutations on a board take turns
        with every other process on the project's database (a lease per board, ``board_guard``)."""
        if self._client is None:
            from connector_pipelines.systems.monday.auth import VaultToken
            from connector_pipelines.systems.monday.client import MondayClient

            token = self.token or VaultToken(vault, self.credential_name)
            self._client = MondayClient.connect(self.api_url, token=token, api_version=self.api_version,
                                                mutations_per_minute_per_board=self.mutations_per_minute_per_board,
                                                verify=self.ca_bundle or True,
                                                board_guard=board_guard(vault.engine, self.board_wait_s))
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            _close(self._client)
            self._client = None


class JiraResource(dg.ConfigurableResource):
    """Jira Cloud REST v3 as an OAuth 2.0 (3LO) app; the rotating refresh token lives in the vault."""

    client_id: str
    client_secret: str = Field(description="Bind as dg.EnvVar: never a literal", repr=False)
    site_url: str = Field(description="The Jira site this deployment writes to, e.g. https://acme.atlassian.net")
    auth_url: str = "https://auth.atlassian.com"
    api_url: str = "https://api.atlassian.com"
    credential_name: str = "atlassian:jira"
    webhook_url: str | None = Field(default=None, description="Public URL of the receiver's Jira endpoint")

    _tokens: Any = PrivateAttr(default=None)
    _client: Any = PrivateAttr(default=None)

    def token_provider(self, vault: Vault):
        """This run's token provider (the access token itself is shared through the vault)."""
        if self._tokens is None or self._tokens.vault.engine is not vault.engine:
            from connector_pipelines.systems.atlassian.oauth import AtlassianTokenProvider

            self._tokens = AtlassianTokenProvider(vault, self.credential_name, self.client_id, self.client_secret,
                                                  self.auth_url)
        return self._tokens

    def client(self, vault: Vault):
        """This run's client (built on first use, closed when the run ends)."""
        tokens = self.token_provider(vault)
        if self._client is None:
            from connector_pipelines.systems.jira.client import JiraClient

            self._client = JiraClient.connect(self.api_url, tokens.cloud_id(), self.site_url, tokens)
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for attr in ("_client", "_tokens"):
            value = getattr(self, attr)
            if value is not None:
                _close(value)
                setattr(self, attr, None)


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

    # The URL may carry the database password: an EnvVar keeps it out of Dagster's run storage.
    out: dict[str, dg.ConfigurableResource] = {
        "connector_store": ConnectorStore(database_url=optional_secret("CONNECTOR_DATABASE_URL"))}
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
        "acumatica": lambda: AcumaticaResource(
            instance_url=required("CONNECTOR_ACUMATICA_URL"),
            tenant=os.environ.get("CONNECTOR_ACUMATICA_TENANT") or None,
            endpoint_name=os.environ.get("CONNECTOR_ACUMATICA_ENDPOINT", "Default"),
            endpoint_version=os.environ.get("CONNECTOR_ACUMATICA_ENDPOINT_VERSION", "24.200.001"),
            auth_mode=os.environ.get("CONNECTOR_ACUMATICA_AUTH_MODE", "oauth"),
            client_id=os.environ.get("CONNECTOR_ACUMATICA_CLIENT_ID") or None,
            client_secret=optional_secret("CONNECTOR_ACUMATICA_CLIENT_SECRET"),
            username=os.environ.get("CONNECTOR_ACUMATICA_USERNAME") or None,
            password=optional_secret("CONNECTOR_ACUMATICA_PASSWORD"),
            credential_name=os.environ.get("CONNECTOR_ACUMATICA_CREDENTIAL", "acumatica:default"),
            max_concurrent=int(os.environ.get("CONNECTOR_ACUMATICA_MAX_CONCURRENT") or 4),
            ca_bundle=os.environ.get("CONNECTOR_CA_BUNDLE"),
        ),
        "monday": lambda: MondayResource(
            api_url=os.environ.get("CONNECTOR_MONDAY_API_URL", "https://api.monday.com/v2"),
            api_version=os.environ.get("CONNECTOR_MONDAY_API_VERSION", "2026-10"),
            credential_name=os.environ.get("CONNECTOR_MONDAY_CREDENTIAL", "monday:default"),
            token=optional_secret("CONNECTOR_MONDAY_TOKEN"),
            mutations_per_minute_per_board=int(os.environ["CONNECTOR_MONDAY_BOARD_MUTATIONS_PER_MINUTE"])
            if os.environ.get("CONNECTOR_MONDAY_BOARD_MUTATIONS_PER_MINUTE") else None,
            ca_bundle=os.environ.get("CONNECTOR_CA_BUNDLE"),
            account_url=os.environ.get("CONNECTOR_MONDAY_ACCOUNT_URL") or None,
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
