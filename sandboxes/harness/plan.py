"""The sandbox world decided before any of it runs: each server's loopback port, the throwaway secrets, where the TLS
files go — and so the CONNECTOR_* environment that points the product at the sandboxes (``StackPlan.env``).

``start_stack(plan=…)`` serves exactly this plan. `make demo` plans first and starts `dagster dev` (which reads the
environment when it starts) at once, then brings the sandboxes up beside it. Standard library only: planning
imports nothing heavy and takes milliseconds.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BC_ENVIRONMENT = "production"
BC_CLIENT_ID = "6b7a3a6c-0f4e-4c43-9b5e-5c7f0b1d2e01"
JIRA_CLIENT_ID = "jira-app-connector-pipelines"
# F&O lives in its own Entra ID tenant; its scope is the environment host + /.default (API-FACTS §0).
FO_TENANT = "3c8a1f52-7d1e-4b9a-a0c4-5e6f7a8b9c0d"
FO_CLIENT_ID = "9e2d4c1b-3a5f-4e6d-8c7b-1a2b3c4d5e6f"
FO_HOST = "contoso-prod.operations.dynamics.com"
FO_SCOPE = f"https://{FO_HOST}/.default"
FO_SECRET_HEADER = "X-Connector-Secret"
# Acumatica: one tenant, a connected application (client id GUID@Tenant) and an API user.
ACU_TENANT = "Company"
ACU_CLIENT_GUID = "4f1c2b3a-5d6e-4f70-8a9b-0c1d2e3f4a5b"
ACU_USER = "connector"
ACU_SECRET_HEADER = "X-Connector-Secret"

SERVERS = ("entra", "business_central", "finance_operations", "acumatica", "monday", "atlassian_auth", "jira",
           "receiver", "receiver_tls")
TLS_SERVERS = frozenset({"entra", "receiver_tls"})   # Entra ID (msal wants https), F&O's HTTPS-only event endpoint
SECRETS = {"bc_client_secret": 24, "jira_client_secret": 24, "bc_client_state": 24, "jira_webhook_secret": 24,
           "fo_client_secret": 24, "fo_events_secret": 24, "acumatica_client_secret": 24, "acumatica_password": 18,
           "acumatica_push_secret": 24, "monday_token": 32, "monday_path_secret": 24}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class StackPlan:
    workdir: Path
    ports: dict[str, int]
    creds: dict[str, str]
    vault_keys: str

    def url(self, server: str) -> str:
        """A server's base URL, as ``SandboxServer.base_url`` gives it (TLS ones on "localhost", the cert's name)."""
        port = self.ports[server]
        return f"https://localhost:{port}" if server in TLS_SERVERS else f"http://127.0.0.1:{port}"

    @property
    def tls_dir(self) -> Path:
        return self.workdir / "tls"

    @property
    def ca_bundle(self) -> Path:
        return self.tls_dir / "ca-bundle.pem"      # sandboxes.tls.make_tls(tls_dir).ca_bundle

    def env(self, database_url: str | None = None, *, receiver: bool = True) -> dict[str, str]:
        """The product's environment for this world: every CONNECTOR_* setting, as for the real systems."""
        c = self.creds
        env = {
            "CONNECTOR_VAULT_KEYS": self.vault_keys,
            "CONNECTOR_BC_TENANT_ID": TENANT,
            "CONNECTOR_BC_ENVIRONMENT": BC_ENVIRONMENT,
            "CONNECTOR_BC_CLIENT_ID": BC_CLIENT_ID,
            "CONNECTOR_BC_CLIENT_SECRET": c["bc_client_secret"],
            "CONNECTOR_BC_API_URL": self.url("business_central"),
            # Links back to BC records: the web client's URL form, served by the BC sandbox's people page.
            "CONNECTOR_BC_WEB_CLIENT_URL": f"{self.url('business_central')}/{TENANT}/{BC_ENVIRONMENT}",
            "CONNECTOR_ENTRA_AUTHORITY_HOST": self.url("entra"),
            "CONNECTOR_CA_BUNDLE": str(self.ca_bundle),
            "CONNECTOR_BC_CLIENT_STATE": c["bc_client_state"],
            "CONNECTOR_JIRA_CLIENT_ID": JIRA_CLIENT_ID,
            "CONNECTOR_JIRA_CLIENT_SECRET": c["jira_client_secret"],
            "CONNECTOR_JIRA_WEBHOOK_SECRET": c["jira_webhook_secret"],
            # The Jira site lives at the sandbox's own address: its browse pages are where the product's links point.
            "CONNECTOR_JIRA_SITE_URL": self.url("jira"),
            "CONNECTOR_ATLASSIAN_AUTH_URL": self.url("atlassian_auth"),
            "CONNECTOR_ATLASSIAN_API_URL": self.url("jira"),
            "CONNECTOR_FO_TENANT_ID": FO_TENANT,
            "CONNECTOR_FO_CLIENT_ID": FO_CLIENT_ID,
            "CONNECTOR_FO_CLIENT_SECRET": c["fo_client_secret"],
            "CONNECTOR_FO_ENVIRONMENT_URL": self.url("finance_operations"),
            "CONNECTOR_FO_SCOPE": FO_SCOPE,
            "CONNECTOR_FO_EVENTS_SECRET": c["fo_events_secret"],
            "CONNECTOR_FO_EVENTS_SECRET_HEADER": FO_SECRET_HEADER,
            "CONNECTOR_ACUMATICA_URL": self.url("acumatica"),
            "CONNECTOR_ACUMATICA_TENANT": ACU_TENANT,
            "CONNECTOR_ACUMATICA_CLIENT_ID": f"{ACU_CLIENT_GUID}@{ACU_TENANT}",
            "CONNECTOR_ACUMATICA_CLIENT_SECRET": c["acumatica_client_secret"],
            "CONNECTOR_ACUMATICA_USERNAME": ACU_USER,
            "CONNECTOR_ACUMATICA_PASSWORD": c["acumatica_password"],
            "CONNECTOR_ACUMATICA_PUSH_SECRET": c["acumatica_push_secret"],
            "CONNECTOR_ACUMATICA_PUSH_SECRET_HEADER": ACU_SECRET_HEADER,
            "CONNECTOR_MONDAY_API_URL": f"{self.url('monday')}/v2",
            "CONNECTOR_MONDAY_TOKEN": c["monday_token"],
            "CONNECTOR_MONDAY_PATH_SECRET": c["monday_path_secret"],
            # Links to items: <account url>/boards/<board>/pulses/<item>, served by the Monday sandbox's item page.
            "CONNECTOR_MONDAY_ACCOUNT_URL": self.url("monday"),
        }
        if database_url:
            env["CONNECTOR_DATABASE_URL"] = database_url
        if receiver:
            env["CONNECTOR_RECEIVER_PUBLIC_URL"] = self.url("receiver")
        return env


def plan_stack(workdir: Path, ports: dict[str, int] | None = None) -> StackPlan:
    """Ports (``ports`` pins some; the rest are free loopback ports now), fresh secrets, a vault key
    (CONNECTOR_VAULT_KEYS when set)."""
    ports = ports or {}
    return StackPlan(
        workdir=Path(workdir),
        ports={name: ports.get(name) or free_port() for name in SERVERS},
        creds={name: secrets.token_urlsafe(n) for name, n in SECRETS.items()},
        # a Fernet key: 32 random bytes, url-safe base64 (cryptography's Fernet.generate_key, without importing it)
        vault_keys=os.environ.get("CONNECTOR_VAULT_KEYS") or base64.urlsafe_b64encode(os.urandom(32)).decode(),
    )
