"""Every resource of the code location, bound once. Secrets are dg.EnvVar (stored by name only).

Non-secret endpoints (API hosts, the receiver's public URL) have vendor defaults and can be pointed
elsewhere — at the sandboxes in the demo and tests — by environment variables read here.
"""

import os

import dagster as dg

from connector_pipelines.components.resources import BusinessCentralResource, ConnectorStore, JiraResource


def _optional_env(name: str) -> dg.EnvVar | None:
    return dg.EnvVar(name) if os.environ.get(name) else None


def _receiver(path: str) -> str | None:
    base = os.environ.get("CONNECTOR_RECEIVER_PUBLIC_URL")
    return f"{base.rstrip('/')}{path}" if base else None


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "connector_store": ConnectorStore(database_url=os.environ.get("CONNECTOR_DATABASE_URL")),
            "business_central": BusinessCentralResource(
                tenant_id=dg.EnvVar("CONNECTOR_BC_TENANT_ID"),
                environment=dg.EnvVar("CONNECTOR_BC_ENVIRONMENT"),
                client_id=dg.EnvVar("CONNECTOR_BC_CLIENT_ID"),
                client_secret=dg.EnvVar("CONNECTOR_BC_CLIENT_SECRET"),
                api_url=os.environ.get("CONNECTOR_BC_API_URL", "https://api.businesscentral.dynamics.com"),
                authority_host=os.environ.get("CONNECTOR_ENTRA_AUTHORITY_HOST", "https://login.microsoftonline.com"),
                ca_bundle=os.environ.get("CONNECTOR_CA_BUNDLE"),
                web_client_url=os.environ.get("CONNECTOR_BC_WEB_CLIENT_URL"),
                notification_url=_receiver("/webhooks/business-central"),
                client_state=_optional_env("CONNECTOR_BC_CLIENT_STATE"),
            ),
            "jira": JiraResource(
                client_id=dg.EnvVar("CONNECTOR_JIRA_CLIENT_ID"),
                client_secret=dg.EnvVar("CONNECTOR_JIRA_CLIENT_SECRET"),
                site_url=dg.EnvVar("CONNECTOR_JIRA_SITE_URL"),
                auth_url=os.environ.get("CONNECTOR_ATLASSIAN_AUTH_URL", "https://auth.atlassian.com"),
                api_url=os.environ.get("CONNECTOR_ATLASSIAN_API_URL", "https://api.atlassian.com"),
                credential_name=os.environ.get("CONNECTOR_JIRA_CREDENTIAL", "atlassian:jira"),
                webhook_url=_receiver("/webhooks/jira"),
            ),
        },
        # I/O-bound jobs: one process per run, no per-step subprocesses.
        executor=dg.in_process_executor,
    )
