"""The whole sandbox world on loopback ports: Entra ID (TLS), Business Central, Dynamics 365 F&O,
Acumatica, Atlassian auth, Jira Cloud, and the product's receiver (plain HTTP, plus TLS for F&O's HTTPS-only
business-event endpoint) — plus the environment that points the product at them.

Used by ``make sandbox``, ``make demo``, the smoke run, the end-to-end tests and the benchmarks.
The product is configured exactly as it would be for the real systems: through CONNECTOR_* variables.
Every link the product writes resolves to a sandbox's people page: the Jira site's URL is the Jira sandbox's own
(``<site>/browse/<KEY>``), the BC web client URL is the BC sandbox's ``/<tenant>/<environment>``, F&O's environment URL
and Acumatica's instance URL serve their web client's URL form, and the Monday.com account URL is the Monday sandbox
(``/boards/<board>/pulses/<item>``); ``Stack.pages`` names them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from connector_pipelines.systems.atlassian.oauth import DEFAULT_CONSENT_PORT
from sandboxes.acumatica import AcumaticaSandbox
from sandboxes.atlassian_auth import AtlassianAuthSandbox
from sandboxes.business_central import BusinessCentralSandbox
from sandboxes.common import SandboxServer
from sandboxes.entra import EntraSandbox
from sandboxes.finance_operations import FinanceOperationsSandbox
from sandboxes.harness.plan import (  # the environment's constants (the harness imports them from here)
    ACU_CLIENT_GUID,
    ACU_SECRET_HEADER,
    ACU_TENANT,
    ACU_USER,
    BC_CLIENT_ID,
    BC_ENVIRONMENT,
    FO_CLIENT_ID,
    FO_HOST,
    FO_SCOPE,
    FO_SECRET_HEADER,
    FO_TENANT,
    JIRA_CLIENT_ID,
    TENANT,
    StackPlan,
    plan_stack,
)
from sandboxes.jira import JiraSandbox
from sandboxes.monday import MondaySandbox
from sandboxes.tls import make_tls

BC_SCOPE = "https://api.businesscentral.dynamics.com/.default"
COMPANY = "CRONUS USA, Inc."
CLOUD_ID = "11223344-a1b2-4c3d-9e8f-0a1b2c3d4e5f"
SITE_NAME = "acme-finance"       # the site's URL is the Jira sandbox's (Stack.site_url): its browse pages are there
PROJECT = "FIN"
CUSTOM_FIELDS = [("ERP External ID", "textfield"), ("ERP Document Number", "textfield"),
                 ("ERP Vendor", "textfield"), ("ERP Amount", "float"), ("ERP Status", "textfield")]
ACCOUNT_ID = "5b10ac8d82e05b22cc7d4ef5"
LEGAL_ENTITY = "usmf"
AP_PROJECT = "AP"
FO_EVENTS = ("VendorInvoicePostedBusinessEvent", "PurchaseOrderConfirmedBusinessEvent",
             "PurchaseOrderWorkflowRejectedBusinessEvent")
FO_ENDPOINT = "connector-pipelines"
# Acumatica: push notifications of three queries (one per document set of acumatica_jira) go to the receiver with a
# header secret (tenant, connected application and API user: plan.py).
ACU_PROJECT = "ACU"
# monday.com: the AP team's boards as d365_monday's defs.yaml names them (ids pinned), with its columns.
MONDAY_BOARDS = {
    "4815162341": ("Vendors", [("hold", "status", {"labels": {"0": "No", "1": "Invoice", "2": "All", "3": "Payment",
                                                              "4": "Requisition", "5": "Never"}})]),
    "4815162342": ("Vendor invoices", [("status", "status", {"labels": {"0": "Posted", "1": "Approved", "2": "Query",
                                                                         "3": "Paid"}}),
                                       ("invoice_date", "date", {})]),
    "4815162343": ("Purchase orders", [("status", "status", {"labels": {"0": "Confirmed", "1": "Approved",
                                                                         "2": "InReview", "3": "Rejected",
                                                                         "4": "Draft", "5": "Finalized"}}),
                                       ("accounting_date", "date", {})]),
}
MONDAY_COMMON_COLUMNS = [("external_id", "text", {}), ("erp_link", "link", {}), ("vendor", "text", {}),
                         ("amount", "numbers", {}), ("currency", "text", {})]
for _board in ("4815162342", "4815162343"):   # invoices and orders link to their vendor's item
    MONDAY_BOARDS[_board][1].append(("vendor_link", "board_relation", {"boardIds": [4815162341]}))
MONDAY_BOARDS["4815162342"][1].append(("note", "text", {}))
# Posted journal entries, mirrored read-only (amount and currency are among the common columns).
MONDAY_BOARDS["4815162344"] = ("Journal entries", [("journal_number", "text", {}), ("voucher", "text", {}),
                                                   ("account", "text", {}), ("posting_date", "date", {}),
                                                   ("description", "text", {})])
ACU_PUSH = (("ConnectorBills", "Bill", ["Type", "ReferenceNbr", "Status"]),
            ("ConnectorChecks", "Check", ["Type", "ReferenceNbr", "Status"]),
            ("ConnectorPurchaseOrders", "PurchaseOrder", ["Type", "OrderNbr", "Status"]))


@dataclass
class Stack:
    workdir: Path
    entra: EntraSandbox
    bc: BusinessCentralSandbox
    atlassian: AtlassianAuthSandbox
    jira: JiraSandbox
    servers: dict[str, SandboxServer]
    secrets: dict[str, str]
    company_id: str
    env: dict[str, str] = field(default_factory=dict)
    fo: FinanceOperationsSandbox | None = None
    tls: Any = None
    meter: Any = None   # a control.InFlightMeter over every vendor sandbox (start_stack(metered=True))
    acumatica: AcumaticaSandbox | None = None
    monday: MondaySandbox | None = None

    @property
    def urls(self) -> dict[str, str]:
        return {name: s.base_url for name, s in self.servers.items()}

    @property
    def site_url(self) -> str:
        """The Jira site's URL: the Jira sandbox's base URL, so ``<site_url>/browse/<KEY>`` is its issue page."""
        return self.jira.sites[CLOUD_ID].url

    def pages(self) -> dict[str, str]:
        """The people pages, by what they show: each lists its documents with their state and history."""
        out = {"Jira (people page: move an issue to Done)": f"{self.urls['jira']}/_sandbox/",
               "Business Central documents": f"{self.urls['business_central']}/{TENANT}/{BC_ENVIRONMENT}/"}
        if "finance_operations" in self.urls:
            out["Finance & Operations documents"] = f"{self.urls['finance_operations']}/?cmp={LEGAL_ENTITY}"
        if "acumatica" in self.urls:
            out["Acumatica documents"] = f"{self.urls['acumatica']}/_sandbox/"
        if "monday" in self.urls:
            out["monday.com boards"] = f"{self.urls['monday']}/_sandbox/"
        return out

    def describe(self) -> dict[str, Any]:
        """The JSON map `make sandbox` prints: base URLs and the sandbox credentials."""
        return {
            "entra_id": {"authority_host": self.urls["entra"], "tenant_id": TENANT, "client_id": BC_CLIENT_ID,
                         "client_secret": self.secrets["bc_client_secret"], "scope": BC_SCOPE,
                         "ca_bundle": self.env.get("CONNECTOR_CA_BUNDLE")},
            "business_central": {"api_url": self.urls["business_central"], "tenant_id": TENANT,
                                 "environment": BC_ENVIRONMENT, "company": COMPANY, "company_id": self.company_id},
            "finance_operations": {"environment_url": self.urls["finance_operations"], "tenant_id": FO_TENANT,
                                   "client_id": FO_CLIENT_ID, "client_secret": self.secrets["fo_client_secret"],
                                   "scope": FO_SCOPE, "legal_entity": LEGAL_ENTITY},
            "atlassian_auth": {"auth_url": self.urls["atlassian_auth"], "client_id": JIRA_CLIENT_ID,
                               "client_secret": self.secrets["jira_client_secret"]},
            "acumatica": {"instance_url": self.urls.get("acumatica"), "tenant": ACU_TENANT,
                          "client_id": self.env.get("CONNECTOR_ACUMATICA_CLIENT_ID"),
                          "client_secret": self.secrets["acumatica_client_secret"], "username": ACU_USER,
                          "password": self.secrets["acumatica_password"], "endpoint": "Default/24.200.001"},
            "monday": {"api_url": f"{self.urls['monday']}/v2" if "monday" in self.urls else None,
                       "token": self.secrets["monday_token"], "boards": sorted(MONDAY_BOARDS),
                       "people_ui": f"{self.urls['monday']}/_sandbox/" if "monday" in self.urls else None},
            "jira": {"api_url": self.urls["jira"], "cloud_id": CLOUD_ID, "site_url": self.site_url, "project": PROJECT,
                     "people_ui": f"{self.urls['jira']}/_sandbox/"},
            "pages": self.pages(),
            "receiver": {"url": self.urls.get("receiver"), "tls_url": self.urls.get("receiver_tls")},
            "env": self.env,
        }

    def apply_env(self) -> None:
        os.environ.update(self.env)

    def stop(self) -> None:
        for attr in ("bc", "jira", "fo", "acumatica", "monday"):
            stopper = getattr(getattr(self, attr), "stop_auto_delivery", None)
            if stopper:
                stopper()
        for server in self.servers.values():
            server.stop()

    # -- people in the sandboxes -----------------------------------------------------------------
    def deliver_all(self) -> None:
        """Flush queued BC notifications, F&O business events and Jira webhooks to the receiver (synchronously)."""
        self.bc.deliver_notifications()
        if self.fo is not None:
            self.fo.deliver_events()
        if self.acumatica is not None:
            self.acumatica.deliver_notifications()
        self.jira.deliver_pending()


def start_stack(workdir: Path, *, receiver: bool = True, database_url: str | None = None,
                latency_s: float = 0.0, receiver_port: int = 0, ports: dict[str, int] | None = None,
                consent_port: int = DEFAULT_CONSENT_PORT, metered: bool = False, plan: StackPlan | None = None) -> Stack:
    """Start every sandbox (and the receiver) and compute the product's CONNECTOR_* environment.

    ``plan`` (``plan.plan_stack``): the ports and secrets to use, when the environment was handed out before the
    sandboxes started (the demo's `dagster dev`); by default a fresh one (``ports`` pins some ports).

    ``metered``: every vendor sandbox app is wrapped in one ``InFlightMeter`` (``stack.meter``): requests
    and the concurrency they arrived with, as a benchmark's latency floor needs.

    The Atlassian OAuth app is registered with the callback `connector-pipelines jira consent --port
    <consent_port>` listens on, so a person can run the consent flow against the sandbox."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan = plan or plan_stack(workdir, {**(ports or {}), **({"receiver": receiver_port} if receiver_port else {})})
    ports, creds = plan.ports, dict(plan.creds)
    tls = make_tls(plan.tls_dir)

    entra = EntraSandbox()
    entra.register_app(TENANT, BC_CLIENT_ID, creds["bc_client_secret"], [BC_SCOPE])
    bc = BusinessCentralSandbox(entra)
    bc.register_environment(TENANT, BC_ENVIRONMENT)
    company_id = bc.add_company(COMPANY)
    entra.register_app(FO_TENANT, FO_CLIENT_ID, creds["fo_client_secret"], [FO_SCOPE])
    fo = FinanceOperationsSandbox(entra, environment_host=FO_HOST, default_company=LEGAL_ENTITY)
    fo.retry_delay_s = 0.2
    for area in (LEGAL_ENTITY, "demf"):
        fo.add_legal_entity(area)
    fo.deploy_workflow_resubmit("SubmitToWorkflow")   # the customer's extension (docs/finance_operations.md)
    acumatica = AcumaticaSandbox(tenant=ACU_TENANT, endpoint_versions=("24.200.001",))
    acumatica.register_connected_app(ACU_CLIENT_GUID, creds["acumatica_client_secret"])
    acumatica.add_user(ACU_USER, creds["acumatica_password"])
    monday = MondaySandbox(api_versions=("2026-10",))
    monday.add_token(creds["monday_token"], user_id="9001", kind="personal")
    for board_id, (board_name, own_columns) in MONDAY_BOARDS.items():
        monday.add_board(board_name, [{"id": cid, "title": cid.replace("_", " ").title(), "type": kind,
                                       "settings": settings}
                                      for cid, kind, settings in [*MONDAY_COMMON_COLUMNS, *own_columns]],
                         board_id=board_id)
    atlassian = AtlassianAuthSandbox()
    atlassian.register_app(JIRA_CLIENT_ID, creds["jira_client_secret"], [consent_redirect(consent_port)])
    jira = JiraSandbox(token_validator=atlassian.validate_access_token)
    jira.register_app(JIRA_CLIENT_ID, creds["jira_client_secret"])
    for s in (entra, bc, fo, acumatica, monday, atlassian, jira):
        s.faults.latency_s = latency_s

    meter = None
    if metered:
        from sandboxes.harness.control import InFlightMeter

        meter = InFlightMeter()

    def app(sandbox, name: str):
        return meter.wrap(sandbox.app, name) if meter else sandbox.app

    servers = {
        "entra": SandboxServer(app(entra, "entra"), port=ports["entra"], ssl_certfile=tls.server_cert,
                               ssl_keyfile=tls.server_key),
        "business_central": SandboxServer(app(bc, "bc"), port=ports["business_central"]),
        "finance_operations": SandboxServer(app(fo, "fo"), port=ports["finance_operations"]),
        "acumatica": SandboxServer(app(acumatica, "acumatica"), port=ports["acumatica"]),
        "monday": SandboxServer(app(monday, "monday"), port=ports["monday"]),
        "atlassian_auth": SandboxServer(app(atlassian, "atlassian"), port=ports["atlassian_auth"]),
        "jira": SandboxServer(app(jira, "jira"), port=ports["jira"]),
    }
    start_all(servers.values())
    # The Jira site lives at the sandbox's own address, so its browse pages are where the product's links point.
    site_url = servers["jira"].base_url
    jira.add_site(CLOUD_ID, SITE_NAME, site_url)
    jira.add_project(CLOUD_ID, PROJECT, "Finance Operations")
    jira.add_project(CLOUD_ID, AP_PROJECT, "Accounts Payable")
    jira.add_project(CLOUD_ID, ACU_PROJECT, "Accounts Payable (Acumatica)")
    for name, kind in CUSTOM_FIELDS:
        jira.add_custom_field(CLOUD_ID, name, kind)
    jira.add_user(CLOUD_ID, ACCOUNT_ID, "Avery Accounts")
    # the account that consents for the connector: its comments and changes show under this name on the pages
    jira.add_user(CLOUD_ID, atlassian.consenting_account_id, "connector_pipelines (integration user)")
    atlassian.grant_sites([{"id": CLOUD_ID, "name": SITE_NAME, "url": site_url}])

    env = plan.env(database_url, receiver=receiver)
    assert env["CONNECTOR_JIRA_SITE_URL"] == site_url and env["CONNECTOR_CA_BUNDLE"] == str(tls.ca_bundle)
    stack = Stack(workdir, entra, bc, atlassian, jira, servers, creds, company_id, env, fo, tls, meter, acumatica,
                  monday)
    if receiver:
        start_receiver(stack, port=ports["receiver"], tls_port=ports["receiver_tls"])
    return stack


def start_all(servers) -> None:
    """Start servers side by side (each waits for its uvicorn to come up)."""
    servers = list(servers)
    for server in servers:
        server._thread.start()
    for server in servers:
        server.wait_started()


def start_receiver(stack: Stack, port: int = 0, tls_port: int = 0) -> SandboxServer:
    """The product's receiver, served in-process the way `python -m connector_pipelines.receiver` serves it."""
    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.inbox import Inbox
    from connector_pipelines.receiver.app import ReceiverSettings, create_app

    settings = ReceiverSettings(bc_client_state=stack.secrets["bc_client_state"],
                                jira_app_client_secret=stack.secrets["jira_client_secret"],
                                jira_admin_webhook_secret=stack.secrets["jira_webhook_secret"],
                                fo_events_secret=stack.secrets["fo_events_secret"],
                                fo_events_secret_header=FO_SECRET_HEADER,
                                acumatica_push_secret=stack.secrets["acumatica_push_secret"],
                                acumatica_push_secret_header=ACU_SECRET_HEADER,
                                monday_path_secret=stack.secrets["monday_path_secret"])
    engine = get_engine(stack.env.get("CONNECTOR_DATABASE_URL"))
    app = create_app(Inbox(engine), settings)
    server = SandboxServer(app, port=port).start()
    stack.servers["receiver"] = server
    stack.env["CONNECTOR_RECEIVER_PUBLIC_URL"] = server.base_url
    if stack.fo is not None and stack.tls is not None:
        # F&O sends business events to HTTPS endpoints only: the same receiver app, served over TLS
        # (in production a TLS proxy in front of the one receiver does this).
        secure = SandboxServer(app, port=tls_port, ssl_certfile=str(stack.tls.server_cert),
                               ssl_keyfile=str(stack.tls.server_key)).start()
        stack.servers["receiver_tls"] = secure
        stack.fo.add_endpoint(FO_ENDPOINT, f"{secure.base_url}/webhooks/d365-business-events",
                              headers={FO_SECRET_HEADER: stack.secrets["fo_events_secret"]},
                              verify=str(stack.tls.ca_bundle))
        for event in FO_EVENTS:
            stack.fo.activate(event, FO_ENDPOINT, legal_entity=LEGAL_ENTITY)
    if stack.acumatica is not None:
        for query, entity, fields in ACU_PUSH:
            stack.acumatica.add_push_destination(query, f"{server.base_url}/webhooks/acumatica", query=query,
                                                 entity=entity, fields=fields, header_name=ACU_SECRET_HEADER,
                                                 header_value=stack.secrets["acumatica_push_secret"])
    return server


def consent(stack: Stack) -> None:
    """Run the product's OAuth consent flow against the sandbox, as a person clicking 'Accept' would."""
    import re
    import threading

    from connector_pipelines.core.db import get_engine
    from connector_pipelines.core.vault import Vault
    from connector_pipelines.systems.atlassian.oauth import run_consent_flow
    from sandboxes.common import free_port

    port = free_port()
    redirect = consent_redirect(port)
    stack.atlassian.register_app(JIRA_CLIENT_ID, stack.secrets["jira_client_secret"], [redirect])
    vault = Vault(get_engine(stack.env.get("CONNECTOR_DATABASE_URL")), stack.env["CONNECTOR_VAULT_KEYS"])

    def person(message: str) -> None:
        match = re.search(r"https?://\S+/authorize\?\S+", message)
        if match:  # the browser: open the URL, the sandbox consents and redirects to the callback
            threading.Thread(target=lambda: httpx.get(match.group(0), follow_redirects=True, timeout=10),
                             daemon=True).start()

    run_consent_flow(vault, "atlassian:jira", JIRA_CLIENT_ID, stack.secrets["jira_client_secret"],
                     auth_base=stack.urls["atlassian_auth"], api_base=stack.urls["jira"], site_url=stack.site_url,
                     scopes=["read:jira-work", "write:jira-work", "read:jira-user", "manage:jira-webhook",
                             "offline_access"],
                     port=port, open_browser=False, timeout_s=30, redirect_uri=redirect, notify=person)


def consent_redirect(port: int) -> str:
    """The callback URL of the product's consent flow on ``port`` (its default redirect_uri)."""
    return f"http://localhost:{port}/callback"


def export_lines(env: dict[str, str]) -> list[str]:
    """``export NAME='value'`` lines a shell can source to point the product at the sandboxes."""
    import shlex

    return [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
