"""Atlassian (Jira Cloud) auth: OAuth 2.0 3LO consent and the rotating-refresh-token provider."""

from connector_pipelines.systems.atlassian.oauth import (
    AtlassianAuthError,
    AtlassianTokenProvider,
    Site,
    TokenSet,
    accessible_resources,
    authorize_url,
    choose_site,
    exchange_code,
    run_consent_flow,
)

__all__ = [
    "AtlassianAuthError",
    "AtlassianTokenProvider",
    "Site",
    "TokenSet",
    "accessible_resources",
    "authorize_url",
    "choose_site",
    "exchange_code",
    "run_consent_flow",
]
