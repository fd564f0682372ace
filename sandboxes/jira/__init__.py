"""A Jira Cloud (platform REST v3) sandbox, as an OAuth 2.0 (3LO) app reaches it through api.atlassian.com.

Routes: ``/ex/jira/{cloudId}/rest/api/3/...`` and ``GET /oauth/token/accessible-resources``; a demo UI and
people-simulation endpoints live under ``/_sandbox/``. Every Jira request is validated against Atlassian's
OpenAPI document (specs/jira-cloud-platform-swagger-v3.v3.json) and rich-text fields against the ADF JSON
schema (specs/adf-schema-full.json); a request the spec rejects gets Jira's ErrorCollection with 400.
Facts followed: ../shared/API-FACTS.md §4. Behaviour resting on an UNCONFIRMED fact says so where it is built.

Python surface (tests and the demo drive these directly):
    sandbox = JiraSandbox()
    sandbox.add_site("cloud-1", "acme", "https://acme.atlassian.net")
    sandbox.add_project("cloud-1", "OPS", "Operations")
    cf = sandbox.add_custom_field("cloud-1", "ERP External ID", "textfield")   # -> "customfield_10030"
    sandbox.register_app("client-id", "client-secret")
    sandbox.add_token("tok", client_id="client-id", account_id="acc-1")
    sandbox.transition_as_user("cloud-1", "OPS-1", "Done")      # emits jira:issue_updated
    sandbox.deliver_pending()                                  # posts queued webhooks (httpx)

Layout (one module per concern; ``JiraSandbox`` in app.py is built from the mixins):
    errors.py       JiraHttpError / JqlError (Jira's ErrorCollection)
    model.py        the store: sites, projects, issue types, statuses, users, custom fields, issues, history
    jql.py          JQL tokenizer and parser, the ``~`` text match
    jql_eval.py     JQL compiled against a site's issues, ORDER BY
    adf.py          ADF schema validation, ADF <-> plain text
    routing.py      request context, dispatch, spec validation of requests/responses, auth, faults
    render.py       issues as JSON (fields selection, field values, expand)
    fields.py       GET /field and field-value validation
    issues.py       create, bulk create, get, edit
    history.py      per-issue change history, /changelog endpoints
    transitions.py  workflow transitions
    comments.py     comments, REST v3 (ADF) and v2 (string bodies)
    links.py        issue links and link types
    users.py        /user, /myself, /serverInfo
    search.py       /search/jql
    webhooks.py     dynamic webhook registration
    delivery.py     webhook events, queue, JWT/HMAC signing, posting
    ui.py           /_sandbox demo page and people simulation over HTTP
    app.py          JiraSandbox: state, handler tables, Starlette app, setup and people simulation
"""

from sandboxes.jira.adf import adf_text, text_adf
from sandboxes.jira.app import JiraFaults, JiraSandbox
from sandboxes.jira.delivery import Delivery
from sandboxes.jira.errors import JiraHttpError, JqlError
from sandboxes.jira.jql import parse_jql, text_matches, text_tokens, tokenize_jql
from sandboxes.jira.webhooks import WEBHOOK_EVENTS

__all__ = [
    "WEBHOOK_EVENTS",
    "Delivery",
    "JiraFaults",
    "JiraHttpError",
    "JiraSandbox",
    "JqlError",
    "adf_text",
    "parse_jql",
    "text_adf",
    "text_matches",
    "text_tokens",
    "tokenize_jql",
]
